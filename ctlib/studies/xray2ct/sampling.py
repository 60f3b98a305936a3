"""Sampling reconstructions from the conditional diffusion model: DDIM (Song et al. 2021) with v-prediction,
x0 clamped to the data range plus a small margin (never to [-10, 10]: bug 3 of issue 14), an optional
data-consistency step on the predicted x0 at every step, and K samples per case for a mean and a spread.

The data-consistency step is a ``Denoiser`` whose output is re-expressed after correcting its x0: with
``a, s = sqrt(ab_t), sqrt(1 - ab_t)``, ``eps' = (x_t - a x0') / s`` and ``v' = a eps' - s x0'``, so every
sampler of ``ctlib.diffusion.samplers`` runs it unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ctlib.data import windows
from ctlib.diffusion import parameterization, samplers, schedules
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.spec import DiffusionSpec
from ctlib.studies.xray2ct import normalization, projection
from ctlib.studies.xray2ct.networks import DiffusionX2CT


@dataclasses.dataclass(frozen=True)
class CorrectedDenoiser(Denoiser):
    """A ``Denoiser`` whose implied x0 passes through ``correct`` (e.g. ``projection.SIRTConsistency``)."""

    correct: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = super().__call__(x_t, t)
        if self.correct is None:
            return out
        x0, _ = parameterization.predict_x0_eps(self.prediction, out, x_t, t, self.schedule)
        x0 = self.correct(x0)
        alpha_bar = schedules.extract(self.schedule.alphas_cumprod, t, x_t.ndim)
        a, s = alpha_bar.sqrt().to(x_t.dtype), (1.0 - alpha_bar).sqrt().to(x_t.dtype)
        eps = (x_t - a * x0) / s
        if self.prediction == "v":
            return a * eps - s * x0
        return eps if self.prediction == "epsilon" else x0


@torch.no_grad()
def sample_volumes(
    model: DiffusionX2CT,
    drrs: torch.Tensor,
    spec: DiffusionSpec,
    *,
    num_samples: int = 1,
    num_steps: int = 50,
    eta: float = 0.0,
    consistency_weight: float = 0.0,
    window: windows.HUWindow = normalization.RECON,
    seed: int = 0,
) -> torch.Tensor:
    """``num_samples`` DDIM reconstructions of one case's views ``(V, rows, cols)``: ``(K, D, H, W)`` in
    model units, x0 clamped to ``normalization.clip_range()``; ``consistency_weight > 0`` adds a SIRT
    data-consistency step on x0 at every step."""
    model.eval()
    device = next(model.parameters()).device
    views = drrs.to(device).float()[None].expand(num_samples, -1, -1, -1)
    base = model.denoiser(views, spec)
    geometry = model.config.view_geometry()
    correct = None
    if consistency_weight > 0:
        correct = projection.SIRTConsistency(views[:1], geometry, window, consistency_weight)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    denoiser = CorrectedDenoiser(**fields, correct=correct)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    shape = (num_samples, 1, *geometry.shape)
    volumes = samplers.ddim(
        denoiser, shape, num_steps=num_steps, eta=eta, generator=generator, clip_x0=normalization.clip_range()
    )
    return volumes[:, 0].clamp(*normalization.DATA_RANGE)
