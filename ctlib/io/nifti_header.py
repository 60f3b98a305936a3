"""NIfTI-1/2 headers: bounded reading and validation before any voxel is touched.

A NIfTI file is trusted only as far as its header makes sense: the header says how many bytes the
voxels take (``vox_offset + prod(dim) * bitpix / 8``), so a ``.nii.gz`` is gunzipped up to that many
bytes and no further (a gzip bomb padded with zeros costs what the header declares, not what the
stream holds), and a header that would read itself as voxels (``vox_offset`` inside the header), an
empty or negative ``dim``, or a zero ``pixdim`` with no sform to replace it is refused by name.
Reference: the NIfTI-1 and NIfTI-2 standards (nifti.nimh.nih.gov, nifti1.h / nifti2.h).
"""

from __future__ import annotations

import io
import logging
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ctlib.errors import CTInputError

HEADER_BYTES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
SINGLE_FILE_MIN_OFFSET = {348: 352, 540: 544}  # header + 4 extension-flag bytes
MAX_VOXEL_BYTES = 16 * 2**30  # 16 GiB: far above any CT (512 x 512 x 3000 int16 is 1.5 GiB)
_CHUNK = 4 * 2**20


def read_prefix(path: Path, n_bytes: int) -> tuple[bytes, bool]:
    """The first ``n_bytes`` of the file's content (gunzipped for ``.gz``) and whether more follows.

    A ``.gz`` file is decompressed chunk by chunk with an output bound, so memory stays at
    ``n_bytes`` whatever the stream would expand to; several gzip members are read in turn.
    """
    if not path.name.endswith(".gz"):
        with open(path, "rb") as handle:
            data = handle.read(n_bytes)
            return data, bool(handle.read(1))
    out = bytearray()
    stream = zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as handle:
            pending = handle.read(_CHUNK)
            while pending:
                # one byte more than asked tells whether more follows
                out += stream.decompress(pending, n_bytes + 1 - len(out))
                if len(out) > n_bytes:
                    return bytes(out[:n_bytes]), True
                pending = stream.unconsumed_tail
                if stream.eof:  # end of a gzip member: another may follow
                    pending = stream.unused_data or handle.read(_CHUNK)
                    if not pending.startswith(b"\x1f\x8b"):
                        break  # the end, or trailing bytes that gzip tools ignore too
                    stream = zlib.decompressobj(wbits=31)
                elif not pending:
                    pending = handle.read(_CHUNK)
                    if not pending:
                        raise zlib.error("the gzip stream ends early (truncated file)")
    except zlib.error as err:
        raise CTInputError(path, f"voxel data unreadable (gzip: {err})") from None
    return bytes(out), False


def parse_header(prefix: bytes, path: Path) -> nib.Nifti1Header:
    """NIfTI-1 or NIfTI-2 header, told apart by sizeof_hdr (348 or 540) in either byte order, unchecked."""
    size = prefix[:4]
    for expected, header_class in HEADER_BYTES.items():
        if size in (expected.to_bytes(4, "little"), expected.to_bytes(4, "big")):
            if len(prefix) < expected:
                raise CTInputError(path, f"header truncated: {len(prefix)} of {expected} bytes")
            return header_class.from_fileobj(io.BytesIO(prefix[:expected]), check=False)
    raise CTInputError(path, "not a NIfTI-1 or NIfTI-2 file (unknown header size)")


def nibabel_remarks(header: nib.Nifti1Header, path: Path) -> list[str]:
    """nibabel's own header checks, run quietly: its remarks as one-line notes, its errors refused."""
    with quiet_nibabel() as notes:
        try:
            type(header).from_fileobj(io.BytesIO(header.binaryblock), check=True)
        except Exception as err:  # nibabel raises HeaderDataError and friends
            raise CTInputError(path, f"bad NIfTI header ({err})") from None
    return notes


def validate_header(header: nib.Nifti1Header, path: Path) -> int:
    """Refuse a header that cannot describe a CT volume; returns the bytes the voxels take.

    Checks ``dim`` (1-7 dimensions, every extent >= 1, a 3-D volume or 4-D with one frame), the
    datatype, ``vox_offset`` (past the header in a single file), the declared size (at most
    ``MAX_VOXEL_BYTES``) and the spacing: ``pixdim[1:4]`` finite and positive unless an sform gives
    the geometry, and the chosen affine finite and invertible.
    """
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7:  # nibabel reads such a header in the other byte order: name both
        low, high = sorted((dim[0], int(np.array(dim[0], dtype="<i2").byteswap())))
        raise CTInputError(
            path,
            f"bad NIfTI header: dim[0] = {low} (or {high} in the other byte order); "
            "the number of dimensions must be 1-7",
        )
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
    offset = int(header["vox_offset"])
    sizeof = int(header["sizeof_hdr"])
    single_file = bytes(header["magic"]).startswith((b"n+1", b"n+2"))
    minimum = SINGLE_FILE_MIN_OFFSET.get(sizeof, sizeof) if single_file else 0
    if offset < minimum:
        raise CTInputError(
            path, f"bad NIfTI header: vox_offset {offset} lies inside the header (at least {minimum})"
        )
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if n_bytes > MAX_VOXEL_BYTES:
        raise CTInputError(
            path,
            f"bad NIfTI header: dim {tuple(shape)} declares {n_bytes / 2**30:.1f} GiB of voxels "
            f"(more than the {MAX_VOXEL_BYTES // 2**30} GiB a CT volume can take)",
        )
    _check_geometry(header, path)
    return offset + n_bytes


def _check_geometry(header: nib.Nifti1Header, path: Path) -> None:
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64).round(6)
    sform_code = int(header["sform_code"])
    if sform_code == 0 and not (np.all(np.isfinite(pixdim)) and np.all(pixdim > 0)):
        raise CTInputError(
            path,
            f"bad NIfTI header: pixdim {pixdim.tolist()} is not a voxel size and there is no sform "
            "(spacing would be guessed)",
        )
    with quiet_nibabel():
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        which = "sform" if sform_code else "qform" if int(header["qform_code"]) else "pixdim"
        raise CTInputError(path, f"bad NIfTI header: the {which} affine is not finite and invertible")


class quiet_nibabel:  # noqa: N801 - used like a function: ``with quiet_nibabel() as notes``
    """Keep nibabel's header warnings and log lines off stderr; collect them as one-line notes."""

    def __enter__(self) -> list[str]:
        self.notes: list[str] = []
        self._warnings = warnings.catch_warnings(record=True)
        self._caught = self._warnings.__enter__()
        warnings.simplefilter("always")
        self._logger = logging.getLogger("nibabel.global")
        self._handler = _ListHandler(self.notes)
        self._propagate = self._logger.propagate
        self._logger.addHandler(self._handler)
        self._logger.propagate = False
        self._level = nib.imageglobals.logger.level
        return self.notes

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.propagate = self._propagate
        self.notes.extend(" ".join(str(w.message).split()) for w in self._caught)
        self._warnings.__exit__(*exc)


class _ListHandler(logging.Handler):
    def __init__(self, notes: list[str]) -> None:
        super().__init__(level=logging.DEBUG)
        self._notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        self._notes.append(" ".join(record.getMessage().split()))
