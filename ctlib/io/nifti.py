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
INT32 = np.iinfo(np.int32)
GZIP_LEVEL = 1  # nibabel's default: fast, and CT compresses well at any level


def _load(path: Path) -> tuple[nifti_header.VoxelLayout, bytes | memoryview, list[str]]:
    """Layout and content of a NIfTI file, validated; the content read only as far as the voxels go.

    Returns the voxel layout, the bytes up to the end of the voxel data and nibabel's remarks on the
    header. A file whose content runs on past the voxels the header declares is refused, and so is a
    ``.nii.gz`` too small to hold what its header declares, before anything is inflated.
    """
    if not path.is_file():
        raise CTInputError(path, "no such file")
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise CTInputError(path, "not a NIfTI file name (.nii or .nii.gz)")
    prefix, _ = nifti_header.read_prefix(path, max(nifti_header.HEADER_BYTES))
    header = nifti_header.parse_header(prefix, path)
    layout = nifti_header.validate_header(header, path)
    notes = nifti_header.nibabel_remarks(header, path)
    size = path.stat().st_size
    if path.name.endswith(".gz") and layout.end > nifti_header.DEFLATE_MAX_RATIO * size:
        raise CTInputError(
            path,
            f"the header declares {layout.end} bytes, more than {size} bytes of gzip can hold "
            f"(deflate expands at most {nifti_header.DEFLATE_MAX_RATIO}:1)",
        )
    buffer, more = nifti_header.read_prefix(path, layout.end)
    if len(buffer) < layout.end:
        raise CTInputError(
            path,
            f"voxel data truncated: {max(len(buffer) - layout.offset, 0)} bytes for {layout.count} "
            f"voxels of {layout.dtype}",
        )
    if more:
        extra = f"{size - layout.end} bytes" if not path.name.endswith(".gz") else "data"
        raise CTInputError(
            path, f"{extra} after the {layout.count} voxels the header declares (dim or datatype wrong?)"
        )
    return layout, buffer, notes


def _stored_zyx(layout: nifti_header.VoxelLayout, buffer: bytes | memoryview) -> np.ndarray:
    """The stored voxels as a ``(z, y, x)`` array of the file's dtype (NIfTI stores x fastest)."""
    return np.frombuffer(buffer, dtype=layout.dtype, count=layout.count, offset=layout.offset).reshape(
        layout.shape_xyz[::-1]
    )


def _scaled(layout: nifti_header.VoxelLayout, stored: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """``stored * scl_slope + scl_inter`` (unscaled when the header sets no scaling); overflow gives inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        array = stored.astype(dtype)  # float64 beyond float32: inf, refused by the callers
        if layout.slope is not None and layout.slope != 1:
            array *= dtype(layout.slope)
        if layout.inter is not None and layout.inter != 0:
            array += dtype(layout.inter)
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
    layout, buffer, notes = _load(path)
    array = _scaled(layout, _stored_zyx(layout, buffer))
    del buffer
    if (layout.dtype.kind == "f" or layout.scaled) and not np.all(np.isfinite(array)):
        raise CTInputError(path, f"{int(np.sum(~np.isfinite(array)))} voxels are NaN or infinite")
    padded = 0
    if fill_below_air:
        padded = int(np.count_nonzero(array < AIR_HU))
        np.maximum(array, AIR_HU, out=array)
    affine_lps = layout.affine.copy()
    affine_lps[:3, :] = LPS_TO_RAS @ affine_lps[:3, :]
    try:
        volume = from_index_to_lps(array, affine_lps, modality=modality)
    except ValueError as err:
        raise CTInputError(path, f"unusable affine: {err}") from None
    volume.meta.update(
        format="nifti",
        source=str(path),
        stored_dtype=str(layout.dtype),
        voxels_filled_to_air=padded,
        **({"header_notes": notes} if notes else {}),
    )
    return volume


def read_nifti_labels(path: str | os.PathLike, like: Volume | None = None) -> np.ndarray:
    """Read a NIfTI label map as an integer ``(z, y, x)`` array (the stored integer type, else int32).

    Goes through the same validated reader as ``read_nifti``. With ``like``, the label grid must have
    the same shape and geometry as that volume.
    """
    path = Path(path)
    layout, buffer, _ = _load(path)
    data = _stored_zyx(layout, buffer)
    if layout.scaled:
        data = _scaled(layout, data, np.float64)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.all(np.equal(np.mod(data, 1), 0)):
            raise CTInputError(path, "label map holds non-integer values")
        if data.size and (data.min() < INT32.min or data.max() > INT32.max):
            raise CTInputError(path, "label map holds values outside the int32 range")
        data = data.astype(np.int32)
    labels = data if data.flags.writeable else data.copy()  # a view of the file's bytes: read-only
    if like is not None:
        if labels.shape != like.shape:
            raise CTInputError(path, f"label map shape {labels.shape} differs from the volume's {like.shape}")
        if not np.allclose(layout.affine, like.index_to_ras(), atol=1e-3):
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
