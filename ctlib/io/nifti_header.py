"""NIfTI-1/2 headers: bounded reading and validation before any voxel is touched.

A NIfTI file is trusted only as far as its header makes sense. ``validate_header`` (pure: a header in,
a ``VoxelLayout`` or a ``CTInputError`` out) refuses by name what would otherwise be read silently
wrong: ``vox_offset`` inside the header (the header read as voxels), an empty, negative or non-3-D
``dim``, a datatype that is not a real number, ``sform_code``/``qform_code`` outside the NIfTI codes,
a zero, negative or NaN ``pixdim`` with no sform to replace it, a non-finite or singular affine and a
non-finite ``scl_inter``. The layout says how many bytes the voxels take, so a ``.nii.gz`` is gunzipped
up to that many bytes (+1 to see whether more follows) and no further: a gzip bomb costs what the
header declares, never what the stream would expand to.
Reference: the NIfTI-1 and NIfTI-2 standards (nifti.nimh.nih.gov, nifti1.h / nifti2.h).
"""

from __future__ import annotations

import io
import logging
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from ctlib.errors import CTInputError

HEADER_BYTES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
MAGIC = {348: (b"n+1", b"ni1"), 540: (b"n+2", b"ni2")}  # single file, pair (tolerated as nibabel does)
SINGLE_FILE_MIN_OFFSET = {348: 352, 540: 544}  # header + 4 extension-flag bytes
XFORM_CODES = range(6)  # NIFTI_XFORM_UNKNOWN (0) .. NIFTI_XFORM_TEMPLATE_OTHER (5)
MAX_VOXEL_BYTES = 16 * 2**30  # 16 GiB: far above any CT (512 x 512 x 3000 int16 is 1.5 GiB)
DEFLATE_MAX_RATIO = 1032  # deflate (RFC 1951) expands at most 1032:1 (258-byte matches in ~2 bits)
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class VoxelLayout:
    """Where the voxels lie and what they mean, from a validated header."""

    shape_xyz: tuple[int, int, int]
    dtype: np.dtype
    offset: int
    slope: float | None  # None: stored values are used as they are
    inter: float | None
    affine: np.ndarray  # voxel index (i, j, k) -> RAS mm, the header's best (sform, else qform, else pixdim)

    @property
    def count(self) -> int:
        return math.prod(self.shape_xyz)

    @property
    def end(self) -> int:
        """Bytes of file content up to the end of the voxel data."""
        return self.offset + self.count * self.dtype.itemsize

    @property
    def scaled(self) -> bool:
        return self.slope not in (None, 1.0) or self.inter not in (None, 0.0)


def read_prefix(path: Path, n_bytes: int) -> tuple[bytes | memoryview, bool]:
    """The first ``n_bytes`` of the file's content (gunzipped for ``.gz``) and whether more follows.

    A ``.gz`` file is inflated with an output bound (zlib ``max_length``: ``n_bytes + 1`` bytes in
    all), so memory stays at the file's size plus ``n_bytes`` whatever the stream would expand to.
    """
    if not path.name.endswith(".gz"):
        with open(path, "rb") as handle:
            data = handle.read(n_bytes)
            return data, bool(handle.read(1))
    try:
        parts = _gunzip(memoryview(path.read_bytes()), n_bytes + 1)
    except zlib.error as err:
        raise CTInputError(path, f"voxel data unreadable (gzip: {err})") from None
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    return (memoryview(data)[:n_bytes], True) if len(data) > n_bytes else (data, False)


def _gunzip(raw: memoryview, limit: int) -> list[bytes]:
    """Inflate gzip members in turn until ``limit`` bytes came out or the input ends.

    Input goes in pieces of ``max(64 KiB, limit)``: one call for a whole ordinary file, while a short
    read (the header) does not copy the whole file into zlib's ``unconsumed_tail``. Bytes after the
    last member that do not start another are ignored, as gzip(1) does.
    """
    step, pos, total = max(2**16, limit), 0, 0
    parts: list[bytes] = []
    stream, pending = None, raw[:0]
    while total < limit:
        if stream is None or stream.eof:
            if stream is not None:  # end of a member: another may follow
                pos -= len(stream.unused_data)
                if bytes(raw[pos : pos + len(GZIP_MAGIC)]) != GZIP_MAGIC:
                    break
            if pos >= len(raw):
                break
            stream, pending = zlib.decompressobj(wbits=31), raw[pos : pos + step]
            pos += len(pending)
        elif not pending:
            if pos >= len(raw):
                raise zlib.error("the gzip stream ends early (truncated file)")
            pending = raw[pos : pos + step]
            pos += len(pending)
        parts.append(stream.decompress(pending, limit - total))
        total += len(parts[-1])
        pending = stream.unconsumed_tail
    return parts


def parse_header(prefix: bytes | memoryview, path: Path) -> nib.Nifti1Header:
    """NIfTI-1 or NIfTI-2 header, told apart by sizeof_hdr (348 or 540) in either byte order, unchecked."""
    size = bytes(prefix[:4])
    for expected, header_class in HEADER_BYTES.items():
        if size in (expected.to_bytes(4, "little"), expected.to_bytes(4, "big")):
            if len(prefix) < expected:
                raise CTInputError(path, f"header truncated: {len(prefix)} of {expected} bytes")
            return header_class.from_fileobj(io.BytesIO(bytes(prefix[:expected])), check=False)
    raise CTInputError(path, "not a NIfTI-1 or NIfTI-2 file (unknown header size)")


def nibabel_remarks(header: nib.Nifti1Header, path: Path) -> list[str]:
    """nibabel's own header checks, run quietly: its remarks as one-line notes, its errors refused."""
    with quiet_nibabel() as notes:
        try:
            type(header).from_fileobj(io.BytesIO(header.binaryblock), check=True)
        except Exception as err:  # nibabel raises HeaderDataError and friends
            raise CTInputError(path, f"bad NIfTI header ({err})") from None
    return notes


def validate_header(header: nib.Nifti1Header, path: Path) -> VoxelLayout:
    """Refuse a header that cannot describe a CT volume in a single ``.nii`` file; else its layout.

    Checks, in order: ``dim[0]`` (1-7; nibabel takes the byte order from it), magic, ``dim`` (every
    extent >= 1, 3-D or 4-D with one frame), datatype (integer or float, at most 8 bytes),
    ``vox_offset`` (a whole number past the header), the declared size (at most ``MAX_VOXEL_BYTES``),
    scaling, and the geometry (``_affine``).
    """
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7:  # nibabel reads such a header in the other byte order: name both
        low, high = sorted((dim[0], int(np.array(dim[0], dtype="<i2").byteswap())))
        raise CTInputError(
            path,
            f"bad NIfTI header: dim[0] = {low} (or {high} in the other byte order); "
            "the number of dimensions must be 1-7",
        )
    sizeof = int(header["sizeof_hdr"])
    if sizeof not in MAGIC:
        raise CTInputError(path, f"bad NIfTI header: sizeof_hdr {sizeof} (348 for NIfTI-1, 540 for NIfTI-2)")
    magic = bytes(header["magic"])[:3]
    if magic not in MAGIC[sizeof]:
        raise CTInputError(path, f"bad NIfTI header (magic string {magic!r} is not {MAGIC[sizeof][0]!r})")
    extents = dim[1 : dim[0] + 1]
    if min(extents) < 1:
        raise CTInputError(path, f"bad NIfTI header: dim = {extents} (every extent must be at least 1)")
    shape = extents[:3] if len(extents) == 4 and extents[3] == 1 else extents
    if len(shape) != 3:
        raise CTInputError(path, f"expected a 3-D volume, found shape {tuple(extents)}")
    try:
        dtype = header.get_data_dtype()
    except Exception as err:  # unknown datatype code
        raise CTInputError(path, f"bad NIfTI header: datatype ({err})") from None
    if dtype.kind not in "iuf" or dtype.itemsize > 8:
        raise CTInputError(path, f"bad NIfTI header: datatype {dtype} is not a scalar number type")
    offset = float(header["vox_offset"])
    minimum = SINGLE_FILE_MIN_OFFSET[sizeof]
    if not math.isfinite(offset) or offset != int(offset) or offset < minimum:
        raise CTInputError(
            path,
            f"bad NIfTI header: vox_offset {offset:g} lies inside the header or is not a byte position "
            f"(a whole number, at least {minimum})",
        )
    n_bytes = math.prod(shape) * dtype.itemsize
    if n_bytes > MAX_VOXEL_BYTES:
        raise CTInputError(
            path,
            f"bad NIfTI header: dim {tuple(shape)} declares {n_bytes / 2**30:.1f} GiB of voxels "
            f"(more than the {MAX_VOXEL_BYTES // 2**30} GiB a CT volume can take)",
        )
    try:
        slope, inter = header.get_slope_inter()  # slope 0, NaN or infinite: unscaled (NIfTI-1)
    except HeaderDataError as err:
        raise CTInputError(path, f"bad NIfTI header: scaling ({err})") from None
    return VoxelLayout(
        shape_xyz=(shape[0], shape[1], shape[2]),
        dtype=dtype,
        offset=int(offset),
        slope=None if slope is None else float(slope),
        inter=None if inter is None else float(inter),
        affine=_affine(header, path),
    )


def _affine(header: nib.Nifti1Header, path: Path) -> np.ndarray:
    """The header's best index -> RAS affine (sform, else qform, else pixdim), finite and invertible.

    Without an sform the spacing is ``pixdim[1:4]``, which must then be positive. A qform's
    ``pixdim[0]`` (qfac) of 0 is read as 1, as nibabel and the old reader did.
    """
    codes = {name: int(header[name]) for name in ("sform_code", "qform_code")}
    for name, code in codes.items():
        if code not in XFORM_CODES:
            raise CTInputError(path, f"bad NIfTI header: {name} {code} is not a NIfTI xform code (0-5)")
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)
    if codes["sform_code"] == 0 and not (np.all(np.isfinite(pixdim[1:4])) and np.all(pixdim[1:4] > 0)):
        raise CTInputError(
            path,
            f"bad NIfTI header: pixdim {pixdim[1:4].round(6).tolist()} is not a voxel size and there is "
            "no sform (spacing would be guessed)",
        )
    which = "sform" if codes["sform_code"] else "qform" if codes["qform_code"] else "pixdim"
    if which == "qform" and pixdim[0] not in (-1.0, 0.0, 1.0):
        raise CTInputError(path, f"bad NIfTI header: qfac pixdim[0] = {pixdim[0]:g} (must be 1 or -1)")
    if which == "qform" and pixdim[0] == 0:
        header = header.copy()
        header["pixdim"] = np.r_[1.0, pixdim[1:]]
    try:
        with quiet_nibabel(), np.errstate(all="ignore"):
            affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except (ValueError, HeaderDataError) as err:  # a qform quaternion of norm above 1
        raise CTInputError(path, f"bad NIfTI header: the {which} is unusable ({err})") from None
    with np.errstate(all="ignore"):
        usable = np.all(np.isfinite(affine)) and abs(np.linalg.det(affine[:3, :3])) > 1e-12
    if not usable:
        raise CTInputError(path, f"bad NIfTI header: the {which} affine is not finite and invertible")
    return affine


class quiet_nibabel:  # noqa: N801 - used like a function: ``with quiet_nibabel() as notes``
    """Keep nibabel's header warnings and log lines off stderr; collect them as one-line notes.

    nibabel logs header remarks to ``nibabel.global``, which has its own stderr handler: the handlers
    are swapped for a collecting one while inside, and put back on the way out.
    """

    def __enter__(self) -> list[str]:
        self.notes: list[str] = []
        self._warnings = warnings.catch_warnings(record=True)
        self._caught = self._warnings.__enter__()
        warnings.simplefilter("always")
        self._logger = nib.imageglobals.logger
        self._saved = (self._logger.handlers[:], self._logger.propagate)
        self._logger.handlers = [_ListHandler(self.notes)]
        self._logger.propagate = False
        return self.notes

    def __exit__(self, *exc: object) -> None:
        self._logger.handlers, self._logger.propagate = self._saved
        self.notes.extend(" ".join(str(w.message).split()) for w in self._caught)
        self._warnings.__exit__(*exc)


class _ListHandler(logging.Handler):
    def __init__(self, notes: list[str]) -> None:
        super().__init__(level=logging.DEBUG)
        self._notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        self._notes.append(" ".join(record.getMessage().split()))
