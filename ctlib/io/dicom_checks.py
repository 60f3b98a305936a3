"""Checks of a DICOM CT series before any pixel is decoded: image attributes, one geometry shared by
every slice (taken from the majority, so the odd file is the one named), pixel data sizes, a decoder
for the transfer syntax, slice spacing and gantry tilt. Each refusal is a one-line ``CTInputError``
naming the file (DICOM PS3.3 C.7.6.2 Image Plane, C.7.6.3 Image Pixel, C.11.1 Modality LUT).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ctlib.errors import CTInputError

# A tilted gantry shears the slices: positions drift in-plane as the slice index grows. Drift below
# this angle (or 0.01 mm, for positions rounded in the header) is numerical noise, not tilt.
GANTRY_TILT_TOLERANCE_DEG = 0.1
POSITION_NOISE_MM = 0.01
MAX_IMAGE_PIXELS = 16384 * 16384  # far above any CT slice (1024 x 1024 at most in practice)


def floats(path: Path, ds: Dataset, keyword: str, n: int) -> np.ndarray:
    value = ds.get(keyword)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise CTInputError(path, f"{keyword} is missing or invalid ({value!r}), expected {n} finite numbers")
    return arr


def check_image(path: Path, ds: Dataset) -> None:
    if "PixelData" not in ds:
        raise CTInputError(path, "no pixel data (not an image, or the file was truncated)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise CTInputError(
            path,
            "multi-frame or multi-sample images are not supported: expected one grayscale slice per file",
        )


def check_consistent(items: list[tuple[Path, Dataset]]) -> None:
    """All slices must share Rows/Columns, PixelSpacing and ImageOrientationPatient."""
    path0, ds0 = items[0]
    size0 = (ds0.get("Rows"), ds0.get("Columns"))
    spacing0 = floats(path0, ds0, "PixelSpacing", 2)
    iop0 = floats(path0, ds0, "ImageOrientationPatient", 6)
    for path, ds in items[1:]:
        size = (ds.get("Rows"), ds.get("Columns"))
        if size != size0:
            raise CTInputError(path, f"Rows/Columns {size} differ from {size0} in {path0.name}")
        spacing = floats(path, ds, "PixelSpacing", 2)
        if not np.allclose(spacing, spacing0, rtol=1e-4, atol=1e-6):
            raise CTInputError(
                path, f"PixelSpacing {spacing.tolist()} differs from {spacing0.tolist()} in {path0.name}"
            )
        iop = floats(path, ds, "ImageOrientationPatient", 6)
        if not np.allclose(iop, iop0, atol=1e-4):
            raise CTInputError(
                path, f"ImageOrientationPatient {iop.tolist()} differs from {iop0.tolist()} in {path0.name}"
            )


def orientation(path: Path, ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosine (increasing column index x), column cosine (increasing row index y), normal."""
    iop = floats(path, ds, "ImageOrientationPatient", 6)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise CTInputError(path, f"ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")
    # Headers round the cosines; re-orthonormalize (Gram-Schmidt) so Volume's direction is exact.
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def check_spacing(paths: list[Path], along: np.ndarray, tolerance: float) -> float:
    """Refuse duplicate positions, missing slices and non-uniform steps; return the mean step dz."""
    steps = np.diff(along)
    for k in np.flatnonzero(steps < POSITION_NOISE_MM):
        raise CTInputError(
            paths[k + 1],
            f"duplicate slice position {along[k]:.3f} mm along the normal, same as {paths[k].name}",
        )
    dz = float((along[-1] - along[0]) / (len(along) - 1))
    typical = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - typical) > tolerance * typical)
    if bad.size == 0:
        return dz
    k = int(bad[0])
    ratio = steps[k] / typical
    gap = (
        f"step of {steps[k]:.4g} mm between {paths[k].name} ({along[k]:.3f} mm) "
        f"and {paths[k + 1].name} ({along[k + 1]:.3f} mm)"
    )
    if ratio > 1.5 and abs(ratio - round(ratio)) <= tolerance * round(ratio):
        raise CTInputError(
            paths[k],
            f"missing slice(s): {gap}, expected {typical:.4g} mm ({round(ratio) - 1} slice(s) missing)",
        )
    raise CTInputError(
        paths[k],
        f"non-uniform slice spacing: {gap}, expected {typical:.4g} mm +-{tolerance:.0%}; "
        f"steps range {steps.min():.4g}..{steps.max():.4g} mm",
    )


def check_tilt(paths: list[Path], positions: np.ndarray, normal: np.ndarray) -> None:
    """Positions must step along the slice normal; an in-plane drift means a tilted gantry."""
    offsets = positions - positions[0]
    along = offsets @ normal
    drift = np.linalg.norm(offsets - along[:, None] * normal[None, :], axis=1)
    allowed = np.maximum(
        POSITION_NOISE_MM, np.abs(along) * math.tan(math.radians(GANTRY_TILT_TOLERANCE_DEG))
    )
    k = int(np.argmax(drift - allowed))
    if drift[k] > allowed[k]:
        angle = math.degrees(math.atan2(drift[k], abs(along[k])))
        raise CTInputError(
            paths[k],
            f"gantry tilt: slice positions step {angle:.2f} deg off the slice normal (in-plane drift "
            f"{drift[k]:.3f} mm from {paths[0].name}); tilted series are not supported, resample them first",
        )


def rescale(path: Path, ds: Dataset) -> tuple[float, float]:
    raw_slope, raw_intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    try:
        slope = 1.0 if raw_slope in (None, "") else float(raw_slope)
        intercept = 0.0 if raw_intercept in (None, "") else float(raw_intercept)
    except (TypeError, ValueError):
        slope = intercept = math.nan
    if slope == 0 or not math.isfinite(slope) or not math.isfinite(intercept):
        raise CTInputError(
            path, f"nonsense rescale: RescaleSlope {raw_slope!r}, RescaleIntercept {raw_intercept!r}"
        )
    return slope, intercept
