"""Catalog discovery, the volume cache, splits with held-out and same-patient rules, thick/thin pairs."""

from __future__ import annotations

import numpy as np
import pytest

from ctlib.data import cache, catalog, phantom, splits
from ctlib.errors import CTInputError
from ctlib.io import dicom_write, nifti
from ctlib.io.volume import Volume
from ctlib.studies.interp import preprocess


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """A small data folder: a DICOM series, two NIfTI CTs (one of them a crop), a label map, a broken file."""
    root = tmp_path_factory.mktemp("data")
    volume = phantom.ct_phantom(shape=(24, 48, 48), seed=3)
    dicom_write.write_dicom_series(volume, root / "scanner" / "series_a")
    nifti.write_nifti(phantom.ct_phantom(shape=(24, 48, 48), seed=4), root / "nifti" / "case_b.nii.gz")
    nifti.write_nifti(phantom.ct_phantom(shape=(12, 48, 48), seed=4), root / "nifti" / "case_b_crop.nii.gz")
    nifti.write_nifti(
        Volume(np.zeros((24, 48, 48)), spacing=(2.5, 1.5, 1.5)), root / "nifti" / "case_b_seg.nii.gz"
    )
    (root / "nifti" / "broken.nii.gz").write_bytes(b"not nifti")
    return root


def test_discover_finds_each_format_and_skips_label_maps(data_folder):
    sources = catalog.discover(data_folder)
    assert [(s.volume_id, s.format) for s in sources] == [
        ("nifti__broken", "nifti"),
        ("nifti__case_b", "nifti"),
        ("nifti__case_b_crop", "nifti"),
        ("scanner__series_a", "dicom"),
    ]
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        catalog.discover(data_folder / "nope")


def test_select_caps_each_group():
    sources = [
        catalog.VolumeSource(f"v{i}", f"p{i}", "nifti", "x", "train" if i % 2 else "test") for i in range(6)
    ]
    kept = catalog.select(sources, max_per_group=2)
    assert [s.volume_id for s in kept] == ["v0", "v1", "v2", "v3"]
    assert catalog.select(sources, max_per_group=0) == sources


def test_cache_round_trip_keeps_geometry(tmp_path):
    volume = phantom.ct_phantom(shape=(10, 32, 32), seed=1)
    volume = volume.with_array(volume.array, origin=(3.0, -4.0, 50.0), direction=np.diag([1.0, -1.0, -1.0]),
                               slice_thickness_mm=3.0)
    back = cache.load_volume(cache.save_volume(volume, tmp_path / "v.npz"))
    np.testing.assert_array_equal(back.array, np.rint(volume.array))
    assert back.spacing == volume.spacing and back.origin == volume.origin and back.slice_thickness_mm == 3.0
    np.testing.assert_array_equal(back.direction, volume.direction)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(CTInputError, match="bad.npz"):
        cache.load_volume(tmp_path / "bad.npz")


def test_downsample_inplane_geometry():
    volume = Volume(np.arange(2 * 8 * 6, dtype=np.float32).reshape(2, 8, 6), spacing=(3.0, 0.5, 0.5))
    small = cache.downsample_inplane(volume, max_size=4)
    assert small.shape == (2, 4, 3) and small.spacing == (3.0, 1.0, 1.0)
    assert small.array[0, 0, 0] == pytest.approx(volume.array[0, :2, :2].mean())
    # The new voxel [0, 0, 0] sits at the centre of the 2x2 block it averages.
    assert small.origin == pytest.approx((0.25, 0.25, 0.0))
    assert cache.downsample_inplane(volume, max_size=0) is volume


def test_cache_splits_and_pairs(data_folder, tmp_path):
    sources = catalog.discover(data_folder)
    manifest = preprocess.cache_volumes(sources, tmp_path, progress=False)
    refused = manifest[manifest["status"] == "refused"]
    assert list(refused["volume_id"]) == ["nifti__broken"]
    assert "broken.nii.gz" in refused["error"].iloc[0]
    manifest = preprocess.assign_splits(
        manifest, fractions={"train": 0.5, "test": 0.5}, seed=0,
        held_out_patterns=["scanner__*"], same_patient_patterns=["nifti__case_b*"],
    )
    split = dict(zip(manifest["volume_id"], manifest["split"], strict=True))
    assert split["scanner__series_a"] == "test"
    assert split["nifti__case_b"] == split["nifti__case_b_crop"] != ""
    assert split["nifti__broken"] == ""
    splits.check_no_leak(manifest[manifest["status"] == "cached"])

    pairs = preprocess.build_pairs(manifest, tmp_path, factors=[2, 6], progress=False)
    built = pairs[pairs["status"] == "built"]
    skipped = pairs[pairs["status"] == "skipped"]
    # Even the 12-slice crop gives an x6 pair (two thick slices).
    assert set(built["factor"]) == {2, 6} and skipped.empty
    row = built[(built["volume_id"] == "nifti__case_b") & (built["factor"] == 6)].iloc[0]
    assert row["n_thick"] == 4 and row["n_thin"] == 24 and row["thick_spacing_mm"] == pytest.approx(15.0)
    thick = cache.load_volume(tmp_path / row["thick_file"])
    assert thick.shape[0] == 4 and thick.slice_thickness_mm == pytest.approx(15.0)
    # Interpolating every other slice is easier than every sixth.
    x2 = built[built["factor"] == 2]["linear_psnr_db"].mean()
    x6 = built[built["factor"] == 6]["linear_psnr_db"].mean()
    assert 20 < x6 < x2 < 80

    metrics = preprocess.summary_metrics(manifest, pairs)
    assert metrics["n_volumes"] == 3 and metrics["n_refused"] == 1
    assert metrics["x2_linear_psnr_db"] == pytest.approx(x2, abs=1e-3)


def test_too_short_volume_is_skipped_not_fatal(tmp_path):
    source = catalog.VolumeSource("short", "short", "phantom", "phantom:chest:0")
    manifest = preprocess.cache_volumes([source], tmp_path, progress=False)
    manifest = preprocess.assign_splits(manifest, fractions={"train": 1.0}, seed=0)
    pairs = preprocess.build_pairs(manifest, tmp_path, factors=[100], progress=False)
    assert list(pairs["status"]) == ["skipped"] and pairs["error"].iloc[0]


def test_embedded_set_has_the_real_chest_ct():
    sources = catalog.embedded(2)
    assert [s.format for s in sources] == ["phantom", "phantom", "nifti"]
    chest = sources[-1].load()
    assert chest.shape == (133, 512, 512)
    assert chest.spacing == pytest.approx((2.5, 0.703125, 0.703125), abs=1e-3)
