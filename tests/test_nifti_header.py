"""NIfTI header validation and bounded reading (issue 11): each case failed before the validator.

Files are written by nibabel and then one header field is changed, as a broken writer would leave it.
"""

from __future__ import annotations

import gzip
import resource
import subprocess
import sys
import zlib

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    header = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(bytes(raw[:348])), check=False)
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


def test_header_remarks_stay_off_stderr_and_go_to_meta(tmp_path, capfd):
    """nibabel logs 'pixdim[1,2,3] should be non-zero; setting 0 dims to 1' to stderr for this file."""
    path = _write(tmp_path / "zero.nii", pixdim=[1, 0, 0, 0, 1, 1, 1, 1])
    volume = nifti.read_nifti(path)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert any("pixdim" in note for note in volume.meta["header_notes"])


def test_gzip_bomb_is_read_only_as_far_as_the_header_says(tmp_path):
    """A small volume with 256 MiB of zeros appended inside the gzip stream: memory stays bounded.

    Before: the whole stream was inflated (2.1 GB for 1 GiB of padding).
    """
    raw = _write(tmp_path / "plain.nii").read_bytes()
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(raw)]
    zeros = bytes(2**20)
    parts += [compressor.compress(zeros) for _ in range(256)]
    parts.append(compressor.flush())
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(b"".join(parts))
    assert bomb.stat().st_size < 2**20
    code = (
        "import resource, sys; from ctlib.io.nifti import read_nifti; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"v = read_nifti({str(bomb)!r}); "
        "print(v.shape, v.meta['header_notes'], "
        "(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    shape, _, grown_mb = out.rpartition(" ")
    assert "(6, 5, 4)" in shape and "not read" in shape
    assert int(grown_mb) < 64, f"reading the bomb grew the process by {grown_mb} MB"
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 2**20  # KiB: under 1 GiB


def test_truncated_and_multi_member_gzip(tmp_path):
    raw = _write(tmp_path / "plain.nii").read_bytes()
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:200]) + gzip.compress(raw[200:]))
    assert nifti.read_nifti(tmp_path / "two.nii.gz").shape == (6, 5, 4)
    whole = gzip.compress(raw)
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CTInputError, match=r"cut\.nii\.gz: voxel data (unreadable|truncated)"):
        nifti.read_nifti(tmp_path / "cut.nii.gz")


# ------------------------------------------------------------------------------ properties
_FIELD_VALUES = {
    "vox_offset": st.sampled_from([0, 1, 100, 348, 351, 352, 356, 400]),
    "dim": st.lists(st.integers(-3, 8), min_size=8, max_size=8),
    "pixdim": st.lists(
        st.sampled_from([0.0, -1.0, 0.5, 1.0, 2.5, float("nan"), float("inf")]), min_size=8, max_size=8
    ),
    "datatype": st.sampled_from([2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1536, 99]),
    "sform_code": st.integers(0, 5),
    "qform_code": st.integers(0, 5),
    "scl_slope": st.sampled_from([0.0, 1.0, 2.0, float("nan")]),
}


@settings(max_examples=120, deadline=None)
@given(
    st.dictionaries(st.sampled_from(sorted(_FIELD_VALUES)), st.integers(0, 0), min_size=1).flatmap(
        lambda keys: st.fixed_dictionaries({key: _FIELD_VALUES[key] for key in keys})
    )
)
def test_header_validator_accepts_consistently_or_refuses_by_name(tmp_path_factory, fields):
    """Any header field values: a volume consistent with the header, or a CTInputError naming the file."""
    path = tmp_path_factory.mktemp("prop") / "case.nii"
    _write(path, **fields)
    try:
        volume = nifti.read_nifti(path)
    except CTInputError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
        return
    header = nib.Nifti1Header.from_fileobj(open(path, "rb"), check=False)
    assert volume.shape == tuple(int(d) for d in header.get_data_shape()[:3])[::-1]
    assert all(s > 0 for s in volume.spacing) and np.all(np.isfinite(volume.array))
    assert int(header["vox_offset"]) >= 352


def test_validate_header_returns_the_bytes_to_read(tmp_path):
    raw = _write(tmp_path / "v.nii").read_bytes()
    header = nifti_header.parse_header(raw, tmp_path / "v.nii")
    assert nifti_header.validate_header(header, tmp_path / "v.nii") == 352 + 4 * 5 * 6 * 2 == len(raw)
    assert nifti_header.nibabel_remarks(header, tmp_path / "v.nii") == []
