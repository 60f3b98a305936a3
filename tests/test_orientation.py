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
