"""Noise schedules against their closed forms and against MONAI 1.6 (and diffusers, when installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctlib.diffusion import schedules

T = 1000


def test_linear_equals_closed_form():
    s = schedules.make_schedule("linear")
    expected = np.linspace(1e-4, 0.02, T)
    assert s.betas.dtype == torch.float64 and s.num_train_timesteps == T
    np.testing.assert_allclose(s.betas.numpy(), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(s.alphas.numpy(), 1 - expected, rtol=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1 - expected), rtol=1e-12)


def test_scaled_linear_equals_closed_form():
    s = schedules.make_schedule("scaled_linear")
    i = np.arange(T)
    b0, b1 = 0.00085, 0.012
    expected = (math.sqrt(b0) + i / (T - 1) * (math.sqrt(b1) - math.sqrt(b0))) ** 2
    np.testing.assert_allclose(s.betas.numpy(), expected, rtol=1e-12, atol=0)
    assert s.betas[0].item() == pytest.approx(b0, rel=1e-14) and s.betas[-1].item() == pytest.approx(
        b1, rel=1e-14
    )
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1 - expected), rtol=1e-12)


@pytest.mark.parametrize("num_train_timesteps", [1000, 50])
def test_cosine_is_not_renormalized_and_matches_closed_form(num_train_timesteps):
    n = num_train_timesteps
    s = schedules.make_schedule("cosine", num_train_timesteps=n)
    # alphas_cumprod = cumprod(1 - betas): the first entry is 1 - beta_0, not 1.
    assert s.alphas_cumprod[0].item() == 1.0 - s.betas[0].item()
    assert s.alphas_cumprod[0].item() < 1.0
    # Closed form (Nichol & Dhariwal 2021, eq. 17): alpha_bar at index t is f(t + 1) / f(0) ...
    f = [math.cos((k / n + 0.008) / 1.008 * math.pi / 2) ** 2 for k in range(n + 1)]
    closed = np.array([f[k + 1] / f[0] for k in range(n)])
    clipped = s.betas.numpy() >= 0.999
    # ... wherever the 0.999 clip is inactive: only the last beta (f(T) = 0 would give beta = 1) is clipped.
    assert clipped.nonzero()[0].tolist() == [n - 1]
    np.testing.assert_allclose(s.alphas_cumprod.numpy()[:-1], closed[:-1], rtol=1e-10)
    assert s.alphas_cumprod[-1].item() == pytest.approx(s.alphas_cumprod[-2].item() * (1 - 0.999), rel=1e-12)
    assert bool((s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all())


MONAI_CASES = [
    # (ours, MONAI's name, MONAI's args, betas atol, alphas_cumprod rtol): MONAI computes in float32.
    ("linear", "linear_beta", {"beta_start": 1e-4, "beta_end": 0.02}, 2e-9, 1e-6),
    ("scaled_linear", "scaled_linear_beta", {"beta_start": 0.00085, "beta_end": 0.012}, 2e-9, 2e-6),
    # Same formula; MONAI's float32 cosine moves the tail betas by up to ~3e-5 (t near T-1, f ~ 1e-6).
    ("cosine", "cosine", {}, 5e-5, 1e-4),
]


@pytest.mark.parametrize(("kind", "monai_name", "monai_args", "betas_atol", "ab_rtol"), MONAI_CASES)
def test_schedules_match_monai(kind, monai_name, monai_args, betas_atol, ab_rtol):
    from monai.networks.schedulers import DDPMScheduler

    ours = schedules.make_schedule(kind)
    ref = DDPMScheduler(num_train_timesteps=T, schedule=monai_name, **monai_args)
    np.testing.assert_allclose(ours.betas.numpy(), ref.betas.double().numpy(), rtol=0, atol=betas_atol)
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), rtol=ab_rtol)
    # Same convention for the first step: neither renormalizes alphas_cumprod[0] to 1.
    assert ref.alphas_cumprod[0].item() == pytest.approx(1 - ref.betas[0].item(), abs=1e-7)


def test_monai_scaled_linear_defaults_are_not_ldm():
    """A pitfall worth a test: MONAI's scaled_linear_beta defaults to (1e-4, 2e-2), not LDM's
    (0.00085, 0.012)."""
    from monai.networks.schedulers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=T, schedule="scaled_linear_beta")
    assert ref.betas[0].item() == pytest.approx(1e-4, rel=1e-5)
    assert schedules.make_schedule("scaled_linear").betas[0].item() == pytest.approx(0.00085)


def test_cosine_matches_diffusers_squaredcos_cap_v2():
    diffusers_ddim = pytest.importorskip("diffusers.schedulers.scheduling_ddim")
    ref = diffusers_ddim.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    ours = schedules.make_schedule("cosine")
    # diffusers evaluates the same formula in float64 and stores float32.
    np.testing.assert_allclose(ours.betas.numpy(), ref.betas.double().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), rtol=5e-5)


def test_snr_closed_form():
    s = schedules.make_schedule("linear")
    t = torch.tensor([0, 1, 500, 999])
    ab = s.alphas_cumprod[t]
    torch.testing.assert_close(schedules.snr(s, t), ab / (1 - ab), rtol=1e-15, atol=0)
    assert schedules.snr(s, 0).item() == pytest.approx(0.9999 / 0.0001, rel=1e-12)


def test_extract_broadcasts_per_batch_timesteps():
    values = torch.arange(10, dtype=torch.float64)
    out = schedules.extract(values, torch.tensor([3, 7]), 5)
    assert out.shape == (2, 1, 1, 1, 1) and out.dtype == torch.float64
    assert out.flatten().tolist() == [3.0, 7.0]
    assert schedules.extract(values, 4, 5).shape == (1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="integers"):
        schedules.extract(values, torch.tensor([0.5]), 5)


def test_make_schedule_rejects_bad_options():
    with pytest.raises(ValueError, match="linear.*scaled_linear.*cosine"):
        schedules.make_schedule("sigmoid")
    with pytest.raises(ValueError, match="do not apply to the cosine"):
        schedules.make_schedule("cosine", beta_start=1e-4)
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        schedules.make_schedule("linear", beta_start=0.02, beta_end=1e-4)
    with pytest.raises(ValueError, match="float64"):
        schedules.NoiseSchedule(
            betas=torch.ones(3), alphas=torch.ones(3), alphas_cumprod=torch.ones(3), num_train_timesteps=3
        )
