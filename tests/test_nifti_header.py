"""NIfTI header validation and bounded reading (issue 11): each case failed before the validator.

Files are written by nibabel and then one header field is changed, as a broken writer would leave it.
"""

from __future__ import annotations

import gzip
import io
import tracemalloc
import warnings
import zlib

import nibabel as nib
import numpy as np
import pytest

from ctlib.errors import CTInputError
from ctlib.io import nifti, nifti_header


def _write(path, *, data=None, affine=None, sform=True, **fields):
    """A small valid int16 NIfTI-1 file, then ``fields`` set in its header as given."""
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) if data is None else data
    if sform:
        img = nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.5, 1.0]) if affine is None else affine)
    else:  # no sform, no qform: pixdim alone gives the spacing
        img = nib.Nifti1Image(data, None)
        img.header.set_zooms((0.8, 0.9, 2.5))
    raw = bytearray(img.to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])), check=False)
    for key, value in fields.items():
        header[key] = value
    raw[:348] = header.binaryblock
    content = gzip.compress(bytes(raw)) if str(path).endswith(".gz") else bytes(raw)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("fields", "sform", "message"),
    [
        ({"vox_offset": 0}, True, r"vox_offset 0 lies inside the header"),
        ({"vox_offset": 100}, True, r"vox_offset 100 lies inside the header"),
        ({"dim": [3, 4, -5, 6, 1, 1, 1, 1]}, True, r"dim = \[4, -5, 6\]"),
        ({"dim": [3, 4, 0, 6, 1, 1, 1, 1]}, True, r"every extent must be at least 1"),
        ({"dim": [0, 4, 5, 6, 1, 1, 1, 1]}, True, r"dim\[0\] = 0"),
        ({"dim": [9, 4, 5, 6, 1, 1, 1, 1]}, True, r"dim\[0\] = 9 \(or 2304 in the other byte order\)"),
        ({"dim": [3, 30000, 30000, 30000, 1, 1, 1, 1]}, True, r"GiB of voxels"),
        (
            {"pixdim": [1, 0, 0.9, 2.5, 1, 1, 1, 1]},
            False,
            r"pixdim \[0\.0, 0\.9, 2\.5\] is not a voxel size and there is no sform",
        ),
        ({"pixdim": [1, 0.8, -0.9, 2.5, 1, 1, 1, 1]}, False, r"pixdim .* is not a voxel size"),
        ({"pixdim": [1, 0.8, np.nan, 2.5, 1, 1, 1, 1]}, False, r"pixdim .* is not a voxel size"),
        ({"srow_x": [0, 0, 0, 0]}, True, r"the sform affine is not finite and invertible"),
        ({"datatype": 32}, True, r"datatype complex64 is not a scalar number type"),
        # Cases below escaped as nibabel's own exception types or were read silently wrong.
        ({"vox_offset": np.nan}, True, r"vox_offset nan lies inside the header or is not a byte position"),
        ({"vox_offset": np.inf}, True, r"vox_offset inf lies inside the header or is not a byte position"),
        ({"vox_offset": 352.5}, True, r"vox_offset 352\.5 .*a whole number"),
        ({"scl_slope": 2.0, "scl_inter": np.nan}, True, r"scaling \(Valid slope but invalid intercept nan\)"),
        ({"scl_slope": 2.0, "scl_inter": np.inf}, True, r"scaling \(Valid slope but invalid intercept inf\)"),
        ({"sform_code": 300}, True, r"sform_code 300 is not a NIfTI xform code \(0-5\)"),
        ({"qform_code": -1}, True, r"qform_code -1 is not a NIfTI xform code"),
        ({"magic": b"xyz"}, True, r"magic string b'xyz' is not b'n\+1'"),
        ({"sform_code": 0, "qform_code": 1, "quatern_b": 2.0}, True, r"the qform is unusable \(w2 should be"),
        (
            {"sform_code": 0, "qform_code": 1, "pixdim": [-2, 1, 1, 1, 1, 1, 1, 1]},
            True,
            r"qfac pixdim\[0\] = -2",
        ),
        ({"sform_code": 0, "qform_code": 1, "qoffset_x": np.inf}, True, r"the qform affine is not finite"),
    ],
)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_bad_headers_are_refused_by_name(tmp_path, fields, sform, message, suffix):
    path = _write(tmp_path / f"bad{suffix}", sform=sform, **fields)
    with pytest.raises(CTInputError, match=rf"bad\.nii(\.gz)?: .*{message}"):
        nifti.read_nifti(path)
    with pytest.raises(CTInputError, match=message):
        nifti.read_nifti_labels(path)


def test_zero_pixdim_is_fine_when_an_sform_gives_the_geometry(tmp_path):
    path = _write(tmp_path / "sform.nii", pixdim=[1, 0, 0, 0, 1, 1, 1, 1])
    volume = nifti.read_nifti(path)
    assert volume.spacing == pytest.approx((2.5, 0.9, 0.8))


@pytest.mark.parametrize(
    ("fields", "remark"),
    [
        ({"pixdim": [1, 0, 0, 0, 1, 1, 1, 1]}, "pixdim"),  # zero pixdim beside an sform
        ({"pixdim": [1, -0.8, 0.9, 2.5, 1, 1, 1, 1]}, "pixdim"),  # negative pixdim beside an sform
    ],
)
def test_header_remarks_stay_off_stderr_and_go_to_meta(tmp_path, capfd, monkeypatch, fields, remark):
    """nibabel logs remarks such as 'pixdim[1,2,3] should be positive; setting to abs of pixdim values'
    through a stderr handler of its own, made at import. That handler's stream is replaced here, so the
    test sees what it would print whatever pytest does with sys.stderr; before the fix it printed the
    remark (only the logger's propagation was turned off, not its own handler)."""
    printed = io.StringIO()
    for handler in nib.imageglobals.logger.handlers:
        monkeypatch.setattr(handler, "stream", printed)
    path = _write(tmp_path / "remark.nii", **fields)
    volume = nifti.read_nifti(path)
    labels = nifti.read_nifti_labels(path)
    captured = capfd.readouterr()
    assert printed.getvalue() == "" and captured.err == "" and captured.out == ""
    assert any(remark in note for note in volume.meta["header_notes"])
    assert labels.shape == volume.shape == (6, 5, 4)


def _padded(raw: bytes, mib: int, *, members: bool) -> bytes:
    """``raw`` then ``mib`` MiB of zeros, gzipped: one stream, or (fast to make) one member per MiB."""
    if members:
        return gzip.compress(raw, mtime=0) + gzip.compress(bytes(2**20), mtime=0) * mib
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(raw)] + [compressor.compress(bytes(2**24)) for _ in range(mib // 16)]
    return b"".join([*parts, compressor.flush()])


@pytest.mark.parametrize("members", [False, True])
def test_gzip_bomb_is_refused_without_inflating_the_padding(tmp_path, members):
    """A small volume with 192 MiB of zeros after it in the gzip stream: refused, memory stays bounded.

    Before: the whole stream was inflated (2.1 GB for 1 GiB of padding) and the volume read. Python-level
    allocations (zlib output, bytearrays, numpy) are measured with tracemalloc: the peak must stay far
    below the padding (the reader keeps at most the declared bytes plus one 16 MiB inflate step).
    """
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(_padded(_write(tmp_path / "plain.nii").read_bytes(), 192, members=members))
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(
            CTInputError, match=r"bomb\.nii\.gz: data after the 120 voxels the header declares"
        ):
            nifti.read_nifti(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"reading the bomb allocated {peak / 2**20:.0f} MiB"


def test_trailing_bytes_after_the_voxels_are_refused(tmp_path):
    """An uncompressed file longer than its header declares (dim or datatype wrong): before, read as is."""
    raw = _write(tmp_path / "v.nii").read_bytes()
    (tmp_path / "long.nii").write_bytes(raw + bytes(1000))
    with pytest.raises(CTInputError, match=r"long\.nii: 1000 bytes after the 120 voxels"):
        nifti.read_nifti(tmp_path / "long.nii")
    with pytest.raises(CTInputError, match=r"long\.nii: 1000 bytes after"):
        nifti.read_nifti_labels(tmp_path / "long.nii")
    (tmp_path / "pad.nii.gz").write_bytes(gzip.compress(raw) + bytes(512))  # not a gzip member: ignored
    assert nifti.read_nifti(tmp_path / "pad.nii.gz").shape == (6, 5, 4)


def test_declared_size_a_gzip_file_cannot_hold_is_refused_before_inflating(tmp_path):
    """dim 2048^3 int8 (8 GiB) in a 1 kB .nii.gz: deflate cannot expand that far (1032:1), so refused
    up front. Before: the stream was inflated and then reported as truncated."""
    path = _write(tmp_path / "huge.nii.gz", datatype=256, bitpix=8, dim=[3, 2048, 2048, 2048, 1, 1, 1, 1])
    with pytest.raises(CTInputError, match=r"huge\.nii\.gz: the header declares 8589934944 bytes, more than"):
        nifti.read_nifti(path)


def test_qform_only_with_qfac_zero_reads_as_before(tmp_path):
    """pixdim[0] = 0 with only a qform is common; NIfTI reads qfac 0 as 1. Before: nibabel's
    HeaderDataError ('qfac (pixdim[0]) should be 1 or -1') escaped the validated reader."""
    path = _write(tmp_path / "q.nii", sform_code=0, qform_code=1, pixdim=[0, 0.8, 0.9, 2.5, 1, 1, 1, 1])
    volume = nifti.read_nifti(path)
    assert volume.spacing == pytest.approx((2.5, 0.9, 0.8))
    assert nifti.read_nifti_labels(path).shape == (6, 5, 4)


def test_overflowing_scale_is_refused_quietly(tmp_path):
    """scl_slope 1e38 on int16 overflows float32: read_nifti refuses the infinite voxels (before: only
    float files were checked, int16 ones came back as inf with a RuntimeWarning) and label maps refuse
    values beyond int32 (before: astype wrapped them to garbage labels)."""
    path = _write(tmp_path / "big.nii", scl_slope=1e38)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CTInputError, match=r"big\.nii: \d+ voxels are NaN or infinite"):
            nifti.read_nifti(path)
        with pytest.raises(CTInputError, match=r"big\.nii: label map holds values outside the int32 range"):
            nifti.read_nifti_labels(path)


def test_truncated_and_multi_member_gzip(tmp_path):
    raw = _write(tmp_path / "plain.nii").read_bytes()
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:200]) + gzip.compress(raw[200:]))
    assert nifti.read_nifti(tmp_path / "two.nii.gz").shape == (6, 5, 4)
    whole = gzip.compress(raw)
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CTInputError, match=r"cut\.nii\.gz: voxel data (unreadable|truncated)"):
        nifti.read_nifti(tmp_path / "cut.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_label_maps_come_back_writable(tmp_path, suffix):
    """Callers edit label maps in place (as nibabel's arrays allowed); a read-only view of the file's bytes
    raised 'assignment destination is read-only'."""
    labels = nifti.read_nifti_labels(_write(tmp_path / f"seg{suffix}"))
    labels[0, 0, 0] = 7
    assert labels.flags.c_contiguous and labels.dtype == np.int16 and labels[0, 0, 0] == 7


def test_validate_header_returns_the_voxel_layout(tmp_path):
    raw = _write(tmp_path / "v.nii").read_bytes()
    header = nifti_header.parse_header(raw, tmp_path / "v.nii")
    layout = nifti_header.validate_header(header, tmp_path / "v.nii")
    assert layout.end == 352 + 4 * 5 * 6 * 2 == len(raw)
    assert layout.shape_xyz == (4, 5, 6) and layout.dtype == np.int16 and not layout.scaled
    assert np.allclose(layout.affine, np.diag([0.8, 0.9, 2.5, 1.0]))
    assert nifti_header.nibabel_remarks(header, tmp_path / "v.nii") == []
