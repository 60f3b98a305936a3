"""Property tests (hypothesis, issue 11) of NIfTI reading and writing.

1. Round trip: for random small shapes, spacings, origins and orthonormal directions (any rotation,
   with or without a flip), ``write_nifti(dtype=int16|float32)`` then ``read_nifti`` gives the array
   exactly and the geometry to 1e-5 (relative for the origin, which NIfTI stores as float32).
2. Header validator: for random values of the header fields a broken writer can leave (NIfTI-1 and
   NIfTI-2), ``validate_header`` either accepts with a self-consistent layout, after which reading the
   file gives a consistent volume or a ``CTInputError``, or refuses with a ``CTInputError`` naming the
   file; never another exception type, never a line on stderr.
"""

from __future__ import annotations

import gzip
import io
import math
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ctlib.errors import CTInputError
from ctlib.io import nifti, nifti_header
from ctlib.io.volume import Volume

_FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ round trip
@st.composite
def _directions(draw: st.DrawFn) -> np.ndarray:
    """An orthonormal 3x3 matrix: the Q of a random matrix's QR, one axis flipped when drawn."""
    matrix = np.array(draw(st.lists(st.floats(-1, 1), min_size=9, max_size=9))).reshape(3, 3)
    if abs(np.linalg.det(matrix)) < 1e-3:
        matrix = np.eye(3)
    q, _ = np.linalg.qr(matrix)
    flip = draw(st.sampled_from([None, 0, 1, 2]))
    if flip is not None:
        q[:, flip] *= -1
    return q


@st.composite
def _volumes(draw: st.DrawFn) -> tuple[Volume, str]:
    shape = tuple(draw(st.integers(1, 5)) for _ in range(3))
    dtype = draw(st.sampled_from(["int16", "float32"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype == "int16":
        array = rng.integers(-32768, 32767, size=shape, endpoint=True).astype(np.float32)
    else:  # any finite float32, fractions and extremes included
        bits = rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32)
        array = bits.view(np.float32)
        array[~np.isfinite(array)] = -0.5
    volume = Volume(
        array=array,
        spacing=tuple(draw(st.floats(0.05, 8.0)) for _ in range(3)),
        origin=tuple(draw(st.floats(-800.0, 800.0)) for _ in range(3)),
        direction=draw(_directions()),
    )
    return volume, dtype


@_FAST
@given(_volumes(), st.sampled_from([".nii", ".nii.gz"]))
def test_write_then_read_keeps_array_exactly_and_geometry(case: tuple[Volume, str], suffix: str) -> None:
    volume, dtype = case
    with tempfile.TemporaryDirectory() as tmp:
        path = nifti.write_nifti(volume, Path(tmp) / f"v{suffix}", dtype=dtype)
        back = nifti.read_nifti(path, fill_below_air=False)
    assert back.meta["stored_dtype"] == dtype
    assert back.shape == volume.shape
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.spacing, volume.spacing, rtol=1e-5, atol=0)
    assert np.allclose(back.direction, volume.direction, atol=1e-5)
    assert np.allclose(back.origin, volume.origin, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ header validator
_ANY = [0.0, 1.0, -1.0, 0.5, 2.5, 1e-30, 1e30, math.nan, math.inf]
_FIELDS = {
    "dim": st.lists(st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 8, 30000]), min_size=8, max_size=8),
    "datatype": st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 2304, 99]),
    "vox_offset": st.sampled_from([0, 100, 348, 351, 352, 352.5, 353, 368, 400, 544, 560, -16, math.nan]),
    "pixdim": st.lists(st.sampled_from(_ANY), min_size=8, max_size=8),
    "sform_code": st.sampled_from([-1, 0, 1, 2, 4, 5, 6, 300]),
    "qform_code": st.sampled_from([-1, 0, 1, 2, 4, 5, 6, 300]),
    "quatern_b": st.sampled_from([0.0, 0.5, 1.0, 2.0, math.nan]),
    "qoffset_x": st.sampled_from(_ANY),
    "srow_x": st.lists(st.sampled_from(_ANY), min_size=4, max_size=4),
    "srow_y": st.lists(st.sampled_from(_ANY), min_size=4, max_size=4),
    "scl_slope": st.sampled_from(_ANY),
    "scl_inter": st.sampled_from(_ANY),
    "magic": st.sampled_from([b"n+1", b"ni1", b"n+2", b"ni2", b"xyz", b""]),
}


@st.composite
def _headers(draw: st.DrawFn) -> nib.Nifti1Header:
    """A valid 4 x 3 x 2 int16 header (NIfTI-1 or -2, either byte order), then some fields redrawn."""
    header_class = draw(st.sampled_from([nib.Nifti1Header, nib.Nifti2Header]))
    header = header_class(endianness=draw(st.sampled_from(["<", ">"])))
    header.set_data_shape((4, 3, 2))
    header.set_data_dtype(np.int16)
    header.set_sform(np.diag([0.7, 0.8, 2.0, 1.0]), code=1)
    header.set_qform(np.diag([0.7, 0.8, 2.0, 1.0]), code=1)
    header["vox_offset"] = nifti_header.SINGLE_FILE_MIN_OFFSET[int(header["sizeof_hdr"])]
    for name in draw(st.sets(st.sampled_from(sorted(_FIELDS)), min_size=1, max_size=4)):
        value = draw(_FIELDS[name])
        try:
            header[name] = value
        except (ValueError, OverflowError, TypeError):  # a NaN vox_offset in NIfTI-2's int64
            assume(False)
    return header


def _file_for(header: nib.Nifti1Header, layout: nifti_header.VoxelLayout, seed: int) -> bytes:
    """The header, zero bytes up to vox_offset, then random voxels of the declared type."""
    block = header.binaryblock
    voxels = np.random.default_rng(seed).integers(0, 256, size=layout.end - layout.offset, dtype=np.uint8)
    return block + bytes(layout.offset - len(block)) + voxels.tobytes()


def _refused_by_name(err: CTInputError, path: Path) -> None:
    assert str(err).startswith(f"{path}: ") and "\n" not in str(err)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("headers")


def _check(header: nib.Nifti1Header, path: Path, seed: int) -> None:
    try:
        layout = nifti_header.validate_header(header, path)
    except CTInputError as err:
        _refused_by_name(err, path)
        event("refused by the validator")
        return
    sizeof = int(header["sizeof_hdr"])
    assert layout.offset >= nifti_header.SINGLE_FILE_MIN_OFFSET[sizeof]
    assert len(layout.shape_xyz) == 3 and min(layout.shape_xyz) >= 1
    assert layout.end == layout.offset + math.prod(layout.shape_xyz) * layout.dtype.itemsize
    assert np.all(np.isfinite(layout.affine)) and abs(np.linalg.det(layout.affine[:3, :3])) > 0
    if layout.end > 2**20:  # accepted but too large to write here: the checks above still ran
        return
    raw = _file_for(header, layout, seed)
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.suffix == ".gz" else raw)
    for read in (nifti.read_nifti, nifti.read_nifti_labels):
        try:
            result = read(path)
        except CTInputError as err:  # NaN voxels, a sheared affine, non-integer labels ...
            _refused_by_name(err, path)
            event(f"{read.__name__} refused")
            continue
        event(f"{read.__name__} read")
        array = result.array if isinstance(result, Volume) else result
        assert array.shape == layout.shape_xyz[::-1]
        if isinstance(result, Volume):
            assert np.all(np.isfinite(result.array))
            assert all(math.isfinite(s) and s > 0 for s in result.spacing)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_headers(), st.integers(0, 2**32 - 1), st.sampled_from([".nii", ".nii.gz"]))
def test_validator_accepts_consistently_or_refuses_by_name(folder, header, seed, suffix):
    """Nothing reaches stderr either: nibabel's own stderr handler is pointed at a buffer meanwhile."""
    printed = io.StringIO()
    handlers = nib.imageglobals.logger.handlers
    streams = [handler.stream for handler in handlers]
    for handler in handlers:
        handler.stream = printed
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a RuntimeWarning from numpy or nibabel fails the case
            _check(header, folder / f"case{suffix}", seed)
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.stream = stream
    assert printed.getvalue() == ""
