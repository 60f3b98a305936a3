"""Checks of a DICOM CT series before any pixel is decoded: image attributes, one geometry shared by
every slice (taken from the majority, so the odd file is the one named), pixel data sizes, a decoder
for the transfer syntax, slice spacing and gantry tilt. Each refusal is a one-line ``CTInputError``
naming the file (DICOM PS3.3 C.7.6.2 Image Plane, C.7.6.3 Image Pixel, C.11.1 Modality LUT).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.dataset import Dataset

from ctlib.errors import CTInputError

# A tilted gantry shears the slices: positions drift in-plane as the slice index grows. Drift below
# this angle (or 0.01 mm, for positions rounded in the header) is numerical noise, not tilt.
GANTRY_TILT_TOLERANCE_DEG = 0.1
POSITION_NOISE_MM = 0.01
MAX_IMAGE_PIXELS = 16384 * 16384  # far above any CT slice (1024 x 1024 at most in practice)


def floats(path: Path, ds: Dataset, keyword: str, n: int) -> np.ndarray:
    """``keyword`` as ``n`` finite numbers, or a refusal naming the file."""
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
    """All slices must share Rows/Columns, BitsAllocated, PixelSpacing and ImageOrientationPatient.

    The reference is what most slices hold, so a single odd file is named wherever it sits in the
    series (the first file is no better a witness than any other).
    """
    for name, value_of, same in (
        ("Rows/Columns", lambda p, ds: (ds.get("Rows"), ds.get("Columns")), lambda a, b: a == b),
        ("BitsAllocated", lambda p, ds: ds.get("BitsAllocated"), lambda a, b: a == b),
        ("PixelSpacing", _pixel_spacing, lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-6)),
        (
            "ImageOrientationPatient",
            lambda p, ds: floats(p, ds, "ImageOrientationPatient", 6),
            lambda a, b: np.allclose(a, b, atol=1e-4),
        ),
    ):
        values = [value_of(path, ds) for path, ds in items]
        reference, n_same = _majority(values, same)
        for (path, _), value in zip(items, values, strict=True):
            if not same(value, reference):
                shown = value.tolist() if isinstance(value, np.ndarray) else value
                expected = reference.tolist() if isinstance(reference, np.ndarray) else reference
                raise CTInputError(
                    path, f"{name} {shown} differ from {expected} of {n_same} other slice(s) of the series"
                )


def _majority(values: list, same) -> tuple[object, int]:
    """The value most entries share (by ``same``), and how many share it; ties go to the earliest."""
    best, best_count = values[0], 0
    for candidate in values:
        count = sum(bool(same(candidate, other)) for other in values)
        if count > best_count:
            best, best_count = candidate, count
        if best_count > len(values) // 2:
            break
    return best, best_count


def _pixel_spacing(path: Path, ds: Dataset) -> np.ndarray:
    """PixelSpacing (row spacing dy, column spacing dx) in mm: two finite positive numbers."""
    spacing = floats(path, ds, "PixelSpacing", 2)
    if not np.all(spacing > 0):
        raise CTInputError(path, f"PixelSpacing {spacing.tolist()} is not two positive numbers (mm)")
    return spacing


def check_pixel_data(path: Path, ds: Dataset) -> None:
    """The pixel data can be decoded into the image the header describes, before anything is allocated.

    Native (uncompressed) data must hold Rows x Columns x BitsAllocated / 8 bytes (plus one pad byte);
    encapsulated data needs an installed decoder for its transfer syntax. Images larger than
    ``MAX_IMAGE_PIXELS`` are refused as implausible headers.
    """
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    bits = int(ds.get("BitsAllocated") or 0)
    if rows < 1 or cols < 1 or bits not in (8, 16, 32):
        raise CTInputError(path, f"Rows {rows}, Columns {cols}, BitsAllocated {bits}: not a CT image")
    if rows * cols > MAX_IMAGE_PIXELS:
        raise CTInputError(path, f"Rows x Columns {rows} x {cols} is implausible for a CT slice")
    syntax = pydicom.uid.UID(ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian))
    if syntax.is_compressed:
        try:
            available = pydicom.pixels.get_decoder(syntax).is_available
        except NotImplementedError:  # a syntax pydicom has no decoder class for
            available = False
        if not available:
            raise CTInputError(
                path,
                f"no decoder installed for transfer syntax {syntax.name} ({syntax}); ctlib installs "
                "pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls and python-gdcm for the syntaxes they cover",
            )
        return
    expected = rows * cols * (bits // 8) * int(ds.get("SamplesPerPixel", 1) or 1)
    found = len(ds.PixelData)
    if found not in (expected, expected + 1):
        raise CTInputError(
            path,
            f"pixel data holds {found} bytes, Rows x Columns x BitsAllocated ({rows} x {cols} x {bits}) "
            f"need {expected}",
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
