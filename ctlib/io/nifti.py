"""NIfTI-1/2 reading and writing with an exact geometry round trip (nibabel).

NIfTI stores the array as ``(i, j, k)`` = (x, y, z) with an index -> RAS affine; a ``Volume`` is
``(z, y, x)`` with LPS geometry. Conversion happens here and nowhere else.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from ctlib.atomic import atomic_path
from ctlib.errors import CTInputError
from ctlib.io import nifti_header
from ctlib.io.volume import LPS_TO_RAS, Volume, from_index_to_lps

AIR_HU = -1024.0
NIFTI_SUFFIXES = (".nii", ".nii.gz")
GZIP_LEVEL = 1  # nibabel's default: fast, and CT compresses well at any level


def _load(path: Path) -> tuple[nib.Nifti1Header, bytes, list[str]]:
    """Header and content of a NIfTI file, validated; the content read only as far as the voxels go.

    Returns the header, the bytes up to the end of the voxel data and nibabel's remarks on the header.
    """
    if not path.is_file():
        raise CTInputError(path, "no such file")
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise CTInputError(path, "not a NIfTI file name (.nii or .nii.gz)")
    prefix, _ = nifti_header.read_prefix(path, max(nifti_header.HEADER_BYTES))
    header = nifti_header.parse_header(prefix, path)
    n_bytes = nifti_header.validate_header(header, path)
    notes = nifti_header.nibabel_remarks(header, path)
    buffer, trailing = nifti_header.read_prefix(path, n_bytes)
    if len(buffer) < n_bytes:
        offset, dtype = int(header["vox_offset"]), header.get_data_dtype()
        count = (n_bytes - offset) // dtype.itemsize
        raise CTInputError(
            path, f"voxel data truncated: {max(len(buffer) - offset, 0)} bytes for {count} voxels of {dtype}"
        )
    if trailing:
        notes.append("bytes after the voxel data were not read")
    return header, buffer, notes


def _stored_zyx(header: nib.Nifti1Header, buffer: bytes) -> np.ndarray:
    """The stored voxels as a ``(z, y, x)`` array of the file's dtype (NIfTI stores x fastest)."""
    shape = header.get_data_shape()[:3]
    count = int(np.prod(shape))
    offset = int(header["vox_offset"])
    return np.frombuffer(buffer, dtype=header.get_data_dtype(), count=count, offset=offset).reshape(
        shape[::-1]
    )


def _scaled(header: nib.Nifti1Header, stored: np.ndarray) -> np.ndarray:
    """``stored * scl_slope + scl_inter`` as float32 (unscaled when the header sets no scaling)."""
    slope, inter = header.get_slope_inter()
    array = stored.astype(np.float32)
    if slope is not None and slope != 1:
        array *= np.float32(slope)
    if inter is not None and inter != 0:
        array += np.float32(inter)
    return array


def read_nifti(
    path: str | os.PathLike,
    *,
    fill_below_air: bool = True,
    modality: str = "CT",
) -> Volume:
    """Read a NIfTI CT volume as a ``Volume`` in HU.

    ``fill_below_air`` sets values below -1024 HU (scanner padding outside the reconstruction
    field, e.g. -2048) to -1024 HU, air; the number of such voxels is kept in ``meta``.
    """
    path = Path(path)
    header, buffer, notes = _load(path)
    array = _scaled(header, _stored_zyx(header, buffer))
    if not np.issubdtype(header.get_data_dtype(), np.integer) and not np.all(np.isfinite(array)):
        raise CTInputError(path, f"{int(np.sum(~np.isfinite(array)))} voxels are NaN or infinite")
    padded = 0
    if fill_below_air:
        padded = int(np.count_nonzero(array < AIR_HU))
        np.maximum(array, AIR_HU, out=array)
    affine_lps = np.asarray(header.get_best_affine(), dtype=np.float64).copy()
    affine_lps[:3, :] = LPS_TO_RAS @ affine_lps[:3, :]
    try:
        volume = from_index_to_lps(array, affine_lps, modality=modality)
    except ValueError as err:
        raise CTInputError(path, f"unusable affine: {err}") from None
    volume.meta.update(
        format="nifti",
        source=str(path),
        stored_dtype=str(header.get_data_dtype()),
        voxels_filled_to_air=padded,
        **({"header_notes": notes} if notes else {}),
    )
    return volume


def read_nifti_labels(path: str | os.PathLike, like: Volume | None = None) -> np.ndarray:
    """Read a NIfTI label map as an integer ``(z, y, x)`` array.

    With ``like``, the label grid must have the same shape and geometry as that volume.
    """
    path = Path(path)
    header, buffer, _ = _load(path)
    data = _stored_zyx(header, buffer)
    slope, inter = header.get_slope_inter()
    if slope not in (None, 1) or inter not in (None, 0):
        data = _scaled(header, data)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.all(np.equal(np.mod(data, 1), 0)):
            raise CTInputError(path, "label map holds non-integer values")
        data = data.astype(np.int32)
    labels = np.ascontiguousarray(data)
    if like is not None:
        if labels.shape != like.shape:
            raise CTInputError(path, f"label map shape {labels.shape} differs from the volume's {like.shape}")
        if not np.allclose(header.get_best_affine(), like.index_to_ras(), atol=1e-3):
            raise CTInputError(path, "label map geometry (affine) differs from the volume's")
    return labels


def write_nifti(
    volume: Volume,
    path: str | os.PathLike,
    *,
    dtype: Literal["auto", "int16", "float32"] = "auto",
) -> Path:
    """Write a ``Volume`` as NIfTI-1 with sform = qform = its index -> RAS affine, atomically.

    ``dtype="auto"`` stores int16 when every value is an integer inside the int16 range, else
    float32, so integer HU round-trip exactly.
    """
    if dtype not in ("auto", "int16", "float32"):
        raise ValueError(f"dtype must be 'auto', 'int16' or 'float32', got {dtype!r}")
    array = volume.array
    if dtype == "auto":
        integral = np.all(np.equal(np.mod(array, 1), 0)) and array.min() >= -32768 and array.max() <= 32767
        dtype = "int16" if integral else "float32"
    data = np.ascontiguousarray(array.transpose(2, 1, 0))
    data = np.rint(data).astype(np.int16) if dtype == "int16" else data.astype(np.float32)
    affine = volume.index_to_ras()
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    path = Path(path)
    content = img.to_bytes()
    if path.name.endswith(".gz"):  # nibabel's level; mtime 0 so equal volumes give equal files
        content = gzip.compress(content, compresslevel=GZIP_LEVEL, mtime=0)
    with atomic_path(path) as tmp:  # one temporary, removed on any error (disk full included)
        tmp.write_bytes(content)
    return path
