"""eps / v / x0 conversions (Salimans & Ho 2022): exact round trips at every t, closed forms, clamping."""

from __future__ import annotations

import pytest
import torch

from ctlib.diffusion import parameterization as P
from ctlib.diffusion import schedules

KINDS = ("epsilon", "v", "x0")


def _batch_at_every_t(schedule, dtype, seed=0):
    """x0, eps of shape (T, 1, 2, 3, 3) and t = 0 .. T-1: one sample per timestep."""
    g = torch.Generator().manual_seed(seed)
    n = schedule.num_train_timesteps
    x0 = torch.randn(n, 1, 2, 3, 3, generator=g, dtype=torch.float64).to(dtype)
    eps = torch.randn(n, 1, 2, 3, 3, generator=g, dtype=torch.float64).to(dtype)
    return x0, eps, torch.arange(n)


@pytest.mark.parametrize("schedule_kind", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_exact_at_every_t(schedule_kind, kind):
    s = schedules.make_schedule(schedule_kind)
    x0, eps, t = _batch_at_every_t(s, torch.float64)
    x_t = P.q_sample(x0, t, eps, s)
    out = P.training_target(kind, x0, eps, t, s)
    x0_hat, eps_hat = P.predict_x0_eps(kind, out, x_t, t, s)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-6)
    # ... and from there into the other two parameterizations and back.
    for other in KINDS:
        out_other = P.training_target(other, x0_hat, eps_hat, t, s)
        x0_o, eps_o = P.predict_x0_eps(other, out_other, x_t, t, s)
        torch.testing.assert_close(x0_o, x0, rtol=0, atol=1e-6)
        torch.testing.assert_close(eps_o, eps, rtol=0, atol=1e-6)


@pytest.mark.parametrize("schedule_kind", ["linear", "cosine"])
def test_v_round_trip_is_exact_in_float32(schedule_kind):
    """The v conversions are a rotation, well conditioned at every t even in float32."""
    s = schedules.make_schedule(schedule_kind)
    x0, eps, t = _batch_at_every_t(s, torch.float32)
    x_t = P.q_sample(x0, t, eps, s)
    v = P.training_target("v", x0, eps, t, s)
    assert v.dtype == torch.float32
    x0_hat, eps_hat = P.predict_x0_eps("v", v, x_t, t, s)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-6)


def test_formulas_equal_closed_forms():
    s = schedules.make_schedule("linear")
    x0, eps, t = _batch_at_every_t(s, torch.float64, seed=1)
    ab = s.alphas_cumprod.view(-1, 1, 1, 1, 1)
    a, sd = ab.sqrt(), (1 - ab).sqrt()
    x_t = P.q_sample(x0, t, eps, s)
    torch.testing.assert_close(x_t, a * x0 + sd * eps, rtol=0, atol=1e-12)
    v = P.velocity(x0, eps, t, s)
    torch.testing.assert_close(v, a * eps - sd * x0, rtol=0, atol=1e-12)
    # x0 = a x_t - s v and eps = a v + s x_t
    torch.testing.assert_close(a * x_t - sd * v, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(a * v + sd * x_t, eps, rtol=0, atol=1e-12)


def test_q_sample_and_velocity_match_monai():
    from monai.networks.schedulers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta")
    s = schedules.make_schedule("linear")
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 1, 2, 4, 4, generator=g), torch.randn(4, 1, 2, 4, 4, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(P.q_sample(x0, t, eps, s), ref.add_noise(x0, eps, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(P.velocity(x0, eps, t, s), ref.get_velocity(x0, eps, t), rtol=1e-5, atol=1e-5)


def test_clip_x0_none_clips_nothing_and_a_range_clips():
    s = schedules.make_schedule("linear")
    t = torch.tensor([10, 900])
    x_t = torch.randn(2, 4, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    out = torch.full_like(x_t, 3.0)  # an x0 prediction far outside [-1, 1], as latents can be
    x0, eps = P.predict_x0_eps("x0", out, x_t, t, s, clip_x0=None)
    assert torch.equal(x0, out)
    x0_c, eps_c = P.predict_x0_eps("x0", out, x_t, t, s, clip_x0=(-1.0, 1.0))
    assert torch.equal(x0_c, torch.ones_like(out))
    # eps is re-derived from the clamped x0, so x_t = a x0 + s eps still holds.
    torch.testing.assert_close(P.q_sample(x0_c, t, eps_c, s), x_t, rtol=0, atol=1e-5)
    # Asymmetric ranges (e.g. data in [0, 1]) are respected.
    x0_u, _ = P.predict_x0_eps("epsilon", torch.randn_like(x_t), x_t, t, s, clip_x0=(0.0, 1.0))
    assert x0_u.min() >= 0.0 and x0_u.max() <= 1.0


def test_bad_options_raise_helpful_errors():
    s = schedules.make_schedule("linear", num_train_timesteps=10)
    x = torch.zeros(1, 1, 2, 2, 2)
    with pytest.raises(ValueError, match="'epsilon', 'v', 'x0'"):
        P.training_target("sample", x, x, 0, s)
    with pytest.raises(ValueError, match="shape"):
        P.predict_x0_eps("v", torch.zeros(1, 2, 2, 2, 2), x, 0, s)
    with pytest.raises(ValueError, match="low < high"):
        P.predict_x0_eps("v", x, x, 0, s, clip_x0=(1.0, -1.0))
