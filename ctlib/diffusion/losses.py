"""Denoising training loss (Ho et al. 2020) for eps / v / x0 prediction, with optional min-SNR-gamma
weighting (Hang et al. 2023), computed through the denoiser adapter (``ctlib.diffusion.denoiser``)."""

from __future__ import annotations

from typing import Any

import torch

from ctlib.diffusion import parameterization
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.parameterization import Prediction
from ctlib.diffusion.schedules import snr


def min_snr_weight(snr_t: torch.Tensor, *, gamma: float, kind: Prediction) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023) that makes each parameterization's MSE equal to
    ``min(SNR, gamma) * ||x0 - x0_hat||^2``: eps ``min(SNR, g) / SNR``, v ``min(SNR, g) / (SNR + 1)``,
    x0 ``min(SNR, g)``."""
    parameterization.check_prediction(kind)
    if not gamma > 0:
        raise ValueError(f"min_snr_weight: gamma must be > 0 (Hang et al. use 5), got {gamma}")
    clipped = torch.clamp(snr_t, max=gamma)
    if kind == "epsilon":
        # min(SNR, g) / SNR written as min(1, g / SNR) so that SNR = 0 gives 1, not 0 / 0.
        return torch.clamp(gamma / snr_t, max=1.0)
    if kind == "v":
        return clipped / (snr_t + 1.0)
    return clipped


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (reproducible across devices),
    moved to ``like``."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def diffusion_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    min_snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    with_x0: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Denoising diffusion loss (Ho et al. 2020, eq. 14), for eps / v / x0 targets, optionally
    min-SNR-gamma weighted (Hang et al. 2023).

    Draws ``t ~ U{0, ..., T-1}`` (raw integer timesteps, the scale the sampler uses too) and
    ``eps ~ N(0, I)`` unless given, forms ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``, and returns
    the batch mean of per-sample ``weight * mean((denoiser(x_t, t) - target)^2)``; the target follows
    the denoiser's prediction and schedule, and its condition (if any) is the batch's.

    x0: (B, C, D, H, W). Returns ``(loss, info)`` with ``info``
    holding the detached ``t``, ``snr``, ``weight`` and ``per_sample`` loss, each of shape (B,); with
    ``with_x0`` also ``x0_pred`` (B, C, D, H, W), the clean sample the output implies (Salimans & Ho 2022
    conversions, unclamped), still attached to the graph so that a loss on it (e.g. a physics loss) trains
    the denoiser.
    """
    schedule, prediction = denoiser.schedule, denoiser.prediction
    batch = x0.shape[0]
    T = schedule.num_train_timesteps
    if timesteps is None:
        device = generator.device if generator is not None else x0.device
        timesteps = torch.randint(0, T, (batch,), generator=generator, device=device)
    t = timesteps.to(device=x0.device, dtype=torch.long)
    if t.shape != (batch,):
        raise ValueError(f"diffusion_loss: timesteps must have shape ({batch},), got {tuple(t.shape)}")
    if noise is None:
        noise = _randn(tuple(x0.shape), generator, x0)

    x_t = parameterization.q_sample(x0, t, noise, schedule)
    target = parameterization.training_target(prediction, x0, noise, t, schedule)
    out = denoiser(x_t, t)
    if out.shape != target.shape:
        raise ValueError(f"diffusion_loss: model output {tuple(out.shape)} != target {tuple(target.shape)}")

    per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    snr_t = snr(schedule, t)
    if min_snr_gamma is None:
        weight = torch.ones_like(snr_t)
    else:
        weight = min_snr_weight(snr_t, gamma=min_snr_gamma, kind=prediction)
    loss = (weight.to(per_sample.dtype) * per_sample).mean()
    info = {
        "t": t.detach(),
        "snr": snr_t.detach(),
        "weight": weight.detach(),
        "per_sample": per_sample.detach(),
    }
    if with_x0:
        info["x0_pred"], _ = parameterization.predict_x0_eps(prediction, out, x_t, t, schedule)
    return loss, info
