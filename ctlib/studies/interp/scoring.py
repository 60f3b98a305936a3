"""The slice-interpolation protocol: score synthesized thin slices only, inside the body mask.

PSNR per volume in the primary window [-1024, 3071] HU and in the soft-tissue window; SSIM as the
mean of per-axial-slice 2D SSIM (primary window); the data-consistency residual in HU between the
estimate averaged back into slabs and the observed thick slices.
"""

from __future__ import annotations

import numpy as np

from ctlib.data import body_mask, windows
from ctlib.io.volume import Volume
from ctlib.metrics import image_quality
from ctlib.studies.interp import thick_slices

PRIMARY = windows.FULL
SECONDARY = windows.SOFT_TISSUE


def scored_mask(pair: thick_slices.ThickThinPair) -> np.ndarray:
    """``(z, y, x)`` bool: synthesized thin slices inside the body of the ground truth."""
    return pair.synthesized[:, None, None] & body_mask.body_mask(pair.thin)


def evaluate(estimate: Volume | np.ndarray, pair: thick_slices.ThickThinPair) -> dict[str, float]:
    """PSNR (dB) in both windows, mean per-slice SSIM, and the slab residual (HU) of one estimate."""
    array = estimate.array if isinstance(estimate, Volume) else np.asarray(estimate, dtype=np.float32)
    if array.shape != pair.thin.shape:
        raise ValueError(f"estimate has shape {array.shape}, the thin ground truth {pair.thin.shape}")
    mask = scored_mask(pair)
    result = {}
    for tag, window in (("full", PRIMARY), ("soft", SECONDARY)):
        result[f"psnr_{tag}_db"] = image_quality.psnr_hu(array, pair.thin.array, low_hu=window.low,
                                                         high_hu=window.high, mask=mask)
    synthesized = np.flatnonzero(pair.synthesized)
    ssim = image_quality.ssim_slices_hu(array[synthesized], pair.thin.array[synthesized], low_hu=PRIMARY.low,
                                        high_hu=PRIMARY.high, mask=mask[synthesized])
    result["ssim_full"] = float(np.nanmean(ssim))
    result["slab_residual_hu"] = slab_residual_hu(array, pair)
    return result


def slab_residual_hu(estimate_hu: np.ndarray, pair: thick_slices.ThickThinPair) -> float:
    """Mean |slab average of the estimate - observed thick slice| in HU, inside the body.

    Zero means the synthesized thin slices reproduce the observed thick slices exactly (data
    consistency); the estimate is re-sliced with the pair's own mode, factor and slab.
    """
    rethick = thick_slices.simulate_thick(
        pair.thin.with_array(estimate_hu), pair.factor, pair.mode, pair.slab
    )
    n = min(rethick.shape[0], pair.thick.shape[0])
    inside = body_mask.body_mask(pair.thick.with_array(pair.thick.array[:n]))
    return mean_abs_residual_hu(rethick.array[:n], pair.thick.array[:n], inside)


def mean_abs_residual_hu(resliced_hu: np.ndarray, thick_hu: np.ndarray, mask: np.ndarray) -> float:
    """Mean |re-sliced estimate - observed thick slice| in HU over ``mask`` ``(n_thick, y, x)``.

    Thick slices the estimate cannot re-slice (NaN, e.g. a slab outside the thin grid) are skipped.
    """
    inside = mask & np.isfinite(resliced_hu)
    if not inside.any():
        return float("nan")
    return float(np.abs(resliced_hu[inside].astype(np.float64) - thick_hu[inside]).mean())
