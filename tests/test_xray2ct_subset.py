"""bench/xray2ct_subset.py: the device subset keeps the body box (the cube's centre) and voxel positions."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from ctlib.data import body_mask, phantom
from ctlib.io.volume import Volume
from ctlib.studies.xray2ct import fov

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture()
def subset(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # it imports device_pack, beside it
    import xray2ct_subset

    return xray2ct_subset


def _box_centres(mask: np.ndarray) -> list[float]:
    return [(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[[0, -1]].sum()) / 2
            for axis in range(3)]


def test_centred_window_is_symmetric_about_the_body_box(subset):
    mask = np.zeros((40, 30, 30), dtype=bool)
    mask[3:38, 10:22, 5:14] = True  # box centres (20, 15.5, 9) voxels: y falls between two voxels
    window = subset.centred_window(mask, (1.0, 2.0, 2.0), half_mm=6.0)
    assert window[0] == slice(14, 27)  # 20 +- 6 voxels of 1 mm
    assert window[1] == slice(12, 20)  # 15.5 +- 3.5 voxels of 2 mm (at least 3, ends on voxels)
    assert window[2] == slice(6, 13)  # 9 +- 3
    for axis, cut in enumerate(window):
        assert (cut.start + cut.stop - 1) / 2 == _box_centres(mask)[axis]


def test_silhouette_outside_keeps_the_body_mask_and_the_cube_centre(subset):
    volume = phantom.ct_phantom(shape=(24, 64, 64), seed=1)
    hu = np.rint(volume.array)
    window = subset.centred_window(body_mask.body_mask(hu), volume.spacing, half_mm=10.0)
    kept = subset.silhouette_outside(hu, window, hu > subset.BODY_THRESHOLD_HU, 0.0, subset.AIR_HU)
    np.testing.assert_array_equal(kept[window], hu[window])
    outside = np.ones(hu.shape, dtype=bool)
    outside[window] = False
    assert set(np.unique(kept[outside])) <= {0.0, subset.AIR_HU}
    np.testing.assert_array_equal(body_mask.body_mask(kept), body_mask.body_mask(hu))
    np.testing.assert_allclose(fov.body_centre_lps(volume.with_array(kept)), fov.body_centre_lps(volume))


def test_coarsen_keeps_voxel_zero_and_reaches_the_target_spacing(subset):
    array = np.arange(10 * 16 * 24, dtype=np.float32).reshape(10, 16, 24)  # a linear ramp
    volume = Volume(array=array, spacing=(3.0, 1.0, 0.5), origin=(5.0, -2.0, 7.0))
    coarse = subset.coarsen(volume, 2.0)
    assert coarse.spacing == (3.0, 2.0, 2.0) and coarse.shape == (10, 8, 6)
    assert coarse.origin == volume.origin
    # coarse voxel (k, j, i) lies at source index (k, 2 j, 4 i); away from the edges the Gaussian leaves a
    # ramp as it is and trilinear samples it exactly
    assert coarse.array[5, 3, 3] == array[5, 6, 12]
    np.testing.assert_array_equal(coarse.array, np.rint(coarse.array))
    assert subset.coarsen(coarse, 2.0).shape == coarse.shape  # nothing finer than 2 mm left
    # nodes at source index 1.5 + 2 m: inside the voxel centres 1.5 .. 7.5; up to the voxel box -0.5 .. 9.5
    ramp = np.broadcast_to(np.arange(10.0)[:, None, None], (10, 4, 4)).copy()
    ramp = Volume(array=ramp, spacing=(1.0, 3.0, 3.0))
    assert subset.coarsen(ramp, 2.0, (0.0, 0.0, 0.0), (0.75, 0.0, 0.0)).shape == (4, 4, 4)
    edge = subset.coarsen(ramp, 2.0, (0.0, 0.0, 0.0), (0.75, 0.0, 0.0), to_box_edge=True)
    assert edge.shape == (6, 4, 4) and edge.origin[2] == pytest.approx(-0.5)  # LPS z of source index -0.5


def test_npz_with_lzma_members_reads_back_with_np_load(subset, tmp_path):
    arrays = {"ct": np.arange(1000, dtype=np.int16).reshape(10, 10, 10), "roi_names": np.array(["a", "b"])}
    subset.write_npz_lzma(tmp_path / "pt_1.npz", arrays)
    with zipfile.ZipFile(tmp_path / "pt_1.npz") as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_LZMA}
    with np.load(tmp_path / "pt_1.npz") as back:
        np.testing.assert_array_equal(back["ct"], arrays["ct"])
        assert list(back["roi_names"]) == ["a", "b"]


def test_the_device_cube_of_the_subset_is_the_full_data_cube(subset):
    from ctlib.studies.xray2ct import pairs

    original = phantom.ct_phantom(shape=(40, 96, 96), spacing_mm=(1.0, 0.7, 0.7), seed=2)
    original = original.with_array(np.rint(original.array))
    stored, notes = subset.subset_volume(original, 2.0, half_mm=24.0 + subset.WINDOW_MARGIN_MM)
    assert stored.spacing == pytest.approx((2.0, 2.0, 2.0)) and notes == []
    centre = fov.body_centre_lps(stored)
    assert np.linalg.norm(centre - fov.body_centre_lps(original)) < 2.0  # less than a voxel
    device = pairs.to_stored_hu(fov.resample_to_fov(stored, 48.0, 24).array).astype(np.float32)
    full = fov.resample_to_fov(original, 48.0, 24, centre_lps_mm=centre).array
    full = pairs.to_stored_hu(full).astype(np.float32)
    body = full > subset.BODY_THRESHOLD_HU
    assert body.mean() > 0.2
    assert np.abs(device - full)[body].max() <= 1.0  # one interpolation, as on the full data
    assert np.abs(device - full).max() <= 100.0  # the air without its noise; the edges where they were
