"""Training loss: min-SNR weights against closed forms, targets, timestep scale and conditioning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctlib.diffusion import losses, schedules
from ctlib.diffusion import parameterization as P
from ctlib.diffusion.denoiser import Denoiser


class Recorder(nn.Module):
    """Wraps a denoiser and records the inputs it receives."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.timesteps: list[torch.Tensor] = []
        self.channels: list[int] = []

    def forward(self, x, timesteps):
        self.timesteps.append(timesteps.detach().clone())
        self.channels.append(x.shape[1])
        return self.inner(x, timesteps)


class ConvDenoiser(nn.Module):
    """x (B, C_in, D, H, W), timesteps (B,) -> (B, C_out, D, H, W)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(1, out_ch)

    def forward(self, x, timesteps):
        return self.conv(x) + self.time(timesteps.float()[:, None] / 1000)[:, :, None, None, None]


SNR = torch.tensor([0.0, 1e-6, 0.1, 1.0, 4.999, 5.0, 5.001, 100.0, 1e4], dtype=torch.float64)


def test_min_snr_weights_equal_closed_forms():
    g = 5.0
    m = torch.minimum(SNR, torch.tensor(g, dtype=torch.float64))
    eps_w = losses.min_snr_weight(SNR, gamma=g, kind="epsilon")
    torch.testing.assert_close(eps_w[1:], m[1:] / SNR[1:], rtol=1e-15, atol=0)
    assert eps_w[0].item() == 1.0  # the SNR -> 0 limit of min(SNR, g) / SNR
    torch.testing.assert_close(
        losses.min_snr_weight(SNR, gamma=g, kind="v"), m / (SNR + 1), rtol=1e-15, atol=0
    )
    torch.testing.assert_close(losses.min_snr_weight(SNR, gamma=g, kind="x0"), m, rtol=0, atol=0)
    with pytest.raises(ValueError, match="gamma"):
        losses.min_snr_weight(SNR, gamma=0.0, kind="v")


@pytest.mark.parametrize("kind", ["epsilon", "v", "x0"])
def test_min_snr_weighted_losses_all_equal_min_snr_times_x0_error(kind):
    """Hang et al. 2023: each weight turns its parameterization's squared error
    into min(SNR, g) ||x0 - x0_hat||^2."""
    s = schedules.make_schedule("cosine")
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 3, 50, 400, 800, 990])
    x0, eps = (
        torch.randn(6, 1, 2, 2, 2, generator=gen, dtype=torch.float64),
        torch.randn(6, 1, 2, 2, 2, generator=gen, dtype=torch.float64),
    )
    x_t = P.q_sample(x0, t, eps, s)
    out = P.training_target(kind, x0, eps, t, s) + 0.1 * torch.randn(
        6, 1, 2, 2, 2, generator=gen, dtype=torch.float64
    )
    x0_hat, _ = P.predict_x0_eps(kind, out, x_t, t, s)
    snr_t = schedules.snr(s, t)
    weighted = losses.min_snr_weight(snr_t, gamma=5.0, kind=kind) * (
        out - P.training_target(kind, x0, eps, t, s)
    ).pow(2).flatten(1).sum(1)
    expected = torch.clamp(snr_t, max=5.0) * (x0_hat - x0).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(weighted, expected, rtol=1e-8, atol=0)


@pytest.mark.parametrize("kind", ["epsilon", "v", "x0"])
def test_loss_equals_manual_computation(kind):
    s = schedules.make_schedule("linear", num_train_timesteps=100)
    torch.manual_seed(0)
    model = ConvDenoiser(3, 2)
    gen = torch.Generator().manual_seed(1)
    x0, cond = torch.randn(3, 2, 2, 4, 4, generator=gen), torch.randn(3, 1, 2, 4, 4, generator=gen)
    t, noise = torch.tensor([0, 42, 99]), torch.randn(3, 2, 2, 4, 4, generator=gen)
    loss, info = losses.diffusion_loss(
        Denoiser(model, kind, s, cond=cond), x0, min_snr_gamma=5.0, timesteps=t, noise=noise
    )
    x_t = P.q_sample(x0, t, noise, s)
    target = {"epsilon": noise, "v": P.velocity(x0, noise, t, s), "x0": x0}[kind]
    per_sample = (model(torch.cat([x_t, cond], 1), t) - target).pow(2).mean(dim=(1, 2, 3, 4))
    weight = losses.min_snr_weight(schedules.snr(s, t), gamma=5.0, kind=kind).float()
    torch.testing.assert_close(loss, (weight * per_sample).mean(), rtol=1e-6, atol=0)
    assert info["t"].tolist() == [0, 42, 99]
    loss.backward()
    assert model.conv.weight.grad is not None


def test_loss_is_reproducible_with_a_generator_and_unweighted_by_default():
    s = schedules.make_schedule("linear", num_train_timesteps=100)
    torch.manual_seed(0)
    model = ConvDenoiser(1, 1)
    x0 = torch.randn(4, 1, 2, 4, 4)
    a, info_a = losses.diffusion_loss(Denoiser(model, "v", s), x0, generator=torch.Generator().manual_seed(7))
    b, info_b = losses.diffusion_loss(Denoiser(model, "v", s), x0, generator=torch.Generator().manual_seed(7))
    assert a.item() == b.item() and torch.equal(info_a["t"], info_b["t"])
    assert torch.equal(info_a["weight"], torch.ones(4, dtype=torch.float64))


def test_training_timesteps_are_raw_integers_covering_0_to_T_minus_1():
    T = 10
    s = schedules.make_schedule("linear", num_train_timesteps=T)
    model = Recorder(ConvDenoiser(2, 1))
    x0, cond = torch.randn(64, 1, 1, 2, 2), torch.randn(64, 1, 1, 2, 2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        losses.diffusion_loss(Denoiser(model, "epsilon", s, cond=cond), x0, generator=gen)
    seen = torch.cat(model.timesteps)
    assert all(ts.dtype == torch.long and ts.shape == (64,) for ts in model.timesteps)
    assert seen.min().item() == 0 and seen.max().item() == T - 1  # uniform over the whole range
    assert set(model.channels) == {2}  # the condition is concatenated along channels


def test_monai_unet_trains_through_the_loss():
    from monai.networks.nets import DiffusionModelUNet

    torch.manual_seed(0)
    net = DiffusionModelUNet(
        spatial_dims=3,
        in_channels=8,
        out_channels=4,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
    )
    model = Recorder(net)
    s = schedules.make_schedule("scaled_linear")
    x0, cond = torch.randn(2, 4, 2, 4, 4), torch.randn(2, 4, 2, 4, 4)  # latents and thick-slice latents
    loss, _ = losses.diffusion_loss(
        Denoiser(model, "v", s, cond=cond), x0, min_snr_gamma=5.0, generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert torch.isfinite(loss) and model.channels == [8]
    assert (
        model.timesteps[0].dtype == torch.long
        and 0 <= model.timesteps[0].min() <= model.timesteps[0].max() <= 999
    )


@pytest.mark.parametrize("kind", ["epsilon", "v", "x0"])
def test_with_x0_returns_the_implied_clean_sample_attached_to_the_graph(kind):
    s = schedules.make_schedule("cosine", num_train_timesteps=50)
    torch.manual_seed(0)
    model = ConvDenoiser(1, 1)
    gen = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 1, 2, 4, 4, generator=gen), torch.randn(2, 1, 2, 4, 4, generator=gen)
    t = torch.tensor([3, 40])
    _, info = losses.diffusion_loss(Denoiser(model, kind, s), x0, timesteps=t, noise=noise, with_x0=True)
    x_t = P.q_sample(x0, t, noise, s)
    expected, _ = P.predict_x0_eps(kind, model(x_t, t), x_t, t, s)
    torch.testing.assert_close(info["x0_pred"], expected)
    info["x0_pred"].abs().sum().backward()
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0
    _, plain = losses.diffusion_loss(Denoiser(model, kind, s), x0, timesteps=t, noise=noise)
    assert "x0_pred" not in plain
