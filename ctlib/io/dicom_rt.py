"""DICOM-RT import onto a CT ``Volume``'s grid: RTSTRUCT (PS3.3 A.19) -> masks, RTDOSE (PS3.3 A.18) -> dose in
Gy.

RTSTRUCT: every ``CLOSED_PLANAR`` contour of ``ROIContourSequence`` (points in LPS mm) is mapped to
continuous voxel indices of the CT, must lie in one axial plane of the CT (within ``plane_tolerance``
of a slice, in slices), and is filled on that slice with ``matplotlib.path.Path.contains_points`` at the
voxel centres. Several contours of one ROI on one slice are combined by nesting depth (the ROI Contour
Module, PS3.3 C.8.8.6, lets contours be nested): a contour inside an odd number of others is a hole,
inside an even number (islands, islands in holes) it is filled; contours that overlap without one lying
inside the other are united (with a warning). For properly nested or disjoint contours this equals the XOR
that dicompyler and plastimatch use. POINT and OPEN_* contours enclose no volume: skipped with a
warning. ROIs without contours (no ``ContourSequence``) and ROIs with no voxel on the CT are listed as
``empty`` and left out of ``masks``. ROI names are kept as written, or mapped by the caller's
``map_names`` (a study's name table); unmatched names are listed.

RTDOSE: dose = stored value x ``DoseGridScaling`` (Gy; ``DoseUnits`` must be ``GY``). Frame ``f``,
row ``r``, column ``c`` sits at ``ImagePositionPatient + c * dx * row_cosine + r * dy * column_cosine
+ GridFrameOffsetVector[f] * normal``. The dose is resampled at the CT voxel centres by trilinear
interpolation (``scipy.ndimage.map_coordinates``, order 1), and is 0 outside the dose grid.

Refusals (``CTInputError`` naming the file): wrong Modality, a Frame of Reference UID that is not the
CT's, missing DoseGridScaling / geometry attributes, non-GY units, non-monotonic frame offsets,
contours that are not planar or fall between CT slices, and contours beyond the CT's first or last
slice unless ``outside_ct="skip"`` (a CT export that holds only part of the contoured slices).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset
from scipy import ndimage

from ctlib.errors import CTInputError
from ctlib.io.volume import Volume

PLANE_TOLERANCE_SLICES = 0.25  # contour z may sit this far (in slices) from a CT slice position


@dataclass
class RTStructureSet:
    """Masks read from an RTSTRUCT: ``{canonical name: (z, y, x) bool}`` on the CT grid."""

    masks: dict[str, np.ndarray]
    raw_names: dict[str, str]                     # canonical name -> ROI name in the file
    unmatched: list[str] = field(default_factory=list)  # ROI names with no canonical name
    empty: list[str] = field(default_factory=list)      # ROI names with no contour / no voxel on the CT
    warnings: list[str] = field(default_factory=list)   # contours skipped, overlaps, duplicate names


NameMap = Callable[[list[str], Path], dict[str, str]]


def _keep_names(names: list[str], source: Path) -> dict[str, str]:
    return {name: name for name in names}


def _read(path: str | os.PathLike, modality: str) -> tuple[Path, Dataset]:
    path = Path(path)
    if not path.is_file():
        raise CTInputError(path, "no such file")
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:
        raise CTInputError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from None
    found = str(ds.get("Modality", ""))
    if found != modality:
        raise CTInputError(path, f"modality is {found or 'missing'!r}, expected {modality!r}")
    return path, ds


def _check_frame(path: Path, found: str | None, expected: str | None) -> None:
    if expected and found and str(found) != str(expected):
        raise CTInputError(path, f"Frame of Reference UID {found} is not the CT's {expected}: "
                                 "the RT object belongs to another image set")


def ct_frame_of_reference(ct_file: str | os.PathLike) -> str | None:
    """FrameOfReferenceUID of a CT slice file (``read_dicom_series`` does not keep it)."""
    ds = pydicom.dcmread(ct_file, stop_before_pixels=True)
    return str(ds.FrameOfReferenceUID) if "FrameOfReferenceUID" in ds else None


def _lps_to_index(ct: Volume) -> np.ndarray:
    """4x4 affine from LPS mm to continuous voxel index ``(i, j, k)`` = (x, y, z index)."""
    return np.linalg.inv(ct.index_to_lps())


def read_rtstruct(
    path: str | os.PathLike,
    ct: Volume,
    *,
    frame_of_reference_uid: str | None = None,
    plane_tolerance: float = PLANE_TOLERANCE_SLICES,
    map_names: NameMap | None = None,
    outside_ct: Literal["refuse", "skip"] = "refuse",
) -> RTStructureSet:
    """RTSTRUCT -> ``RTStructureSet`` with one ``(z, y, x)`` bool mask per ROI whose name maps to a canonical
    name and that has a voxel on the CT.

    ``map_names(roi_names, source) -> {canonical: roi_name}`` picks and renames the ROIs (a study's
    name table; it may refuse ambiguous names); without it every ROI is kept under its own name.
    ``outside_ct="skip"`` skips (with a warning) contours beyond the CT's first or last slice instead of
    refusing the file. ``frame_of_reference_uid`` (the CT's; default ``ct.meta["frame_of_reference_uid"]``
    when set) is checked against the structure set's references.
    """
    if outside_ct not in ("refuse", "skip"):
        raise ValueError(f"outside_ct must be 'refuse' or 'skip', got {outside_ct!r}")
    path, ds = _read(path, "RTSTRUCT")
    expected = frame_of_reference_uid or ct.meta.get("frame_of_reference_uid")
    for ref in ds.get("ReferencedFrameOfReferenceSequence", []):
        _check_frame(path, ref.get("FrameOfReferenceUID"), expected)
    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    if not rois:
        raise CTInputError(path, "StructureSetROISequence is empty: no ROI to read")
    raw = {number: str(r.get("ROIName", "")) for number, r in rois.items()}
    for r in rois.values():
        _check_frame(path, r.get("ReferencedFrameOfReferenceUID"), expected)
    warnings: list[str] = []
    number_of: dict[str, int] = {}
    for number, name in raw.items():
        if name in number_of:
            warnings.append(f"ROI name {name!r} is used by ROI numbers {number_of[name]} and {number}: "
                            f"only ROI {number_of[name]} is read")
        else:
            number_of[name] = number
    mapped = (map_names or _keep_names)(list(number_of), path)
    contours: dict[int, list] = {}
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        if number not in rois:
            warnings.append(f"ROIContourSequence refers to ROI number {number}, which is not in "
                            "StructureSetROISequence: its contours are ignored")
        contours[number] = list(item.get("ContourSequence", None) or [])
    empty = [name for number, name in raw.items() if not contours.get(number)]
    warnings += [f"ROI {name!r} has no contours (no ContourSequence): empty" for name in empty]
    to_index = _lps_to_index(ct)
    masks = {}
    for canonical, raw_name in mapped.items():
        number = number_of[raw_name]
        if raw_name in empty:
            continue
        mask = _rasterize(
            path, raw_name, contours[number], ct, to_index, plane_tolerance, outside_ct, warnings
        )
        if mask.any():
            masks[canonical] = mask
        else:
            empty.append(raw_name)
            warnings.append(f"ROI {raw_name!r} has no voxel on the CT: left out")
    unmatched = [name for name in raw.values() if name not in mapped.values()]
    return RTStructureSet(masks=masks, raw_names={c: r for c, r in mapped.items() if c in masks},
                          unmatched=unmatched, empty=empty, warnings=warnings)


def _rasterize(path: Path, roi: str, contours: list, ct: Volume, to_index: np.ndarray,
               plane_tolerance: float, outside_ct: str, warnings: list[str]) -> np.ndarray:
    nz, ny, nx = ct.shape
    per_slice: dict[int, list[np.ndarray]] = {}   # slice k -> polygons (n, 2) in continuous (i, j)
    skipped: Counter[str] = Counter()
    for n, contour in enumerate(contours):
        kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
        if kind != "CLOSED_PLANAR":
            skipped[f"{kind} contour(s) (they enclose no volume)"] += 1
            continue
        points = np.asarray(contour.get("ContourData", None) or [], dtype=np.float64).reshape(-1, 3)
        if len(points) < 3:
            skipped["contour(s) of fewer than 3 points"] += 1
            continue
        index = points @ to_index[:3, :3].T + to_index[:3, 3]  # (n, 3) continuous (i, j, k)
        where = f"ROI {roi!r}, contour {n}"
        if np.ptp(index[:, 2]) > plane_tolerance:
            raise CTInputError(path, f"{where} is not in one axial plane of the CT "
                                     f"(spans {np.ptp(index[:, 2]):.2f} slices)")
        k_float = float(index[:, 2].mean())
        k = int(round(k_float))
        beyond = k_float < -plane_tolerance or k_float > nz - 1 + plane_tolerance
        if beyond and outside_ct == "skip":
            skipped["contour(s) beyond the CT's first or last slice"] += 1
            continue
        if abs(k_float - k) > plane_tolerance or not 0 <= k < nz:
            raise CTInputError(path, f"{where} at slice index {k_float:.2f} matches no CT slice "
                                     f"(0..{nz - 1}, tolerance {plane_tolerance} slice)")
        per_slice.setdefault(k, []).append(index[:, :2])
    warnings += [f"ROI {roi!r}: {count} {what} skipped" for what, count in skipped.items()]
    mask = np.zeros(ct.shape, dtype=bool)
    overlapping = 0
    for k, polygons in per_slice.items():
        overlapping += _fill_slice(mask[k], polygons)
    if overlapping:
        warnings.append(f"ROI {roi!r}: contours overlap without one inside the other on {overlapping} "
                        "slice(s): filled as their union")
    return mask


def _fill_slice(out: np.ndarray, polygons: list[np.ndarray]) -> int:
    """Fill ``out (y, x)`` from closed polygons ``(n, 2)`` of (i, j) = (x, y) indices by nesting depth:
    even depth filled, odd depth a hole. Returns 1 when two contours of one depth overlap, else 0."""
    ny, nx = out.shape
    paths = [PolygonPath(p) for p in polygons]
    area = np.array([0.5 * abs(p[:, 0] @ np.roll(p[:, 1], -1) - p[:, 1] @ np.roll(p[:, 0], -1))
                     for p in polygons])  # shoelace
    lo = np.array([p.min(0) for p in polygons])
    hi = np.array([p.max(0) for p in polygons])
    depth = np.zeros(len(polygons), dtype=int)
    for a in range(len(polygons)):
        for b in range(len(polygons)):
            if a == b or area[b] <= area[a] or np.any(lo[a] < lo[b] - 1e-6) or np.any(hi[a] > hi[b] + 1e-6):
                continue
            depth[a] += paths[b].contains_points(polygons[a]).mean() > 0.5  # a lies inside b
    overlap = 0
    for d in sorted(set(depth.tolist())):
        layer = np.zeros_like(out)
        for n in np.flatnonzero(depth == d):
            i0, j0 = np.clip(np.floor(lo[n]).astype(int), 0, [nx - 1, ny - 1])
            i1, j1 = np.clip(np.ceil(hi[n]).astype(int), 0, [nx - 1, ny - 1])
            ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="xy")
            inside = paths[n].contains_points(np.stack([ii.ravel(), jj.ravel()], 1)).reshape(ii.shape)
            window = layer[j0:j1 + 1, i0:i1 + 1]
            overlap |= bool(np.any(window & inside))
            window |= inside
        if d % 2 == 0:
            out |= layer
        else:
            out &= ~layer
    return int(overlap)


def _floats(path: Path, ds: Dataset, keyword: str, n: int | None = None) -> np.ndarray:
    if keyword not in ds or ds[keyword].value in (None, ""):
        raise CTInputError(path, f"{keyword} is missing")
    try:
        value = np.asarray(ds[keyword].value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise CTInputError(path, f"{keyword} is not numeric ({err})") from None
    if n is not None and value.shape != (n,):
        raise CTInputError(path, f"{keyword} has {value.size} values, expected {n}")
    if not np.all(np.isfinite(value)):
        raise CTInputError(path, f"{keyword} holds NaN or infinite values")
    return value


def _frame_offsets(
    path: Path, ds: Dataset, position: np.ndarray, normal: np.ndarray, n_frames: int
) -> np.ndarray:
    """Frame positions along the normal relative to ImagePositionPatient (PS3.3 C.8.8.3.2)."""
    if n_frames == 1 and "GridFrameOffsetVector" not in ds:
        return np.zeros(1)
    offsets = _floats(path, ds, "GridFrameOffsetVector", n_frames)
    if offsets[0] != 0:
        # The absolute form (offsets are positions along the normal) is allowed when it starts at the IPP.
        if abs(offsets[0] - position @ normal) > 1e-3:
            raise CTInputError(path, f"GridFrameOffsetVector starts at {offsets[0]:g}: neither 0 (relative) "
                                     f"nor the ImagePositionPatient {position @ normal:g} (absolute)")
        offsets = offsets - offsets[0]
    steps = np.diff(offsets)
    if n_frames > 1 and not (np.all(steps > 0) or np.all(steps < 0)):
        raise CTInputError(path, "GridFrameOffsetVector is not strictly monotonic")
    return offsets


def read_rtdose(
    path: str | os.PathLike, ct: Volume, *, frame_of_reference_uid: str | None = None
) -> np.ndarray:
    """RTDOSE -> ``(z, y, x)`` float32 dose in Gy on the CT grid (trilinear, 0 outside the dose grid)."""
    path, ds = _read(path, "RTDOSE")
    _check_frame(
        path, ds.get("FrameOfReferenceUID"), frame_of_reference_uid or ct.meta.get("frame_of_reference_uid")
    )
    units = str(ds.get("DoseUnits", "")).upper()
    if units != "GY":
        raise CTInputError(
            path, f"DoseUnits is {units or 'missing'!r}, expected 'GY' (relative dose has no scale)"
        )
    scaling = float(_floats(path, ds, "DoseGridScaling", 1)[0])
    if scaling <= 0:
        raise CTInputError(path, f"DoseGridScaling must be positive, got {scaling:g}")
    orientation = _floats(path, ds, "ImageOrientationPatient", 6)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    position = _floats(path, ds, "ImagePositionPatient", 3)
    dy, dx = _floats(path, ds, "PixelSpacing", 2)
    try:
        stored = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as err:
        raise CTInputError(path, f"pixel data cannot be decoded ({type(err).__name__}: {err})") from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    stored = stored.reshape(n_frames, int(ds.Rows), int(ds.Columns))
    dose = stored * scaling
    if not np.all(np.isfinite(dose)) or dose.min() < 0:
        raise CTInputError(path, "dose holds NaN, infinite or negative values")
    offsets = _frame_offsets(path, ds, position, normal, n_frames)
    order = np.argsort(offsets)
    offsets, dose = offsets[order], dose[order]

    ct_affine = ct.index_to_lps()
    nz, ny, nx = ct.shape
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    out = np.zeros(ct.shape, dtype=np.float32)
    for k in range(nz):  # slice by slice: memory stays bounded on 512 x 512 x 300 CTs
        lps = ct_affine[:3, 0] * ii[..., None] + ct_affine[:3, 1] * jj[..., None] + \
            ct_affine[:3, 2] * k + ct_affine[:3, 3]
        rel = lps - position
        col = rel @ row_dir / dx
        row = rel @ col_dir / dy
        along = _snap_mm(rel @ normal, offsets[0], offsets[-1])
        frame = np.interp(along, offsets, np.arange(n_frames), left=-1.0, right=float(n_frames)) \
            if n_frames > 1 else np.where(np.abs(along) <= 1e-3, 0.0, -1.0)
        coords = [_snap(c, n) for c, n in zip((frame, row, col), dose.shape, strict=True)]
        out[k] = ndimage.map_coordinates(dose, coords, order=1, mode="constant", cval=0.0)
    return out


def _snap_mm(along: np.ndarray, first: float, last: float, tolerance_mm: float = 1e-3) -> np.ndarray:
    """Positions within ``tolerance_mm`` outside the first / last dose frame moved onto it (a CT slice on
    the last frame must not fall off the grid by a rounding error)."""
    along = np.where((along < first) & (along > first - tolerance_mm), first, along)
    return np.where((along > last) & (along < last + tolerance_mm), last, along)


def _snap(index: np.ndarray, n: int, tolerance: float = 1e-4) -> np.ndarray:
    """Indices within ``tolerance`` voxel outside ``[0, n - 1]`` moved onto the edge
    (rounding in mm -> index)."""
    index = np.where((index < 0) & (index > -tolerance), 0.0, index)
    return np.where((index > n - 1) & (index < n - 1 + tolerance), float(n - 1), index)
