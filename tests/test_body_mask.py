"""Threshold body mask on the synthetic phantom and on hand-made volumes."""

from __future__ import annotations

import numpy as np
import pytest

from ctlib.data import body_mask, phantom


@pytest.fixture(scope="module")
def chest():
    return phantom.ct_phantom_with_labels(shape=(24, 64, 64), spacing_mm=(5.0, 2.25, 2.25), seed=1)


def test_mask_holds_lungs_and_excludes_outside_air_and_table(chest):
    volume, labels, _ = chest
    mask = body_mask.body_mask(volume)
    assert mask.dtype == bool and mask.shape == volume.shape
    lungs = labels == phantom.LUNG
    assert lungs.any() and mask[lungs].all()
    assert not mask[labels == phantom.TABLE].any()
    assert not mask[labels == phantom.AIR].any()
    tissue = (labels != phantom.AIR) & (labels != phantom.TABLE)
    assert mask[tissue].mean() > 0.995  # only blurred edge voxels may fall below the threshold
    assert 0.3 < body_mask.body_fraction(mask) < 0.6


def test_accepts_plain_array_and_head(chest):
    volume, _, _ = chest
    np.testing.assert_array_equal(body_mask.body_mask(volume.array), body_mask.body_mask(volume))
    head, labels, _ = phantom.ct_phantom_with_labels(
        shape=(16, 64, 64), spacing_mm=(5.0, 2.25, 2.25), kind="head"
    )
    mask = body_mask.body_mask(head)
    assert mask[labels == phantom.BRAIN].all() and not mask[labels == phantom.AIR].any()


def test_gas_pocket_filled_per_slice_and_only_largest_component_kept():
    hu = np.full((6, 40, 40), -1000.0, dtype=np.float32)
    hu[:, 5:30, 5:30] = 40.0
    hu[:, 12:20, 12:20] = -900.0  # enclosed gas, running through every slice (open in 3-D at z ends)
    hu[:, 34:37, 5:30] = 100.0  # table, separated by an air gap
    mask = body_mask.body_mask(hu, opening_iterations=0)
    assert mask[:, 5:30, 5:30].all()
    assert not mask[:, 34:37].any()
    assert mask.sum() == 6 * 25 * 25


def test_opening_detaches_a_thin_bridge_to_the_table():
    hu = np.full((4, 40, 40), -1000.0, dtype=np.float32)
    hu[:, 5:25, 5:25] = 40.0
    hu[:, 30:33, 0:40] = 100.0  # table, 3 voxels thick
    hu[:, 25:30, 15] = 40.0  # a one-voxel-wide strap joins it to the patient
    joined = body_mask.body_mask(hu, opening_iterations=0)
    assert joined[:, 31, 20].all()
    detached = body_mask.body_mask(hu, opening_iterations=1)
    # The opening also trims the square's corner voxels: one voxel, on convex outlines only.
    assert detached[:, 6:24, 5:25].all() and not detached[:, 30:33].any()


def test_empty_and_bad_inputs():
    assert not body_mask.body_mask(np.full((2, 5, 5), -1000.0)).any()
    with pytest.raises(ValueError, match="z, y, x"):
        body_mask.body_mask(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="empty"):
        body_mask.body_fraction(np.zeros((0, 3, 3), dtype=bool))
    assert body_mask.body_fraction(np.ones((2, 2, 2), dtype=bool)) == 1.0
