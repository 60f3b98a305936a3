"""Read a DICOM CT series (one file per slice) into a ``Volume`` in HU.

Geometry follows the DICOM Image Plane module (PS3.3 C.7.6.2): slices are sorted by the projection
of ImagePositionPatient on the slice normal (row cosine x column cosine), never by file name or
InstanceNumber. Bad input is refused with a one-line ``CTInputError`` naming the file(s).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ctlib.errors import CTInputError
from ctlib.io import dicom_checks, dicom_gdcm
from ctlib.io.volume import Volume

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: lives beside series, holds no image


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder: its UID, modality, description and files."""

    series_instance_uid: str
    modality: str
    description: str
    n_files: int
    files: list[Path]


def list_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """Group the DICOM files under ``folder`` (recursive) by SeriesInstanceUID (headers only).

    Files that are clearly not images and DICOMDIR files are skipped; any other file that is not
    readable DICOM is refused by name. Series come in the order of their first file.
    """
    paths, source = _collect_paths(folder)
    headers, _ = _read_all(paths, explicit=False, source=source, stop_before_pixels=True)
    return [_series_info(uid, items) for uid, items in _group_by_series(headers).items()]


def read_dicom_series(
    folder_or_files: str | os.PathLike | Iterable[str | os.PathLike],
    series_uid: str | None = None,
    allow_non_ct: bool = False,
    spacing_tolerance: float = 0.01,
    *,
    workers: int | None = None,
    allow_single_slice: bool = False,
) -> Volume:
    """Read one DICOM series into a ``Volume`` (z, y, x) float32 HU, sorted along the slice normal.

    ``folder_or_files`` is a folder (searched recursively; files that are clearly not images, such
    as text, documents, pictures, dotfiles and DICOMDIR, are skipped and listed in
    ``meta["skipped_files"]``; any other file that is not DICOM is refused by name) or a list of
    files (all must be DICOM). Files without the Part 10 preamble are read when they carry an SOP
    class and pixel data. ``series_uid`` picks a series when there are several.
    ``spacing_tolerance`` is relative: every step between slice positions must be within it of the
    median step (dz is then the mean step). Compressed transfer syntaxes are decoded by pydicom's
    handlers (pylibjpeg/openjpeg); the openjpeg decoder holds the GIL, so a series of compressed
    slices is decoded by ``workers`` forked processes (default: one per CPU, at most 4; 1 = in this
    process). A series of one slice is refused unless ``allow_single_slice``: it is then a ``(1, H, W)``
    volume whose dz is SpacingBetweenSlices, else SliceThickness (refused when it has neither).
    """
    if isinstance(folder_or_files, (str, os.PathLike)):
        paths, source = _collect_paths(folder_or_files)
        explicit = Path(folder_or_files).is_file()
    else:
        paths = [Path(p) for p in folder_or_files]
        source = paths[0].parent if paths else Path(".")
        explicit = True
        if not paths:
            raise CTInputError(
                None, "no files given: read_dicom_series needs a folder or a list of DICOM files"
            )
    datasets, skipped = _read_all(paths, explicit=explicit, source=source, stop_before_pixels=False)
    groups = _group_by_series(datasets)
    items = _select_series(groups, series_uid, source)
    first_path, first = items[0]
    modality = str(first.get("Modality", ""))
    if modality != "CT" and not allow_non_ct:
        raise CTInputError(
            first_path,
            f"modality is {modality or 'missing'!r}, expected 'CT' (pass allow_non_ct=True to read it "
            "anyway)",
        )
    for path, ds in items:
        dicom_checks.check_image(path, ds)
    dicom_checks.check_consistent(items)
    for path, ds in items:  # before the volume is allocated from Rows x Columns
        dicom_checks.check_pixel_data(path, ds)
    if len(items) < 2 and not allow_single_slice:
        raise CTInputError(
            first_path, "single-slice series: at least 2 slices are needed to determine the slice spacing dz "
            "(allow_single_slice=True reads it with dz from SpacingBetweenSlices or SliceThickness)"
        )

    row, col, normal = dicom_checks.orientation(first_path, first)
    positions = np.array([dicom_checks.floats(p, ds, "ImagePositionPatient", 3) for p, ds in items])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    items = [items[i] for i in order]
    positions, along = positions[order], along[order]
    if len(items) == 1:
        dz = _single_slice_dz(first_path, first)
    else:
        dz = dicom_checks.check_spacing([p for p, _ in items], along, spacing_tolerance)
        dicom_checks.check_tilt([p for p, _ in items], positions, normal)

    rows, cols = int(first.Rows), int(first.Columns)
    dy, dx = dicom_checks.floats(first_path, first, "PixelSpacing", 2)
    rescale = [dicom_checks.rescale(p, ds) for p, ds in items]
    array = np.empty((len(items), rows, cols), dtype=np.float32)
    transfer_syntax = first.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)
    n_workers = _auto_workers(workers, len(items), transfer_syntax)
    if n_workers > 1:
        paths_sorted = [p for p, _ in items]
        del datasets, groups, items  # the pixel data is decoded from the files by the workers
        _decode_parallel(array, paths_sorted, rescale, n_workers)
    else:
        for k, (path, ds) in enumerate(items):
            _store(array, k, _decode(path, ds), rescale[k])
    thickness = first.get("SliceThickness")
    return Volume(
        array=array,
        spacing=(dz, dy, dx),
        origin=tuple(positions[0]),
        direction=np.stack([row, col, normal], axis=1),
        modality=modality or "CT",
        slice_thickness_mm=float(thickness) if thickness not in (None, "") else None,
        meta={
            "format": "dicom",
            "series_uid": str(first.get("SeriesInstanceUID", "")),
            "series_description": str(first.get("SeriesDescription", "")),
            "n_files": int(array.shape[0]),
            "transfer_syntax": str(transfer_syntax),
            "transfer_syntax_name": transfer_syntax.name,
            "source": str(source),
            "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")) or None,
            "patient_position": str(first.get("PatientPosition", "")) or None,  # e.g. HFS, FFS
            "skipped_files": skipped,
        },
    )


def _single_slice_dz(path: Path, ds: Dataset) -> float:
    """dz of a one-slice series: SpacingBetweenSlices, else SliceThickness (positive mm), else a refusal."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        try:
            dz = float(value) if value not in (None, "") else float("nan")
        except (TypeError, ValueError):
            dz = float("nan")
        if np.isfinite(dz) and dz > 0:
            return dz
    raise CTInputError(
        path, "single-slice series without a positive SliceThickness or SpacingBetweenSlices: "
        "its slice spacing dz is unknown"
    )


# --- finding and parsing files ---------------------------------------------------------------


def _collect_paths(src: str | os.PathLike) -> tuple[list[Path], Path]:
    root = Path(src)
    if root.is_file():
        return [root], root.parent
    if not root.is_dir():
        raise CTInputError(root, "no such folder or file")
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    if not paths:
        raise CTInputError(root, "empty folder: no DICOM files found")
    return paths, root


# Files that sit beside a series and are clearly not images: skipped (and listed in Volume.meta),
# never guessed at. Any other file that is not readable DICOM is refused by name.
_NOT_IMAGE_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".json", ".xml", ".html", ".htm", ".pdf", ".csv", ".tsv", ".log", ".yaml",
    ".yml", ".ini", ".cfg", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".svg", ".tmp",
})
_NOT_IMAGE_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini"})
_NOT_IMAGE_STEMS = frozenset({"readme", "license", "licence"})  # with or without a suffix


def _clearly_not_an_image(path: Path) -> str | None:
    """Why ``path`` is skipped without being read (dotfiles and our own ``.name.*.tmp`` temporaries,
    text, documents, pictures, DICOMDIR), or ``None`` when it must be read as DICOM."""
    name = path.name.lower()
    if name.startswith("."):
        return "hidden file or temporary"
    if name in _NOT_IMAGE_NAMES or name.split(".")[0] in _NOT_IMAGE_STEMS:
        return "not an image (by name)"
    if path.suffix.lower() in _NOT_IMAGE_SUFFIXES:
        return f"not an image ({path.suffix.lower()} file)"
    return None


def _read_legacy(path: Path, stop_before_pixels: bool) -> Dataset | None:
    """A DICOM file without the 128-byte preamble and 'DICM' prefix (pre-Part 10): read with
    ``force=True`` and kept only when it carries an SOP class and an image; else ``None``."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except Exception:
        return None
    is_image = "PixelData" in ds or (stop_before_pixels and "Rows" in ds and "Columns" in ds)
    if "SOPClassUID" not in ds or not is_image:
        return None
    if "TransferSyntaxUID" not in ds.file_meta:  # needed to decode; legacy files are implicit VR LE
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds


def _read_all(
    paths: Sequence[Path], *, explicit: bool, source: Path, stop_before_pixels: bool
) -> tuple[list[tuple[Path, Dataset]], list[dict[str, str]]]:
    """Parse every file once: ``(items, skipped)``.

    In a folder, files that are clearly not images are skipped and listed in ``skipped``; every other
    file must be DICOM (with or without the Part 10 preamble) and is refused by name when it is not.
    """
    out, skipped = [], []
    for path in paths:
        shown = str(path.relative_to(source) if path.is_relative_to(source) else path)
        reason = None if explicit else _clearly_not_an_image(path)
        if reason is not None:
            skipped.append({"file": shown, "reason": reason})
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError as err:
            ds = _read_legacy(path, stop_before_pixels)
            if ds is None:
                size = path.stat().st_size
                what = "empty file (0 bytes)" if size == 0 else f"not a DICOM file ({err})"
                hint = "" if explicit else "; move it out of the series folder if it does not belong there"
                raise CTInputError(path, what + hint) from None
        except Exception as err:  # pydicom raises many types on broken files
            raise CTInputError(
                path, f"unreadable or truncated DICOM file: {type(err).__name__}: {err}"
            ) from None
        if ds.file_meta.get("MediaStorageSOPClassUID") == _MEDIA_STORAGE_DIRECTORY:
            skipped.append({"file": shown, "reason": "DICOMDIR (a directory record, no image)"})
            continue
        # pydicom keeps a short last value silently, and drops every element on an EOF inside an
        # undefined-length one (encapsulated pixel data): both mean the file was cut short.
        if _cut_short(ds.file_meta) or _cut_short(ds) or len(ds) == 0:
            raise CTInputError(path, "truncated file: it ends inside a data element")
        # SOPInstanceUID is mandatory in every DICOM instance and comes early (group 0008): a file
        # without it was cut short inside an element header, which pydicom reads as a clean end.
        if "SOPInstanceUID" not in ds:
            raise CTInputError(path, "truncated or incomplete DICOM file: no SOPInstanceUID")
        out.append((path, ds))
    if not out:
        raise CTInputError(source, f"no DICOM files found ({len(paths)} file(s), none with a DICOM header)")
    return out, skipped


def _cut_short(ds: Dataset) -> bool:
    """True when the last element read holds fewer bytes than its header declares."""
    if len(ds) == 0:
        return False
    elem = ds.get_item(next(reversed(ds.keys())))
    if isinstance(elem, RawDataElement) and elem.value is not None and elem.length != 0xFFFFFFFF:
        return len(elem.value) < elem.length
    return False


def _group_by_series(items: list[tuple[Path, Dataset]]) -> dict[str, list[tuple[Path, Dataset]]]:
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path, ds in items:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    return groups


def _series_info(uid: str, items: list[tuple[Path, Dataset]]) -> SeriesInfo:
    first = items[0][1]
    return SeriesInfo(
        uid,
        str(first.get("Modality", "")),
        str(first.get("SeriesDescription", "")),
        len(items),
        [p for p, _ in items],
    )


def _select_series(
    groups: dict[str, list], series_uid: str | None, source: Path
) -> list[tuple[Path, Dataset]]:
    listing = "; ".join(
        f"{uid or '<empty>'!r} ({info.modality or '?'}, {info.description!r}, {info.n_files} files)"
        for uid, info in ((u, _series_info(u, items)) for u, items in groups.items())
    )
    if series_uid is None:
        if len(groups) > 1:
            raise CTInputError(source, f"{len(groups)} series found, pass series_uid= one of: {listing}")
        return next(iter(groups.values()))
    if series_uid not in groups:
        raise CTInputError(source, f"series_uid {series_uid!r} not found; series here: {listing}")
    return groups[series_uid]


# --- decoding --------------------------------------------------------------------------------


def _decode(path: Path, ds: Dataset) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as err:
        if dicom_gdcm.applies(ds, err):
            return dicom_gdcm.decode(path, ds)
        raise CTInputError(
            path, f"cannot decode pixel data (corrupt or truncated?): {type(err).__name__}: {err}"
        ) from None


def _store(out: np.ndarray, k: int, stored: np.ndarray, rescale: tuple[float, float]) -> None:
    """HU = stored * RescaleSlope + RescaleIntercept (the Modality LUT, PS3.3 C.11.1)."""
    slope, intercept = rescale
    if slope == 1.0 and intercept.is_integer():
        out[k] = stored  # integers and an integer shift are exact in float32
        out[k] += intercept
    else:
        out[k] = stored * slope + intercept  # float64, rounded once to float32


def _auto_workers(workers: int | None, n_slices: int, transfer_syntax: pydicom.uid.UID) -> int:
    if workers is not None:
        return max(1, int(workers))
    if not transfer_syntax.is_compressed or n_slices < 4:
        return 1  # uncompressed slices are a memcpy: processes would only add overhead
    if "fork" not in multiprocessing.get_all_start_methods() or multiprocessing.current_process().daemon:
        return 1  # no fork (macOS/Windows default) or inside a daemon such as a DataLoader worker
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 4, n_slices // 2))


def _decode_file(path: str) -> np.ndarray | str:
    """Worker: parse and decode one file; errors come back as text (CTInputError does not pickle)."""
    try:
        return _decode(Path(path), pydicom.dcmread(path))
    except Exception as err:
        return " ".join(str(getattr(err, "problem", err)).split())


def _decode_parallel(
    out: np.ndarray, paths: list[Path], rescale: list[tuple[float, float]], workers: int
) -> None:
    # fork, not spawn: the children need no imports, so the pool starts in milliseconds.
    chunk = max(1, len(paths) // (4 * workers))
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for k, result in enumerate(pool.map(_decode_file, [str(p) for p in paths], chunksize=chunk)):
                if isinstance(result, str):
                    raise CTInputError(paths[k], result)
                _store(out, k, result, rescale[k])
    except (BrokenProcessPool, OSError):
        for k, path in enumerate(paths):  # no processes to be had: decode here
            _store(out, k, _decode(path, pydicom.dcmread(path)), rescale[k])
