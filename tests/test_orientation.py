"""Reorientation to LPS keeps every voxel at its patient position."""

from __future__ import annotations

import numpy as np
import pytest

from ctlib.io import orientation
from ctlib.io.volume import Volume


def _lps_of_all_voxels(volume: Volume) -> dict[tuple, float]:
    z, y, x = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    ijk = np.stack([x.ravel(), y.ravel(), z.ravel(), np.ones(x.size)])
    lps = (volume.index_to_lps() @ ijk)[:3].T
    return {tuple(np.round(p, 6)): v for p, v in zip(lps, volume.array.ravel(), strict=True)}


@pytest.mark.parametrize(
    ("direction", "code"),
    [
        (np.eye(3), "LPS"),
        (np.diag([1.0, -1.0, 1.0]), "LAS"),
        (np.diag([-1.0, 1.0, -1.0]), "RPI"),
        (np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]), "LIP"),  # coronal acquisition
    ],
)
def test_reorient_keeps_positions(direction, code):
    rng = np.random.default_rng(1)
    volume = Volume(
        rng.normal(size=(3, 4, 5)), spacing=(2.0, 0.5, 0.7), origin=(10, -20, 30), direction=direction
    )
    assert orientation.lps_axis_codes(volume) == code
    canonical = orientation.reorient_to_lps(volume)
    assert orientation.lps_axis_codes(canonical) == "LPS"
    np.testing.assert_allclose(canonical.direction, np.eye(3), atol=1e-12)
    assert _lps_of_all_voxels(canonical) == pytest.approx(_lps_of_all_voxels(volume))


def test_too_oblique_is_refused():
    s = np.sqrt(0.5)
    # x and y both run at exactly 45 degrees between L and P: no unambiguous nearest axis.
    direction = np.array([[s, -s, 0.0], [s, s, 0.0], [0.0, 0.0, 1.0]])
    volume = Volume(np.zeros((2, 2, 2)), spacing=(1, 1, 1), direction=direction)
    with pytest.raises(ValueError, match="oblique"):
        orientation.reorient_to_lps(volume)


@pytest.mark.parametrize("target", ["RAS", "LAS", "RPI", "LPS"])
@pytest.mark.parametrize(
    "direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]), np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])]
)
def test_reorient_to_any_code_keeps_positions(direction, target):
    rng = np.random.default_rng(2)
    volume = Volume(rng.normal(size=(3, 4, 5)), spacing=(2, 0.5, 0.7), origin=(1, 2, 3), direction=direction)
    out = orientation.reorient(volume, target)
    assert orientation.lps_axis_codes(out) == target
    assert _lps_of_all_voxels(out) == pytest.approx(_lps_of_all_voxels(volume))


def test_ras_is_lps_flipped_in_x_and_y():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    ras = orientation.reorient(Volume(array, spacing=(1, 1, 1)), "RAS")
    np.testing.assert_array_equal(ras.array, array[:, ::-1, ::-1])


@pytest.mark.parametrize("bad", ["PLS", "RA", "XYZ", "ras "])
def test_bad_codes_are_refused(bad):
    with pytest.raises(ValueError, match="L/R, P/A, S/I"):
        orientation.reorient(Volume(np.zeros((2, 2, 2)), spacing=(1, 1, 1)), bad)
