"""Back-projection geometry (ctlib.physics.backproject) against the DRR renderer's own rays."""

from __future__ import annotations

import pytest
import torch

from ctlib.physics import backproject, drr


def _blob(shape: tuple[int, int, int], centre: tuple[int, int, int]) -> torch.Tensor:
    volume = torch.zeros(shape)
    k, j, i = centre
    volume[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2] = 0.05
    return volume


@pytest.mark.parametrize("angle", [0.0, 90.0, 30.0])
@pytest.mark.parametrize(
    "geometry",
    [
        drr.ConeBeam(detector_size_mm=(120.0, 120.0), detector_pixels=(40, 48)),
        drr.ParallelBeam(detector_size_mm=(80.0, 80.0), detector_pixels=(40, 48)),
    ],
)
def test_voxel_projects_where_the_renderer_sees_it(geometry: drr.Geometry, angle: float) -> None:
    shape, spacing = (20, 24, 28), (2.0, 2.5, 2.0)
    centre = (5, 17, 8)  # inferior, posterior, to the patient's right of the centre
    image = drr.render(_blob(shape, centre), spacing, geometry, angle, n_samples=192)
    rows, cols = geometry.detector_pixels
    weights = image[0] / image.sum()  # the blob's centroid on the detector
    seen = (float((weights.sum(1) * torch.arange(rows)).sum()),
            float((weights.sum(0) * torch.arange(cols)).sum()))
    grid = backproject.voxel_detector_grid(shape, spacing, geometry, angle)[centre]
    predicted = ((grid[1] + 1) / 2 * (rows - 1), (grid[0] + 1) / 2 * (cols - 1))
    assert abs(seen[0] - predicted[0]) <= 0.25 and abs(seen[1] - predicted[1]) <= 0.25, (seen, predicted)


def test_lateral_grid_is_not_the_pa_grid() -> None:
    shape, spacing, geometry = (8, 8, 8), (2.0, 2.0, 2.0), drr.ConeBeam(detector_pixels=(16, 16))
    pa = backproject.voxel_detector_grid(shape, spacing, geometry, 0.0)
    lateral = backproject.voxel_detector_grid(shape, spacing, geometry, 90.0)
    # PA columns follow x (the patient's left); lateral columns follow y (posterior)
    assert pa[0, 0, -1, 0] > pa[0, 0, 0, 0]
    assert torch.allclose(pa[0, :, 0, 0], pa[0, :, 0, 0].mean().expand(8), atol=0.02)
    assert lateral[0, -1, 0, 0] > lateral[0, 0, 0, 0]
    # rows run to inferior: the top slice (largest z) has the smallest row coordinate
    assert pa[-1, 4, 4, 1] < pa[0, 4, 4, 1]


def test_parallel_backprojection_of_a_projection_is_constant_along_rays() -> None:
    shape, spacing = (6, 10, 12), (2.0, 2.0, 2.0)
    geometry = drr.ParallelBeam(detector_size_mm=(12.0, 24.0), detector_pixels=(6, 12))
    volume = torch.rand(shape)
    image = drr.render(volume, spacing, geometry, 0.0, n_samples=64)
    grid = backproject.voxel_detector_grid(shape, spacing, geometry, 0.0)
    lifted = backproject.backproject(image[None], grid)
    assert lifted.shape == (1, 1, *shape)
    # PA rays run along y: every y position of a (z, x) column holds the same pixel value
    assert torch.allclose(lifted[0, 0], lifted[0, 0, :, :1, :].expand(shape), atol=1e-5)
    assert torch.allclose(lifted[0, 0, :, 0, :], image[0].flip(0), atol=1e-5)  # row 0 is the top slice


def test_backprojection_is_differentiable_and_checks_shapes() -> None:
    geometry = drr.ConeBeam(detector_pixels=(8, 8))
    grid = backproject.voxel_detector_grid((4, 4, 4), (1.0, 1.0, 1.0), geometry, 90.0)
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    backproject.backproject(images, grid).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expected images"):
        backproject.backproject(images[0], grid)


def test_chord_lengths_of_a_parallel_beam() -> None:
    shape, spacing = (5, 11, 7), (3.0, 2.0, 1.0)
    geometry = drr.ParallelBeam(detector_size_mm=(12.0, 14.0), detector_pixels=(4, 14))
    chords = backproject.chord_lengths_mm(shape, spacing, geometry, 0.0)
    inside = chords[:, 4:10]  # columns whose rays cross the 7 mm wide box
    assert torch.allclose(inside, torch.full_like(inside, 22.0), atol=1e-4)  # H * dy: whole voxels
    assert chords[:, 0].abs().max() == 0
    centres = backproject.chord_lengths_mm(shape, spacing, geometry, 0.0, extent="centres")[:, 4:10]
    assert torch.allclose(centres, torch.full_like(centres, 20.0), atol=1e-4)  # (H - 1) * dy
    with pytest.raises(ValueError, match="extent"):
        backproject.chord_lengths_mm(shape, spacing, geometry, 0.0, extent="edges")
