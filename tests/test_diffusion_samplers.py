"""Samplers: single steps against MONAI 1.6 and diffusers, determinism, inversion, timestep scale,
clamping, the sampler registry, K-sample statistics, and an end-to-end overfit of a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.schedulers import scheduling_ddim as diffusers_ddim  # the reference: dev extra, never skipped
from torch import nn

from ctlib.diffusion import losses, sample_statistics, samplers, schedules
from ctlib.diffusion import parameterization as P
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.schedules import NoiseSchedule

MU, SIGMA = 0.3, 0.5  # the analytic data distribution: x0 ~ N(MU, SIGMA^2) per voxel


def gaussian_denoiser(schedule: NoiseSchedule, kind: str = "epsilon"):
    """The exact denoiser of Gaussian data: E[eps | x_t] = s (x_t - a MU) / (a^2 SIGMA^2 + s^2),
    in ``kind``."""

    def model(x, timesteps):
        ab = schedules.extract(schedule.alphas_cumprod, timesteps, x.ndim).to(x.dtype)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        eps = s * (x - a * MU) / (a * a * SIGMA**2 + s * s)
        x0 = (x - s * eps) / a
        return {"epsilon": eps, "v": a * eps - s * x0, "x0": x0}[kind]

    return model


def schedule_of(ref) -> NoiseSchedule:
    """Our schedule holding exactly a reference scheduler's (float32) values, to compare steps alone."""
    return NoiseSchedule(
        betas=ref.betas.double(),
        alphas=ref.alphas.double(),
        alphas_cumprod=ref.alphas_cumprod.double(),
        num_train_timesteps=len(ref.betas),
    )


class Recorder(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.timesteps: list[torch.Tensor] = []

    def forward(self, x, timesteps):
        self.timesteps.append(timesteps.detach().clone())
        return self.inner(x, timesteps)


class TinyDenoiser(nn.Module):
    """Three 3D convolutions with a sinusoidal embedding of the raw timestep (as MONAI's U-Net)."""

    def __init__(self, in_ch: int = 2, out_ch: int = 1, width: int = 32, emb: int = 32):
        super().__init__()
        self.emb = emb
        self.mlp = nn.Sequential(nn.Linear(emb, width), nn.SiLU(), nn.Linear(width, 2 * width))
        self.c1 = nn.Conv3d(in_ch, width, 3, padding=1)
        self.c2 = nn.Conv3d(width, width, 3, padding=1)
        self.c3 = nn.Conv3d(width, out_ch, 3, padding=1)

    def forward(self, x, timesteps):
        half = self.emb // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = timesteps.float()[:, None] * freqs[None]
        shift1, shift2 = self.mlp(torch.cat([args.cos(), args.sin()], 1))[:, :, None, None, None].chunk(2, 1)
        h = nn.functional.silu(self.c1(x) + shift1)
        h = nn.functional.silu(self.c2(h) + shift2)
        return self.c3(h)


# ---------------------------------------------------------------------------------------------
# Timestep lists
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 7, 10, 50, 1000])
def test_ddim_timesteps_match_monai_and_diffusers(n):
    from monai.networks.schedulers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000)
    ref.set_timesteps(n)
    ours = samplers.ddim_timesteps(1000, n)
    assert torch.equal(ours, ref.timesteps) and ours[0] == 999 and ours[-1] == 0
    for spacing in ("linspace", "leading", "trailing"):
        d = diffusers_ddim.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        d.set_timesteps(n)
        assert torch.equal(samplers.ddim_timesteps(1000, n, spacing=spacing), d.timesteps), spacing


def test_ddim_timesteps_edge_cases():
    assert samplers.ddim_timesteps(1000, 1).tolist() == [999]  # one step starts from pure noise
    with pytest.raises(ValueError, match="num_steps"):
        samplers.ddim_timesteps(10, 11)
    with pytest.raises(ValueError, match="linspace"):
        samplers.ddim_timesteps(10, 5, spacing="uniform")


# ---------------------------------------------------------------------------------------------
# Single steps against reference implementations
# ---------------------------------------------------------------------------------------------

DIFFUSERS_PRED = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}


@pytest.mark.parametrize("kind", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_loop_equals_diffusers_where_its_previous_timestep_matches_the_list(kind, spacing):
    """diffusers computes the previous timestep as t - T // N, which equals the list's next entry for
    'leading' and 'trailing' spacing: there the whole eta = 0 chain must agree."""
    ref = diffusers_ddim.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing=spacing,
        prediction_type=DIFFUSERS_PRED[kind],
    )
    s = schedule_of(ref)
    model = gaussian_denoiser(s, kind)
    x_T = torch.randn(2, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ref.set_timesteps(10)
    x = x_T.clone()
    for t in ref.timesteps.tolist():
        x = ref.step(model(x, torch.full((2,), t)), t, x).prev_sample
    ours = samplers.ddim(Denoiser(model, kind, s), x_T.shape, num_steps=10, x_T=x_T, spacing=spacing)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("t", [999, 500, 20])
def test_one_stochastic_clipped_ddim_step_equals_diffusers(t):
    ref = diffusers_ddim.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    ref.set_timesteps(50)  # previous timestep t - 20
    s = schedule_of(ref)
    gen = torch.Generator().manual_seed(1)
    x_t, out, z = (torch.randn(2, 4, 2, 4, 4, generator=gen) for _ in range(3))
    expected = ref.step(out, t, x_t, eta=0.7, use_clipped_model_output=True, variance_noise=z)
    ours, x0 = samplers.ddim_step(
        out, x_t, t, t - 20, s, prediction="epsilon", eta=0.7, noise=z, clip_x0=(-1.0, 1.0)
    )
    torch.testing.assert_close(x0, expected.pred_original_sample, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, expected.prev_sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v", "x0"])
def test_ddim_step_equals_monai_where_its_arithmetic_agrees_with_its_list(kind):
    """MONAI 1.6 steps to t - T // N. With steps_offset = T - 1 - (N - 1) * (T // N) its list is
    999, 899, ..., 99, which that arithmetic walks exactly; the last step goes to alpha_bar = 1."""
    from monai.networks.schedulers import DDIMScheduler

    monai_pred = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}[kind]
    ref = DDIMScheduler(
        num_train_timesteps=1000, clip_sample=False, steps_offset=99, prediction_type=monai_pred
    )
    ref.set_timesteps(10)
    ts = ref.timesteps.tolist()
    assert ts == list(range(999, 0, -100))
    s = schedule_of(ref)
    model = gaussian_denoiser(s, kind)
    x = x_ref = torch.randn(2, 1, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    for t, t_prev in zip(ts, ts[1:] + [-1], strict=True):
        out = model(x, torch.full((2,), t))
        x_ref, x0_ref = ref.step(out, t, x)
        x, x0 = samplers.ddim_step(out, x, t, t_prev, s, prediction=kind)
        torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)
        # eps -> x0 divides by sqrt(alpha_bar_t) (0.0064 at t = 999): float32 rounding grows with it.
        x0_atol = 1e-5 / math.sqrt(s.alphas_cumprod[t].item())
        torch.testing.assert_close(x0, x0_ref, rtol=1e-5, atol=x0_atol)
    torch.testing.assert_close(x, x0)  # eta = 0 step to alpha_bar = 1 returns the x0 prediction


def test_monai_ddim_previous_timestep_disagrees_with_its_own_list():
    """Documents the MONAI 1.6 discrepancy this module avoids (see samplers' docstring)."""
    from monai.networks.schedulers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    ref.set_timesteps(10)
    assert ref.timesteps[:2].tolist() == [999, 888]
    s = schedule_of(ref)
    gen = torch.Generator().manual_seed(3)
    x_t, out = torch.randn(1, 1, 2, 4, 4, generator=gen), torch.randn(1, 1, 2, 4, 4, generator=gen)
    monai_prev, _ = ref.step(out, 111, x_t)
    to_11, _ = samplers.ddim_step(out, x_t, 111, 11, s, prediction="epsilon")  # 111 - 1000 // 10
    to_list, _ = samplers.ddim_step(out, x_t, 111, 0, s, prediction="epsilon")  # the list's next entry
    torch.testing.assert_close(monai_prev, to_11, rtol=1e-5, atol=1e-5)
    assert (monai_prev - to_list).abs().max() > 1e-2, "MONAI now steps along its list: update the notes"


@pytest.mark.parametrize("kind", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("t", [999, 500, 1, 0])
def test_ddpm_step_equals_monai_with_the_same_noise(kind, t):
    from monai.networks.schedulers import DDPMScheduler

    monai_pred = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}[kind]
    ref = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type=monai_pred)
    s = schedule_of(ref)
    gen = torch.Generator().manual_seed(4)
    x_t, out = torch.randn(2, 4, 2, 4, 4, generator=gen), torch.randn(2, 4, 2, 4, 4, generator=gen)
    expected, x0_ref = ref.step(out, t, x_t, generator=torch.Generator().manual_seed(5))
    z = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))  # the draw MONAI makes
    ours, x0 = samplers.ddpm_step(out, x_t, t, s, prediction=kind, noise=z if t > 0 else None)
    torch.testing.assert_close(x0, x0_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_ddim_with_eta_one_on_consecutive_steps_is_the_ddpm_posterior():
    """Song et al. 2021, sec. 4.1: eta = 1 recovers the DDPM posterior of Ho et al. 2020."""
    s = schedules.make_schedule("cosine", num_train_timesteps=50)
    gen = torch.Generator().manual_seed(6)
    for t in range(50):
        x_t, out, z = (torch.randn(1, 1, 2, 2, 2, generator=gen, dtype=torch.float64) for _ in range(3))
        a, _ = samplers.ddim_step(out, x_t, t, t - 1, s, prediction="v", eta=1.0, noise=z)
        b, _ = samplers.ddpm_step(out, x_t, t, s, prediction="v", noise=z)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Sampler behaviour
# ---------------------------------------------------------------------------------------------


def test_ddim_with_eta_zero_is_deterministic():
    s = schedules.make_schedule("linear")
    model = Denoiser(gaussian_denoiser(s, "v"), "v", s)
    x_T = torch.randn(2, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    runs = [
        samplers.ddim(
            model,
            x_T.shape,
            num_steps=20,
            x_T=x_T,
            generator=torch.Generator().manual_seed(seed),
        )
        for seed in (1, 2)
    ]
    assert torch.equal(runs[0], runs[1])
    stochastic = [
        samplers.ddim(
            model,
            x_T.shape,
            num_steps=20,
            x_T=x_T,
            eta=1.0,
            generator=torch.Generator().manual_seed(seed),
        )
        for seed in (1, 2)
    ]
    assert not torch.allclose(stochastic[0], stochastic[1])


@pytest.mark.parametrize("name", sorted(samplers.SAMPLERS))
def test_every_sampler_draws_from_the_gaussian_data_distribution(name):
    """With the exact denoiser, samples follow N(MU, SIGMA^2); ddpm needs all T steps, ddim a few dozen."""
    s = schedules.make_schedule("linear")
    sampler = samplers.get_sampler(name)
    num_steps = s.num_train_timesteps if name == "ddpm" else 100
    x = sampler(
        Denoiser(gaussian_denoiser(s, "epsilon"), "epsilon", s),
        (4, 1, 4, 8, 8),
        num_steps=num_steps,
        generator=torch.Generator().manual_seed(0),
    )
    assert x.mean().item() == pytest.approx(MU, abs=0.05)
    assert x.std().item() == pytest.approx(SIGMA, abs=0.05)


def test_ddpm_refuses_fewer_steps_than_training_timesteps():
    s = schedules.make_schedule("linear")
    with pytest.raises(ValueError, match=r"T=1000.*got 50.*consecutive timesteps.*'ddim'"):
        samplers.ddpm(Denoiser(gaussian_denoiser(s), "epsilon", s), (1, 1, 2, 2, 2), num_steps=50)


def test_get_sampler_names_the_registered_samplers():
    assert samplers.get_sampler("ddim") is samplers.ddim
    with pytest.raises(ValueError, match=r"'dpm\+\+'.*\['ddim', 'ddpm'\]"):
        samplers.get_sampler("dpm++")


@pytest.mark.parametrize(
    ("name", "num_steps", "kwargs"),
    [
        ("ddpm", 20, {}),
        ("ddim", 7, {}),
        ("ddim", 7, {"spacing": "leading"}),
        ("ddim", 7, {"spacing": "trailing"}),
    ],
)
def test_samplers_give_the_model_the_training_timestep_scale(name, num_steps, kwargs):
    T = 20
    s = schedules.make_schedule("linear", num_train_timesteps=T, beta_end=0.2)
    model = Recorder(gaussian_denoiser(s, "v"))
    cond = torch.zeros(3, 1, 2, 2, 2)
    calls = []
    samplers.get_sampler(name)(
        Denoiser(lambda x, t: model(x[:, :1], t), "v", s, cond=cond),
        (3, 1, 2, 2, 2),
        num_steps=num_steps,
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, t, x_t, x0: calls.append((i, t)),
        **kwargs,
    )
    assert len(model.timesteps) == num_steps and [i for i, _ in calls] == list(range(num_steps))
    for ts, (_, t) in zip(model.timesteps, calls, strict=True):
        assert ts.dtype == torch.long and ts.shape == (3,)  # as in training: raw integer indices (B,)
        assert 0 <= ts.min() and ts.max() <= T - 1 and bool((ts == t).all())
    expected = (
        list(range(T - 1, -1, -1))
        if name == "ddpm"
        else samplers.ddim_timesteps(T, num_steps, **kwargs).tolist()
    )
    assert [t for _, t in calls] == expected
    inverted = Recorder(gaussian_denoiser(s, "v"))
    samplers.ddim_invert(Denoiser(inverted, "v", s), torch.zeros(3, 1, 2, 2, 2), num_steps=7)
    assert all(ts.dtype == torch.long and 0 <= ts.min() and ts.max() <= T - 1 for ts in inverted.timesteps)


@pytest.mark.parametrize("name", sorted(samplers.SAMPLERS))
def test_clip_x0_none_leaves_latents_unclipped(name):
    s = schedules.make_schedule("linear", num_train_timesteps=20, beta_end=0.2)

    def constant_x0(x, t):
        return torch.full_like(x, 3.0)

    def run(clip):
        seen = []
        samplers.get_sampler(name)(
            Denoiser(constant_x0, "x0", s),
            (1, 1, 2, 2, 2),
            num_steps=20,
            clip_x0=clip,
            generator=torch.Generator().manual_seed(0),
            callback=lambda i, t, x_t, x0: seen.append(x0),
        )
        return torch.stack(seen)

    assert bool((run(None) == 3.0).all())
    assert bool((run((-1.0, 1.0)) == 1.0).all())


# ---------------------------------------------------------------------------------------------
# Inversion
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["epsilon", "v"])
def test_ddim_inversion_round_trip_with_the_exact_gaussian_denoiser(kind):
    """Invert then sample returns x0; the error is first order in the step (measured 5.1e-2 at 100
    steps and 5.0e-3 at 1000 steps, linear schedule)."""
    s = schedules.make_schedule("linear")
    model = Denoiser(gaussian_denoiser(s, kind), kind, s)
    x0 = MU + SIGMA * torch.randn(
        2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    errors = {}
    for n in (100, 1000):
        x_T = samplers.ddim_invert(model, x0, num_steps=n)
        x_rec = samplers.ddim(model, x0.shape, num_steps=n, x_T=x_T)
        errors[n] = (x_rec - x0).abs().max().item()
    assert x_T.std().item() == pytest.approx(1.0, abs=0.1)  # lands on the prior N(0, I)
    assert errors[100] < 0.1 and errors[1000] < 0.01
    assert errors[100] / errors[1000] > 5


def test_ddim_inversion_round_trip_with_a_tiny_random_net():
    torch.manual_seed(0)
    net = TinyDenoiser(in_ch=2, out_ch=1, width=8, emb=8).eval()
    s = schedules.make_schedule("linear")
    gen = torch.Generator().manual_seed(1)
    x0, cond = 0.5 * torch.randn(1, 1, 4, 8, 8, generator=gen), torch.randn(1, 1, 4, 8, 8, generator=gen)
    denoiser = Denoiser(net, "v", s, cond=cond)
    x_T = samplers.ddim_invert(denoiser, x0, num_steps=200)
    x_rec = samplers.ddim(denoiser, x0.shape, num_steps=200, x_T=x_T)
    assert (x_rec - x0).abs().max().item() < 0.05  # measured ~1e-2


# ---------------------------------------------------------------------------------------------
# K samples
# ---------------------------------------------------------------------------------------------


def test_sample_k_merges_batches_exactly_and_repeats_the_condition_per_draw():
    cond = torch.arange(2, dtype=torch.float32).view(2, 1, 1, 1, 1).expand(2, 1, 2, 2, 2)

    def stub(denoiser, shape, *, generator=None, **kwargs):
        assert torch.equal(denoiser.cond, cond.repeat(shape[0] // 2, 1, 1, 1, 1))  # draws stacked as (m b)
        return torch.randn(shape, generator=generator) + denoiser.cond

    s = schedules.make_schedule("linear", num_train_timesteps=10)
    denoiser = Denoiser(lambda x, t: x, "epsilon", s, cond=cond)
    mean, std = sample_statistics.sample_k(
        stub, denoiser, (2, 1, 2, 2, 2), k=5, batch_size=2, generator=torch.Generator().manual_seed(0)
    )
    replay = torch.Generator().manual_seed(0)
    draws = torch.cat([torch.randn((m * 2, 1, 2, 2, 2), generator=replay) for m in (2, 2, 1)])
    draws = draws.view(5, 2, 1, 2, 2, 2) + cond
    torch.testing.assert_close(mean, draws.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(std, draws.std(0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="x_T"):
        sample_statistics.sample_k(stub, denoiser, (2, 1, 2, 2, 2), k=2, x_T=torch.zeros(2, 1, 2, 2, 2))


def test_sample_k_uncertainty_of_ddim_matches_the_data_spread():
    s = schedules.make_schedule("linear")
    mean, std = sample_statistics.sample_k(
        "ddim",
        Denoiser(gaussian_denoiser(s, "v"), "v", s),
        (1, 1, 2, 4, 4),
        k=64,
        batch_size=16,
        generator=torch.Generator().manual_seed(0),
        num_steps=50,
    )
    assert mean.shape == std.shape == (1, 1, 2, 4, 4)
    assert mean.mean().item() == pytest.approx(MU, abs=0.05)
    assert std.mean().item() == pytest.approx(SIGMA, abs=0.05)


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def _psnr(x, ref, data_range=2.0):
    return 10 * math.log10(data_range**2 / ((x - ref) ** 2).mean().item())


@pytest.mark.slow
def test_tiny_model_overfits_one_phantom_and_ddim_recovers_it():
    """v-prediction + min-SNR training on one 1x1x4x8x8 phantom, then 20 DDIM steps (eta = 0).
    Measured over 4 seeds: final loss ~0.0017, PSNR 29-33 dB (the conditioning alone: 18.8 dB)."""
    torch.manual_seed(0)
    z, y, x = (
        torch.linspace(-1, 1, 4)[:, None, None],
        torch.linspace(-1, 1, 8)[None, :, None],
        torch.linspace(-1, 1, 8)[None, None, :],
    )
    target = (
        0.8 * torch.exp(-((x - 0.2) ** 2 + y**2 + z**2) / 0.3) - 0.4 + 0.3 * ((x > 0) & (y < 0)).float()
    )[None, None]
    cond = target.clone()
    cond[:, :, 1::2] = 0.0  # thick-slice-like condition: every other slice missing
    s = schedules.make_schedule("linear")
    net = TinyDenoiser(in_ch=2, out_ch=1)
    steps = 400
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    batch, cond_batch = target.repeat(8, 1, 1, 1, 1), cond.repeat(8, 1, 1, 1, 1)
    history = []
    for _ in range(steps):
        loss, _ = losses.diffusion_loss(
            Denoiser(net, "v", s, cond=cond_batch), batch, min_snr_gamma=5.0, generator=gen
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_decay.step()
        history.append(loss.item())
    assert sum(history[-50:]) / 50 < 0.006
    assert sum(history[-50:]) < 0.2 * sum(history[:50])

    net.eval()
    sample = samplers.ddim(
        Denoiser(net, "v", s, cond=cond.repeat(2, 1, 1, 1, 1)),
        (2, 1, 4, 8, 8),
        num_steps=20,
        generator=torch.Generator().manual_seed(1),
    )
    assert _psnr(sample, target) > 26.0
    assert _psnr(sample, target) > _psnr(cond, target) + 5.0
    # Negative control: sampling with the wrong parameterization fails badly.
    wrong = samplers.ddim(
        Denoiser(net, "epsilon", s, cond=cond.repeat(2, 1, 1, 1, 1)),
        (2, 1, 4, 8, 8),
        num_steps=20,
        generator=torch.Generator().manual_seed(1),
    )
    assert _psnr(wrong, target) < 10.0
    # A training check on P as well: the network's x0 at a mid timestep is close to the target.
    with torch.no_grad():
        t = torch.full((2,), 300)
        x_t = P.q_sample(target.repeat(2, 1, 1, 1, 1), t, torch.randn(2, 1, 4, 8, 8, generator=gen), s)
        out = Denoiser(net, "v", s, cond=cond.repeat(2, 1, 1, 1, 1))(x_t, t)
        x0, _ = P.predict_x0_eps("v", out, x_t, t, s)
    assert _psnr(x0, target) > 20.0


# ---------------------------------------------------------------------------------------------
# Mutation survivors (issue 12.6, bench/results/mutation.md): what the tests above let change
# ---------------------------------------------------------------------------------------------


def test_ddim_step_refuses_a_previous_timestep_not_below_t_or_before_the_clean_end():
    """Kills ``-1 <= t_prev < t`` -> ``<= t`` and ``-1`` -> ``-2`` (a chain that stalls or overshoots)."""
    s = schedules.make_schedule("linear", num_train_timesteps=10)
    x = torch.zeros(1, 1, 1, 2, 2)
    for t, t_prev in ((5, 5), (5, -2)):
        with pytest.raises(ValueError, match=r"-1 <= t_prev < t"):
            samplers.ddim_step(x, x, t, t_prev, s, prediction="epsilon")


def _draws_after(seed: int, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The generator state after ``count`` standard normal draws of ``shape``."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(count):
        torch.randn(shape, generator=g)
    return g.get_state()


@pytest.mark.parametrize(("name", "eta", "draws"), [("ddpm", 0.0, 9), ("ddim", 0.0, 0), ("ddim", 1.0, 4)])
def test_samplers_draw_noise_only_where_a_step_uses_it(name, eta, draws):
    """ddpm draws T-1 noises (none at t = 0), ddim with eta = 0 none, with eta > 0 one per step: a shared
    generator (``sample_k``'s batches) then continues the same stream. Kills ``t > 0`` -> ``t >= 0`` and
    ``eta > 0`` -> ``eta >= 0`` (extra draws shift every later batch of a seeded run)."""
    s = schedules.make_schedule("linear", num_train_timesteps=10)
    shape = (2, 1, 2, 3, 3)
    g = torch.Generator().manual_seed(7)
    num_steps = 10 if name == "ddpm" else 4
    samplers.get_sampler(name)(Denoiser(gaussian_denoiser(s), "epsilon", s), shape, num_steps=num_steps,
                               generator=g, eta=eta, x_T=torch.zeros(shape))
    assert torch.equal(g.get_state(), _draws_after(7, draws, shape))


@pytest.mark.parametrize("name", sorted(samplers.SAMPLERS))
def test_samplers_run_without_a_generator(name):
    """The global RNG when no generator is given. Kills ``generator is not None`` -> ``is None`` in the
    noise helper (which then reads ``None.device``, or ignores the generator's device)."""
    s = schedules.make_schedule("linear", num_train_timesteps=10)
    num_steps = 10 if name == "ddpm" else 4
    torch.manual_seed(0)
    x = samplers.get_sampler(name)(Denoiser(gaussian_denoiser(s), "epsilon", s), (1, 1, 2, 3, 3),
                                   num_steps=num_steps, eta=1.0)
    assert x.shape == (1, 1, 2, 3, 3) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_one_step_ddim_inversion_starts_from_the_clean_end():
    """One step from alpha_bar = 1: x_T = sqrt(ab) x0 + sqrt(1 - ab) eps exactly, with a constant eps.
    Kills the clean end ``-1`` of the inversion's timestep list taken as timestep 1."""
    s = schedules.make_schedule("linear")
    x0 = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64).reshape(1, 1, 2, 2, 2)
    const = Denoiser(lambda x, t: torch.full_like(x, 0.5), "epsilon", s)
    ab = float(s.alphas_cumprod[-1])
    expected = ab**0.5 * x0 + (1.0 - ab) ** 0.5 * 0.5
    torch.testing.assert_close(samplers.ddim_invert(const, x0, num_steps=1), expected, rtol=0, atol=1e-12)
