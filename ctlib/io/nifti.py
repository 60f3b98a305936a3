"""NIfTI-1/2 reading and writing with an exact geometry round trip (nibabel).

NIfTI stores the array as ``(i, j, k)`` = (x, y, z) with an index -> RAS affine; a ``Volume`` is
``(z, y, x)`` with LPS geometry. Conversion happens here and nowhere else.
"""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from ctlib.atomic import atomic_path
from ctlib.errors import CTInputError
from ctlib.io.volume import LPS_TO_RAS, Volume, from_index_to_lps

AIR_HU = -1024.0
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _load_image(path: str | os.PathLike) -> nib.spatialimages.SpatialImage:
    path = Path(path)
    if not path.is_file():
        raise CTInputError(path, "no such file")
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises several types for foreign or broken files
        raise CTInputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None


def _xyz_array(img: nib.spatialimages.SpatialImage, path: str | os.PathLike) -> np.ndarray:
    """The stored voxel values as an ``(x, y, z)`` array (scaled by scl_slope/inter if set)."""
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise CTInputError(path, f"expected a 3-D volume, found shape {img.shape}")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # truncated gzip, short file
        raise CTInputError(path, f"voxel data unreadable ({type(err).__name__}: {err})") from None
    return data.reshape(shape)


def _decompress(path: Path) -> bytes:
    """The whole file, gunzipped in one call (nibabel's chunked stream is about 2x slower)."""
    raw = path.read_bytes()
    if not path.name.endswith(".gz"):
        return raw
    parts = []
    try:
        while raw:  # a .gz file may hold several members
            stream = zlib.decompressobj(wbits=31)
            parts.append(stream.decompress(raw))
            if not stream.eof:
                raise zlib.error("the gzip stream ends early (truncated file)")
            raw = stream.unused_data
    except zlib.error as err:
        raise CTInputError(path, f"voxel data unreadable (gzip: {err})") from None
    return b"".join(parts)


def _header(buffer: bytes, path: Path) -> nib.Nifti1Header:
    """NIfTI-1 or NIfTI-2 header, told apart by sizeof_hdr (348 or 540) in either byte order."""
    size = buffer[:4]
    for header_class, expected in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        if size in (expected.to_bytes(4, "little"), expected.to_bytes(4, "big")):
            try:
                return header_class.from_fileobj(io.BytesIO(buffer[:expected]), check=True)
            except Exception as err:  # nibabel raises HeaderDataError and friends
                raise CTInputError(path, f"bad NIfTI header ({err})") from None
    raise CTInputError(path, "not a NIfTI-1 or NIfTI-2 file (unknown header size)")


def _voxels_zyx(header: nib.Nifti1Header, buffer: bytes, path: Path) -> np.ndarray:
    """The stored voxels as a ``(z, y, x)`` float32 array, scaled by scl_slope / scl_inter.

    NIfTI stores x fastest, so the raw buffer read in C order is already ``(z, y, x)``: no transpose.
    """
    shape = header.get_data_shape()
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise CTInputError(path, f"expected a 3-D volume, found shape {header.get_data_shape()}")
    dtype = header.get_data_dtype()
    count = int(np.prod(shape))
    offset = int(header["vox_offset"])
    if len(buffer) < offset + count * dtype.itemsize:
        raise CTInputError(
            path, f"voxel data truncated: {len(buffer) - offset} bytes for {count} voxels of {dtype}"
        )
    stored = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape[::-1])
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
    if not path.is_file():
        raise CTInputError(path, "no such file")
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise CTInputError(path, "not a NIfTI file name (.nii or .nii.gz)")
    buffer = _decompress(path)
    header = _header(buffer, path)
    array = _voxels_zyx(header, buffer, path)
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
    )
    return volume


def read_nifti_labels(path: str | os.PathLike, like: Volume | None = None) -> np.ndarray:
    """Read a NIfTI label map as an integer ``(z, y, x)`` array.

    With ``like``, the label grid must have the same shape and geometry as that volume.
    """
    img = _load_image(path)
    data = _xyz_array(img, path)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.equal(np.mod(data, 1), 0)):
            raise CTInputError(path, "label map holds non-integer values")
        data = data.astype(np.int32)
    labels = np.ascontiguousarray(data.transpose(2, 1, 0))
    if like is not None:
        if labels.shape != like.shape:
            raise CTInputError(path, f"label map shape {labels.shape} differs from the volume's {like.shape}")
        if not np.allclose(img.affine, like.index_to_ras(), atol=1e-3):
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
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path) as tmp:
        # nibabel picks compression from the suffix, so the temporary keeps it.
        named = tmp.with_name(tmp.name + suffix)
        nib.save(img, str(named))
        os.replace(named, tmp)
    return path
