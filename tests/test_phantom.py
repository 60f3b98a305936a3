"""Synthetic CT phantom: determinism, HU per tissue, spacing independence, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from ctlib.data import body_mask, phantom

SMALL = {"shape": (16, 48, 48), "spacing_mm": (7.5, 3.0, 3.0)}


@pytest.mark.parametrize("kind", ["chest", "head"])
def test_same_seed_same_volume_other_seed_differs(kind):
    a, labels_a, names = phantom.ct_phantom_with_labels(**SMALL, seed=5, kind=kind)
    b, labels_b, _ = phantom.ct_phantom_with_labels(**SMALL, seed=5, kind=kind)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(labels_a, labels_b)
    c, labels_c, _ = phantom.ct_phantom_with_labels(**SMALL, seed=6, kind=kind)
    assert not np.array_equal(a.array, c.array) and not np.array_equal(labels_a, labels_c)
    assert labels_a.dtype == np.uint8 and set(np.unique(labels_a)) <= set(names)
    assert a.array.dtype == np.float32 and a.shape == SMALL["shape"]
    assert a.spacing == SMALL["spacing_mm"] and a.slice_thickness_mm == 7.5


HU_RANGES = {
    "chest": {"air": (-1040, -960), "fat": (-130, -70), "soft_tissue": (20, 90), "lung": (-900, -780),
              "bone": (650, 1050), "vessel": (120, 230), "nodule": (0, 60), "table": (60, 140)},
    "head": {"air": (-1040, -960), "fat": (-110, -50), "bone": (650, 1050), "brain": (20, 50),
             "csf": (-10, 20), "vessel": (150, 230), "lesion": (45, 85)},
}


@pytest.mark.parametrize("kind", ["chest", "head"])
def test_hu_per_label_in_realistic_ranges(kind):
    volume, labels, names = phantom.ct_phantom_with_labels(shape=(32, 96, 96), spacing_mm=(2.5, 1.5, 1.5),
                                                           seed=2, kind=kind)
    assert set(names.values()) == set(HU_RANGES[kind])
    for label, name in names.items():
        core = ndimage.binary_erosion(labels == label)  # away from partial-volume edges
        assert core.sum() > 10, name
        median = float(np.median(volume.array[core]))
        low, high = HU_RANGES[kind][name]
        assert low <= median <= high, f"{kind} {name}: median {median:.0f} HU not in [{low}, {high}]"
    far_air = ndimage.binary_erosion(labels == phantom.AIR, iterations=3)
    assert 10.0 < float(np.std(volume.array[far_air])) < 14.0  # the 12 HU white noise


def test_lung_texture_and_z_variation():
    volume, labels, _ = phantom.ct_phantom_with_labels(seed=0)
    lung = ndimage.binary_erosion(labels == phantom.LUNG, iterations=2)
    assert 20.0 < float(volume.array[lung].std()) < 60.0
    vessel_area = (labels == phantom.VESSEL).sum(axis=(1, 2))
    assert vessel_area.std() > 0.05 * vessel_area.mean()  # calibres and paths change along z
    assert (labels == phantom.NODULE).any()


def test_anatomy_is_defined_in_mm():
    fine, fine_labels, _ = phantom.ct_phantom_with_labels(shape=(48, 96, 96), spacing_mm=(2.5, 1.5, 1.5))
    coarse, coarse_labels, _ = phantom.ct_phantom_with_labels(shape=(40, 72, 72), spacing_mm=(3.0, 2.0, 2.0))
    for vol in (fine, coarse):  # both grids are centred on the same point in mm
        centre = np.asarray(vol.origin) + np.asarray(vol.spacing[::-1]) * (np.array(vol.shape[::-1]) - 1) / 2
        np.testing.assert_allclose(centre, 0.0, atol=1e-9)
    volumes_ml = []
    widths_mm = []
    for vol, lab in ((fine, fine_labels), (coarse, coarse_labels)):
        voxel_ml = float(np.prod(vol.spacing)) / 1000.0
        mask = body_mask.body_mask(vol)
        volumes_ml.append(mask.sum() * voxel_ml)
        middle = mask[vol.shape[0] // 2]
        columns = np.flatnonzero(middle.any(axis=0))
        widths_mm.append((columns[-1] - columns[0] + 1) * vol.spacing[2])
        volumes_ml.append((lab == phantom.LUNG).sum() * voxel_ml)
    assert volumes_ml[0] == pytest.approx(volumes_ml[2], rel=0.03)  # body
    assert volumes_ml[1] == pytest.approx(volumes_ml[3], rel=0.05)  # lungs
    assert widths_mm[0] == pytest.approx(widths_mm[1], abs=4.0)
    assert 115.0 < widths_mm[0] < 135.0


def test_fast_enough_for_tests_and_demo():
    phantom.ct_phantom()  # warm caches
    start = time.perf_counter()
    phantom.ct_phantom(kind="chest")
    assert time.perf_counter() - start < 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\['chest', 'head'\]"):
        phantom.ct_phantom(kind="abdomen")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spacing_mm"):
        phantom.ct_phantom(spacing_mm=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        phantom.ct_phantom(shape=(0, 8, 8))
