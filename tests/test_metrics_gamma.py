"""Gamma index against closed forms and against pymedphys.gamma (synthetic and real OpenKBP dose pairs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ctlib.metrics import gamma, gamma_search

CRITERIA = {"dose_percent": 3.0, "distance_mm": 3.0, "cutoff_percent": 10.0, "max_gamma": 2.0}


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small tensor ops: on a shared 2-core machine,
    one thread avoids OpenMP waiting on descheduled threads."""
    import numba

    threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    numba.set_num_threads(numba_threads)


def _blob(shape, spacing_mm, sigma_mm=(8.0, 10.0, 12.0), peak_gy=60.0) -> np.ndarray:
    """A smooth Gaussian dose centred in the grid."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing_mm, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij")
    return (peak_gy * np.exp(-sum(g**2 / (2 * s**2) for g, s in zip(grids, sigma_mm, strict=False)))).astype(
        np.float32
    )


def _pymedphys(reference, evaluated, spacing_mm, **criteria) -> np.ndarray:
    import pymedphys

    axes = tuple(np.arange(n) * s for n, s in zip(reference.shape, spacing_mm, strict=True))
    return pymedphys.gamma(
        axes,
        reference.astype(np.float64),
        axes,
        evaluated.astype(np.float64),
        criteria["dose_percent"],
        criteria["distance_mm"],
        lower_percent_dose_cutoff=criteria["cutoff_percent"],
        max_gamma=criteria["max_gamma"],
        interp_fraction=criteria.get("interp_fraction", 10),
    )


def _assert_agrees_with_pymedphys(reference, evaluated, spacing_mm, **criteria):
    criteria = {**CRITERIA, **criteria}
    ours = gamma.gamma_index(reference, evaluated, spacing_mm, **criteria)
    theirs = _pymedphys(reference, evaluated, spacing_mm, **criteria)
    evaluated_voxels = ~np.isnan(theirs)
    np.testing.assert_array_equal(~np.isnan(ours.gamma), evaluated_voxels)
    their_pass = 100.0 * np.mean(theirs[evaluated_voxels] <= 1)
    assert abs(ours.pass_rate_percent - their_pass) <= 0.5, (ours.pass_rate_percent, their_pass)
    # same offsets, same interpolation: float32 rounding, except on the grid's lower faces, where pymedphys'
    # float64 rounding puts some in-plane search points off the grid (ours can only be lower there)
    difference = ours.gamma - theirs
    interior = np.zeros(reference.shape, bool)
    interior[(slice(1, None),) * reference.ndim] = True
    assert np.nanmax(np.abs(difference[interior])) < 1e-3
    assert np.nanmax(difference) < 1e-3
    return ours, their_pass


def test_search_offsets_follow_pymedphys():
    radii = gamma_search.shell_distances_mm(3.0, 2.0, 10)
    assert radii[0] == 0.0 and 3.0 in radii and radii[-1] <= 6.0 + 1e-9 and radii[-1] > 5.6
    assert np.all(np.diff(radii) > -1e-12) and np.max(np.diff(radii)) <= 0.3 + 1e-9
    points = gamma_search.shell_points_mm(1.5, 0.3, 3)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.5)
    assert np.all(np.abs(points).max(0) > 1.49)  # reaches out along every axis
    circle = gamma_search.shell_points_mm(1.5, 0.3, 2)
    np.testing.assert_allclose(np.linalg.norm(circle, axis=1), 1.5)
    assert np.max(np.linalg.norm(np.diff(circle, axis=0), axis=1)) <= 0.3
    assert gamma_search.shell_points_mm(0.0, 0.3, 3).tolist() == [[0.0, 0.0, 0.0]]


@pytest.mark.parametrize("distance_mm,max_gamma,interp_fraction", [(3.0, 2.0, 10), (2.0, 1.5, 5)])
def test_search_offsets_are_pymedphys_shells(distance_mm, max_gamma, interp_fraction):
    shells = pytest.importorskip("pymedphys._utilities.createshells")
    step = distance_mm / interp_fraction
    for radius in gamma_search.shell_distances_mm(distance_mm, max_gamma, interp_fraction):
        for ndim in (3, 2):
            theirs = getattr(shells, f"calculate_coordinates_shell_{ndim}d")(radius, step)
            ours = gamma_search.shell_points_mm(radius, step, ndim)
            np.testing.assert_allclose(ours, np.stack(theirs, axis=1), rtol=0, atol=1e-12)  # same order too


@pytest.mark.parametrize("shape,spacing_mm", [((8, 12, 12), (2.5, 4.0, 4.0)), ((14, 16), (2.0, 3.0))])
def test_identical_doses_pass_everywhere_above_the_cutoff(shape, spacing_mm):
    dose = _blob(shape, spacing_mm)
    result = gamma.gamma_index(dose, dose, spacing_mm)
    below = dose < 0.1 * dose.max()
    assert below.any() and np.all(np.isnan(result.gamma[below]))
    assert np.all(result.gamma[~below] == 0.0)
    assert result.pass_rate_percent == 100.0 and result.evaluated_voxels == int((~below).sum())


def test_uniform_scaling_closed_form_and_normalization():
    dose = np.full((6, 7, 8), 10.0, np.float32)
    spacing = (2.5, 4.0, 4.0)
    passing = gamma.gamma_index(dose, dose * 1.02, spacing)  # 2 % of 10 Gy against 3 % of 10 Gy
    np.testing.assert_allclose(passing.gamma, 2 / 3, rtol=1e-5)
    assert passing.pass_rate_percent == 100.0
    failing = gamma.gamma_index(dose, dose * 1.05, spacing)  # nothing nearby agrees: the dose term alone
    np.testing.assert_allclose(failing.gamma, 5 / 3, rtol=1e-5)
    assert failing.pass_rate_percent == 0.0
    # normalized to 20 Gy, 0.5 Gy is 2.5 % of the normalization
    normalized = gamma.gamma_index(dose, dose * 1.05, spacing, normalization_gy=20.0)
    np.testing.assert_allclose(normalized.gamma, 2.5 / 3, rtol=1e-5)
    capped = gamma.gamma_index(dose, dose * 1.5, spacing, max_gamma=1.5)
    assert np.all(capped.gamma == 1.5) and capped.pass_rate_percent == 0.0


def test_five_percent_scaling_fails_except_within_dta_of_a_dose_edge():
    """10 Gy for x < 6, 0.5 Gy (below the cutoff) beyond: scaled by 5 %,
    only voxels near the edge find agreement."""
    dose = np.full((3, 4, 14), 0.5, np.float32)
    dose[..., :6] = 10.0
    result = gamma.gamma_index(dose, dose * 1.05, (3.0, 3.0, 2.0))
    g = result.gamma[1, 1]  # uniform along z and y
    assert np.all(np.isnan(g[6:]))
    # the scaled dose crosses 10 Gy (5 - x) * 2 mm + 0.1 mm from voxel x: the continuous gamma there is
    # 0.03 and 0.70 for x = 5, 4, and at least 1.37 for x = 3; the sampled search can only be higher
    assert 0.03 < g[5] < 1 and 0.69 < g[4] < 1 and g[3] > 1.36
    np.testing.assert_allclose(g[:3], 5 / 3, rtol=1e-5)  # more than 6 mm away: only the dose term
    assert result.pass_rate_percent == pytest.approx(100 * 2 / 6)


def test_one_voxel_shift_passes_when_the_spacing_is_within_the_dta():
    spacing = (2.5, 4.0, 4.0)
    dose = _blob((14, 14, 14), spacing, sigma_mm=(6.0, 6.0, 6.0))
    along_z = np.roll(dose, 1, axis=0)  # 2.5 mm <= 3 mm: every voxel finds its dose one voxel away
    z_result = gamma.gamma_index(dose, along_z, spacing)
    assert z_result.pass_rate_percent == 100.0
    assert np.nanmax(z_result.gamma) < 0.95
    along_x = np.roll(dose, 1, axis=2)  # 4 mm > 3 mm: the steep flanks fail
    x_result = gamma.gamma_index(dose, along_x, spacing)
    assert x_result.pass_rate_percent < 90.0
    gradient = np.abs(np.gradient(dose, 4.0, axis=2))
    failing = x_result.gamma > 1
    assert gradient[failing].mean() > gradient[~np.isnan(x_result.gamma)].mean()
    # a looser DTA (5 mm) covers the 4 mm shift again
    assert gamma.gamma_index(dose, along_x, spacing, distance_mm=5.0).pass_rate_percent == 100.0


def test_pass_rate_does_not_depend_on_max_gamma_and_tensors_stay_tensors():
    spacing = (2.5, 4.0, 4.0)
    dose = _blob((10, 12, 12), spacing, sigma_mm=(5.0, 6.0, 6.0))
    shifted = np.roll(dose, 1, axis=1) * 1.01
    low = gamma.gamma_index(dose, shifted, spacing, max_gamma=1.0)
    high = gamma.gamma_index(dose, shifted, spacing, max_gamma=3.0)
    assert low.pass_rate_percent == high.pass_rate_percent < 100.0
    assert np.nanmax(low.gamma) <= 1.0 < np.nanmax(high.gamma) <= 3.0
    as_tensor = gamma.gamma_index(torch.from_numpy(dose), torch.from_numpy(shifted), spacing, max_gamma=3.0)
    assert isinstance(as_tensor.gamma, torch.Tensor) and isinstance(high.gamma, np.ndarray)
    np.testing.assert_array_equal(as_tensor.gamma.numpy(), high.gamma)


def test_chunking_and_bands_do_not_change_the_result():
    spacing = (2.5, 3.5, 4.0)
    dose = _blob((10, 12, 12), spacing, sigma_mm=(5.0, 6.0, 6.0))
    evaluated = ndimage.shift(dose, (0.4, -0.3, 0.6), order=1, mode="nearest") * 1.02
    default = gamma.gamma_index(dose, evaluated, spacing)
    for options in ({"chunk_elements": 300}, {"shells_per_band": 5}):
        other = gamma.gamma_index(dose, evaluated, spacing, **options)
        np.testing.assert_allclose(other.gamma, default.gamma, atol=1e-6)
        assert other.pass_rate_percent == default.pass_rate_percent


@pytest.mark.parametrize("shift_voxels,scale", [((0.4, -0.3, 0.6), 1.02), ((1.0, 0.0, 0.0), 0.97)])
def test_pass_only_decides_the_same_voxels_with_less_search(shift_voxels, scale, monkeypatch):
    spacing = (2.5, 3.5, 4.0)
    rng = np.random.default_rng(2)
    dose = _blob((12, 14, 14), spacing) + (ndimage.gaussian_filter(rng.random((12, 14, 14)), 1.5) * 12)
    evaluated = (ndimage.shift(dose, shift_voxels, order=1, mode="nearest") * scale).astype(np.float32)
    offsets = []  # offsets evaluated (times voxels), counted where the candidates are computed
    lower = gamma_search._lower

    def counted(current, weights, *rest):
        offsets.append(weights.shape[0] * current.numel())
        lower(current, weights, *rest)

    monkeypatch.setattr(gamma_search, "_lower", counted)
    full = gamma.gamma_index(dose.astype(np.float32), evaluated, spacing)
    full_work, offsets[:] = sum(offsets), []
    fast = gamma.gamma_index(dose.astype(np.float32), evaluated, spacing, pass_only=True)
    assert fast.pass_rate_percent == full.pass_rate_percent and 0 < full.pass_rate_percent < 100
    np.testing.assert_array_equal(np.isnan(fast.gamma), np.isnan(full.gamma))
    np.testing.assert_array_equal(fast.gamma <= 1, full.gamma <= 1)
    # near misses (gamma in (1, 1.2]) are decided too, and the search did less than half the work
    assert np.sum((full.gamma > 1) & (full.gamma <= 1.2)) > 0
    assert sum(offsets) < 0.5 * full_work


def test_pass_only_finds_a_pass_whose_cell_bound_is_tight():
    """10 Gy everywhere, evaluated 50 tolerances high for x <= 3 and 0.7 tolerance high beyond (1 mm voxels):
    voxel x = 2 passes only through the uniform cells 2 mm or more away, at gamma^2 = 0.7^2 + 0.7^2 = 0.98
    (offset 2.1 mm along x), so the cells' lower bound (0.49 + 0.49) leaves almost no margin."""
    dose = np.full((3, 3, 12), 10.0, np.float32)
    evaluated = dose + 0.3 * np.where(np.arange(12) <= 3, 50.0, 0.7).astype(np.float32)
    full = gamma.gamma_index(dose, evaluated, (1.0, 1.0, 1.0))
    fast = gamma.gamma_index(dose, evaluated, (1.0, 1.0, 1.0), pass_only=True)
    assert full.gamma[1, 1, 2] ** 2 == pytest.approx(0.98, abs=1e-5)
    assert full.gamma[1, 1, 1] > 1 and full.gamma[1, 1, 3] < 1
    np.testing.assert_array_equal(fast.gamma <= 1, full.gamma <= 1)


def test_bad_input_raises():
    dose = _blob((6, 8, 8), (2.5, 4.0, 4.0))
    bad = dose.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"evaluated_dose_gy \(shape \(6, 8, 8\)\) holds 1 NaN"):
        gamma.gamma_index(dose, bad, (2.5, 4.0, 4.0))
    with pytest.raises(ValueError, match=r"reference_dose_gy .* holds 1 NaN"):
        gamma.gamma_index(bad, dose, (2.5, 4.0, 4.0))
    with pytest.raises(ValueError, match=r"evaluated_dose_gy has shape \(6, 8, 7\)"):
        gamma.gamma_index(dose, dose[..., :7], (2.5, 4.0, 4.0))
    with pytest.raises(ValueError, match="spacing_mm must hold 3"):
        gamma.gamma_index(dose, dose, (4.0, 4.0))
    with pytest.raises(ValueError, match="max_gamma"):
        gamma.gamma_index(dose, dose, (2.5, 4.0, 4.0), max_gamma=float("inf"))
    with pytest.raises(ValueError, match="must reach the DTA"):
        gamma.gamma_index(dose, dose, (2.5, 4.0, 4.0), max_gamma=0.5)
    with pytest.raises(ValueError, match="zero everywhere"):
        gamma.gamma_index(np.zeros_like(dose), dose, (2.5, 4.0, 4.0))
    with pytest.raises(ValueError, match="2D"):
        gamma.gamma_index(dose[0, 0], dose[0, 0], (4.0,))


@pytest.mark.parametrize(
    "shift_voxels,scale", [((0.4, -0.3, 0.6), 1.02), ((1.0, 0.0, 0.0), 0.97), ((0.0, 0.7, 0.0), 1.0)]
)
def test_agrees_with_pymedphys_on_synthetic_shifted_scaled_doses(shift_voxels, scale):
    spacing = (2.5, 3.5, 4.0)
    rng = np.random.default_rng(1)
    dose = _blob((12, 14, 14), spacing) + (
        ndimage.gaussian_filter(rng.random((12, 14, 14)), 1.5) * 12
    ).astype(np.float32)
    evaluated = (ndimage.shift(dose, shift_voxels, order=1, mode="nearest") * scale).astype(np.float32)
    ours, _ = _assert_agrees_with_pymedphys(dose, evaluated, spacing)
    assert 0.0 < ours.pass_rate_percent <= 100.0


def test_agrees_with_pymedphys_in_2d_with_other_criteria():
    spacing = (2.0, 3.0)
    dose = _blob((24, 24), spacing, sigma_mm=(10.0, 14.0))
    evaluated = ndimage.shift(dose, (0.8, -0.6), order=1, mode="nearest").astype(np.float32) * 1.03
    ours, theirs = _assert_agrees_with_pymedphys(dose, evaluated, spacing, dose_percent=2.0, distance_mm=2.0,
                                                 cutoff_percent=20.0, max_gamma=1.5, interp_fraction=5)
    assert ours.pass_rate_percent < 100.0


@pytest.mark.realdata
def test_agrees_with_pymedphys_on_real_openkbp_dose_pairs(data_root):
    from ctlib.io import openkbp

    patient = openkbp.read_openkbp_npz(data_root / "openkbp" / "test" / "pt_242.npz")
    dose, spacing = patient.dose_gy, patient.ct.spacing
    z, y, x = np.unravel_index(np.argmax(dose), dose.shape)
    # 16^3 voxels around the hottest point
    box = (slice(z - 8, z + 8), slice(y - 8, y + 8), slice(x - 8, x + 8))
    reference = dose[box]
    perturbed = {
        "shift 1 voxel along y (4.7 mm), x 1.02": ndimage.shift(dose, (0, 1, 0), order=0) * 1.02,
        "Gaussian smoothing, sigma 1 voxel": ndimage.gaussian_filter(dose, 1.0),
    }
    pass_rates = {}
    for name, evaluated in perturbed.items():
        ours, theirs = _assert_agrees_with_pymedphys(reference, evaluated[box].astype(np.float32), spacing)
        pass_rates[name] = ours.pass_rate_percent
    assert all(50.0 < rate < 100.0 for rate in pass_rates.values()), pass_rates


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the same code runs in the CPU tests")
def test_cuda_matches_cpu():
    spacing = (2.5, 4.0, 4.0)
    dose = _blob((16, 20, 20), spacing)
    shifted = np.roll(dose, 1, axis=2) * 1.02
    cpu = gamma.gamma_index(dose, shifted, spacing)
    cuda = gamma.gamma_index(torch.from_numpy(dose).cuda(), torch.from_numpy(shifted).cuda(), spacing)
    assert cuda.gamma.is_cuda
    np.testing.assert_allclose(cuda.gamma.cpu().numpy(), cpu.gamma, atol=1e-5)
    assert abs(cuda.pass_rate_percent - cpu.pass_rate_percent) < 0.1
