"""CT-CLIP preprocessing of one volume: RAS grid, HU clip, aspect-preserving fit to a shape, uint8.

The stored array is ``(z, y, x)`` on a RAS grid (x index towards the patient's right, y anterior,
z superior), HU clipped to ``[-1000, 1000]``, resampled to one isotropic spacing chosen so that the
whole field of view fits the target shape (aspect ratio kept), centre padded with -1000 HU and
quantised to uint8 (``hu = -1000 + 2000 * value / 255``, steps of 7.8 HU).

The rescale check (``rescale_check``) reads the air level of a volume said to be in HU: the 2nd
percentile of the voxels above the volume's minimum (the minimum is left out because scanners pad the
corners outside the reconstruction circle with one constant, e.g. -2048 or -3024). Air sits near
-1000 HU; near -2000 means a rescale intercept of about -1024 was applied twice (the CT-RATE v2
fault), near 0 means it was never applied.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ctlib.errors import CTInputError
from ctlib.io import orientation
from ctlib.io.volume import Volume

HU_MIN, HU_MAX = -1000.0, 1000.0
UINT8_MAPPING = "hu = -1000 + 2000 * value / 255 (HU clipped to [-1000, 1000])"
ORIENTATION = "RAS"
GPU_SHAPE = (160, 224, 224)
RescaleVerdict = Literal["ok", "double_rescale", "missing_rescale"]


@dataclasses.dataclass(frozen=True)
class RescaleCheck:
    """What ``rescale_check`` found: the air level in HU and its verdict."""

    air_hu: float
    verdict: RescaleVerdict

    def describe(self) -> str:
        if self.verdict == "double_rescale":
            return f"air at {self.air_hu:.0f} HU: slope/intercept look applied twice (expected about -1000)"
        if self.verdict == "missing_rescale":
            return f"air at {self.air_hu:.0f} HU: stored values look raw, slope/intercept not applied"
        return f"air at {self.air_hu:.0f} HU"


def air_level_hu(hu: np.ndarray) -> float:
    """2nd percentile of the voxels above the volume's minimum (padding value excluded), in HU."""
    values = np.asarray(hu, dtype=np.float32).ravel()
    above = values[values > values.min()]
    if above.size == 0:
        return float(values.min())
    return float(np.percentile(above[:: max(1, above.size // 2_000_000)], 2.0))


def rescale_check(
    hu: np.ndarray, *, double_below_hu: float = -1500.0, raw_above_hu: float = -500.0
) -> RescaleCheck:
    """Air level test for a wrong HU conversion (double or missing rescale slope/intercept)."""
    air = air_level_hu(hu)
    verdict: RescaleVerdict = "ok"
    if air < double_below_hu:
        verdict = "double_rescale"
    elif air > raw_above_hu:
        verdict = "missing_rescale"
    return RescaleCheck(air_hu=air, verdict=verdict)


def hu_to_uint8(hu: np.ndarray) -> np.ndarray:
    """Clip to [-1000, 1000] HU and quantise to uint8 (``UINT8_MAPPING``)."""
    clipped = np.clip(np.asarray(hu, dtype=np.float32), HU_MIN, HU_MAX)
    return np.rint((clipped - HU_MIN) * (255.0 / (HU_MAX - HU_MIN))).astype(np.uint8)


def uint8_to_hu(values: np.ndarray) -> np.ndarray:
    """Inverse of ``hu_to_uint8`` (float32 HU, exact to half a step, 3.9 HU)."""
    return HU_MIN + np.asarray(values, dtype=np.float32) * ((HU_MAX - HU_MIN) / 255.0)


def fit_spacing_mm(
    shape: tuple[int, int, int], spacing_mm: tuple[float, ...], target: tuple[int, int, int]
) -> float:
    """The isotropic spacing at which the field of view ``shape * spacing`` just fits ``target``."""
    return max(n * s / t for n, s, t in zip(shape, spacing_mm, target, strict=True))


def fit_to_shape(
    hu: np.ndarray, spacing_mm: tuple[float, float, float], target: tuple[int, int, int]
) -> tuple[np.ndarray, float]:
    """Aspect-preserving resize and centre pad (or crop) of ``(z, y, x)`` HU to ``target``.

    Resampled to one isotropic spacing (``fit_spacing_mm``) by area averaging where every axis shrinks
    (anti-aliased) and trilinear interpolation otherwise; padded with ``HU_MIN``. Returns the
    ``target``-shaped float32 array (clipped to [-1000, 1000] HU) and the spacing in mm.
    """
    if len(target) != 3 or min(target) < 1:
        raise ValueError(f"target shape must be three positive sizes (z, y, x), got {target}")
    iso = fit_spacing_mm(hu.shape, spacing_mm, target)
    size = [
        min(t, max(1, math.floor(n * s / iso + 1e-6)))
        for n, s, t in zip(hu.shape, spacing_mm, target, strict=True)
    ]
    tensor = torch.from_numpy(np.clip(np.asarray(hu, dtype=np.float32), HU_MIN, HU_MAX))[None, None]
    shrinking = all(m <= n for m, n in zip(size, hu.shape, strict=True))
    mode = "area" if shrinking else "trilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    resized = F.interpolate(tensor, size=size, mode=mode, **kwargs)[0, 0].numpy()
    out = np.full(target, HU_MIN, dtype=np.float32)
    starts = [(t - m) // 2 for t, m in zip(target, size, strict=True)]
    out[tuple(slice(a, a + m) for a, m in zip(starts, size, strict=True))] = resized
    return out, iso


@dataclasses.dataclass(frozen=True)
class PreparedVolume:
    """One preprocessed volume: uint8 ``(z, y, x)`` on the RAS grid and what was done to it."""

    values: np.ndarray
    spacing_mm: float
    source_shape: tuple[int, int, int]
    source_spacing_mm: tuple[float, float, float]
    rescale: RescaleCheck


def prepare_volume(volume: Volume, target: tuple[int, int, int], source: str | os.PathLike) -> PreparedVolume:
    """RAS grid, rescale check, HU clip, aspect-preserving fit to ``target``, uint8 (module docstring).

    A volume with non-finite voxels is refused naming ``source``; one whose air level shows a double
    or missing rescale is kept, its verdict recorded (``PreparedVolume.rescale``) for the caller to act on.
    """
    if not np.isfinite(volume.array).all():
        bad = int((~np.isfinite(volume.array)).sum())
        raise CTInputError(source, f"{bad} voxel(s) are NaN or infinite; expected finite HU everywhere")
    ras = orientation.reorient(volume, ORIENTATION)
    check = rescale_check(ras.array)
    fitted, iso = fit_to_shape(ras.array, ras.spacing, tuple(int(t) for t in target))
    return PreparedVolume(
        values=hu_to_uint8(fitted),
        spacing_mm=float(iso),
        source_shape=volume.shape,
        source_spacing_mm=tuple(float(s) for s in ras.spacing),
        rescale=check,
    )
