"""The slice-interpolation protocol: score synthesized thin slices only, inside the body mask.

PSNR per volume in the primary window [-1024, 3071] HU and in a soft window (``Protocol.soft_window``,
L50/W350 by default; ``Protocol.comparable()`` uses [-160, 240] HU as outside work does); SSIM as the mean
of per-axial-slice 2D SSIM (primary window); the data-consistency residual in HU between the estimate
averaged back into slabs and the observed thick slices. The thick-slice model (slab mean or decimation,
and the slab width) and the body mask (threshold, in-plane opening; always taken from the ground truth)
are parameters of ``Protocol`` and stated by ``Protocol.describe`` in every table that reports a number.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ctlib.data import body_mask, windows
from ctlib.io.volume import Volume
from ctlib.metrics import image_quality
from ctlib.studies.interp import thick_slices

PRIMARY = windows.FULL
SECONDARY = windows.SOFT_TISSUE
OUTSIDE_SOFT = windows.MEDIASTINUM  # L40/W400 = [-160, 240] HU, the soft window of most outside work


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How thick slices are simulated and estimates scored. Defaults: our slab headline.

    ``slab`` None means ``factor`` (contiguous, non-overlapping slabs); with ``mode="decimate"`` it is 1.
    The body mask (``ctlib.data.body_mask``: ``hu > mask_threshold_hu``, ``mask_opening`` in-plane openings,
    largest component, holes filled) is computed on the ground truth, never on the estimate.
    """

    mode: thick_slices.ThickMode = "slab"
    slab: int | None = None
    soft_window: windows.HUWindow = SECONDARY
    mask_threshold_hu: float = -500.0
    mask_opening: int = 1

    @classmethod
    def comparable(cls) -> Protocol:
        """Decimation with a [-160, 240] HU soft window: the regime of most published tables."""
        return cls(mode="decimate", soft_window=OUTSIDE_SOFT)

    def pair(self, volume: Volume, factor: int) -> thick_slices.ThickThinPair:
        """The thick/thin pair this protocol scores at ``factor``."""
        slab = None if self.mode == "decimate" else self.slab
        return thick_slices.thick_thin_pair(volume, factor, mode=self.mode, slab=slab)

    def describe(self, factor: int) -> dict[str, Any]:
        """The protocol in words and numbers, for tables, bench JSON and the README."""
        if self.mode == "decimate":
            thick = f"decimation: every {factor}th thin slice observed, thickness unchanged"
        else:
            slab = factor if self.slab is None else self.slab
            thick = f"slab mean of {slab} thin slices (box profile, width {slab} x thin spacing)"
        return {
            "thick_model": thick,
            "mode": self.mode,
            "slab": 1 if self.mode == "decimate" else (factor if self.slab is None else self.slab),
            "scored": (
                "synthesized thin slices only, from the first to the last observed slice"
                if self.mode == "decimate"
                else "every thin slice of the simulated slabs (none observed with an even slab; the centre "
                "slice of each odd slab is observed and not scored)"
            ),
            "mask": (f"body of the ground truth: HU > {self.mask_threshold_hu:g}, {self.mask_opening} "
                     "in-plane opening(s), largest 3-D component, holes filled per slice"),
            "primary_window_hu": [PRIMARY.low, PRIMARY.high],
            "soft_window_hu": [self.soft_window.low, self.soft_window.high],
        }

    def mask(self, hu: Volume | np.ndarray) -> np.ndarray:
        """The body mask of ``hu`` under this protocol."""
        return body_mask.body_mask(
            hu, threshold_hu=self.mask_threshold_hu, opening_iterations=self.mask_opening
        )


DEFAULT = Protocol()


@dataclasses.dataclass(frozen=True)
class BodyMasks:
    """The body masks of a pair's thin truth and thick slices under one protocol, computed once per pair."""

    thin: np.ndarray
    thick: np.ndarray

    @classmethod
    def of(cls, pair: thick_slices.ThickThinPair, protocol: Protocol = DEFAULT) -> BodyMasks:
        """Both masks of ``pair`` (the thick one for the slab residual)."""
        return cls(thin=protocol.mask(pair.thin), thick=protocol.mask(pair.thick))


def scored_mask(
    pair: thick_slices.ThickThinPair, protocol: Protocol = DEFAULT, masks: BodyMasks | None = None
) -> np.ndarray:
    """``(z, y, x)`` bool: synthesized thin slices inside the body of the ground truth."""
    body = masks.thin if masks is not None else protocol.mask(pair.thin)
    return pair.synthesized[:, None, None] & body


def evaluate(
    estimate: Volume | np.ndarray,
    pair: thick_slices.ThickThinPair,
    protocol: Protocol = DEFAULT,
    masks: BodyMasks | None = None,
) -> dict[str, float]:
    """PSNR (dB) in both windows, mean per-slice SSIM, and the slab residual (HU) of one estimate.

    ``masks`` (``BodyMasks.of(pair, protocol)``) saves recomputing the body masks for every estimate.
    """
    array = estimate.array if isinstance(estimate, Volume) else np.asarray(estimate, dtype=np.float32)
    if array.shape != pair.thin.shape:
        raise ValueError(f"estimate has shape {array.shape}, the thin ground truth {pair.thin.shape}")
    masks = masks or BodyMasks.of(pair, protocol)
    mask = scored_mask(pair, protocol, masks)
    result = {}
    for tag, window in (("full", PRIMARY), ("soft", protocol.soft_window)):
        result[f"psnr_{tag}_db"] = image_quality.psnr_hu(array, pair.thin.array, low_hu=window.low,
                                                         high_hu=window.high, mask=mask)
    synthesized = np.flatnonzero(pair.synthesized)
    ssim = image_quality.ssim_slices_hu(array[synthesized], pair.thin.array[synthesized], low_hu=PRIMARY.low,
                                        high_hu=PRIMARY.high, mask=mask[synthesized])
    result["ssim_full"] = float(np.nanmean(ssim))
    result["slab_residual_hu"] = slab_residual_hu(array, pair, protocol, masks.thick)
    return result


def slab_residual_hu(
    estimate_hu: np.ndarray,
    pair: thick_slices.ThickThinPair,
    protocol: Protocol = DEFAULT,
    thick_mask: np.ndarray | None = None,
) -> float:
    """Mean |slab average of the estimate - observed thick slice| in HU, inside the body.

    Zero means the synthesized thin slices reproduce the observed thick slices exactly (data
    consistency); the estimate is re-sliced with the pair's own mode, factor and slab.
    """
    rethick = thick_slices.simulate_thick(
        pair.thin.with_array(estimate_hu), pair.factor, pair.mode, pair.slab
    )
    n = min(rethick.shape[0], pair.thick.shape[0])
    if thick_mask is None:
        thick_mask = protocol.mask(pair.thick)
    inside = thick_mask[:n]
    return mean_abs_residual_hu(rethick.array[:n], pair.thick.array[:n], inside)


def mean_abs_residual_hu(resliced_hu: np.ndarray, thick_hu: np.ndarray, mask: np.ndarray) -> float:
    """Mean |re-sliced estimate - observed thick slice| in HU over ``mask`` ``(n_thick, y, x)``.

    Thick slices the estimate cannot re-slice (NaN, e.g. a slab outside the thin grid) are skipped.
    """
    inside = mask & np.isfinite(resliced_hu)
    if not inside.any():
        return float("nan")
    return float(np.abs(resliced_hu[inside].astype(np.float64) - thick_hu[inside]).mean())
