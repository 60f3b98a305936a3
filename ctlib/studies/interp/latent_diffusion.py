"""Latent diffusion for slice interpolation (Rombach et al. 2022, with a 3D denoiser over 2D latents).

The frozen 2D VAE encodes every axial slice; the target is the latent stack of the thin volume and
the condition is the latent stack of the linear z-interpolation of the thick slices on the thin grid
(the thick slices "placed on the thin grid"), concatenated on channels. Latents are multiplied by the
VAE's scale factor so they have about unit variance. The U-Net sees raw timesteps 0..T-1 both in
training and sampling (both through ``LatentDiffusionLoss.denoiser``).

Residual formulation (``spec.baseline`` "linear" or "regressor"): the condition is the latent stack of a
deterministic estimate B (the linear z-interpolation, or the residual regressor's output) and the target is
the latent difference ``(z(thin) - z(B)) * residual_scale``; the sample is decoded as a difference,
``B + D(z(B) + x0 / residual_scale) - D(z(B))``, so the VAE's own reconstruction error of B cancels and a
model that predicts x0 = 0 (an untrained x0-prediction U-Net: MONAI zero-initializes its output
convolution) returns B exactly. With ``baseline="none"`` the target is z(thin), decoded directly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ctlib.diffusion import losses, spec
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.parameterization import Prediction
from ctlib.models import vae as vae_module

BASELINES = ("none", "linear", "regressor")


@dataclasses.dataclass
class InterpDiffusionSpec(spec.DiffusionSpec):
    """The shared diffusion spec plus the thick-slice simulation the denoiser was trained on."""

    factor: int = 6  # thick spacing / thin spacing
    mode: str = "slab"  # thick-slice simulation: "slab" | "decimate"
    baseline: str = "none"  # residual formulation: "none", "linear" or "regressor" (module docstring)
    residual_scale: float = 1.0  # multiplies the latent difference (about 1 / its std); residual models only

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if not (math.isfinite(self.residual_scale) and self.residual_scale > 0):
            raise ValueError(f"residual_scale must be a finite number > 0, got {self.residual_scale!r}")

    @property
    def residual(self) -> bool:
        """True when the denoiser models the latent difference from a baseline estimate."""
        return self.baseline != "none"


def baseline_images(batch: dict[str, torch.Tensor], regressor: nn.Module | None) -> torch.Tensor:
    """The baseline estimate B of a pair batch in [-1, 1]: ``linear``, or the regressor's output on it."""
    if regressor is None:
        return batch["linear"]
    with torch.no_grad():
        return regressor(batch["linear"].to(next(regressor.parameters()).device))


def encode_pair(
    vae: nn.Module,
    batch: dict[str, torch.Tensor],
    scale_factor: float,
    *,
    chunk: int = 32,
    spec: InterpDiffusionSpec | None = None,
    regressor: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, cond)`` latents ``(B, C, D, h, w)`` of a ``PairPatchDataset`` batch.

    Without a residual ``spec``: thin target, linear condition. With one: the condition is z(B) (B from
    ``baseline_images``; ``regressor`` is required for ``baseline="regressor"``) and the target is
    ``(z(thin) - z(B)) * spec.residual_scale``.
    """
    residual = spec is not None and spec.residual
    if residual and (spec.baseline == "regressor") != (regressor is not None):
        raise ValueError(
            f"baseline {spec.baseline!r}: pass a regressor exactly when the baseline is 'regressor'"
        )
    x0 = vae_module.encode_slices(vae, batch["thin"], scale_factor, chunk=chunk)
    base = baseline_images(batch, regressor if residual else None)
    cond = vae_module.encode_slices(vae, base.to(batch["thin"].device), scale_factor, chunk=chunk)
    if residual:
        x0 = (x0 - cond) * spec.residual_scale
    return x0, cond


def latent_residual_std(
    vae: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    scale_factor: float,
    baseline: str,
    regressor: nn.Module | None = None,
) -> float:
    """Standard deviation of the scaled latent difference z(thin) - z(B) over ``batches`` (the value whose
    inverse is ``residual_scale``, as Rombach et al. 2022 scale the latents themselves)."""
    spec = InterpDiffusionSpec(baseline=baseline)
    diffs = [encode_pair(vae, b, scale_factor, spec=spec, regressor=regressor)[0] for b in batches]
    return float(torch.cat([d.flatten() for d in diffs]).float().std())


class LatentDiffusionLoss(nn.Module):
    """``forward(batch) -> (loss, metrics)``: the diffusion loss on VAE latents of a pair batch.

    Only the U-Net is a parameter; the VAE is frozen and kept out of ``state_dict`` so checkpoints
    hold the denoiser alone (the VAE lives in its own run).
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        *,
        scale_factor: float,
        spec: InterpDiffusionSpec,
        depth_multiple: int,
        regressor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        object.__setattr__(self, "_vae", vae.eval().requires_grad_(False))
        # the frozen baseline regressor (spec.baseline == "regressor") stays out of state_dict, like the VAE
        frozen = None if regressor is None else regressor.eval().requires_grad_(False)
        object.__setattr__(self, "_regressor", frozen)
        self.scale_factor = float(scale_factor)
        self.spec = spec
        self.schedule = spec.noise_schedule()
        self.depth_multiple = int(depth_multiple)

    def denoiser(self, cond: torch.Tensor | None = None) -> Denoiser:
        """The U-Net adapted for the samplers: the spec's prediction and schedule, depth padding, ``cond``."""
        prediction: Prediction = self.spec.prediction  # type: ignore[assignment]
        return Denoiser(self.unet, prediction, self.schedule, cond=cond, depth_multiple=self.depth_multiple)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Encode the batch, draw t and noise, and return the (min-SNR weighted) loss."""
        device = next(self.unet.parameters()).device
        self._vae.to(device)
        if self._regressor is not None:
            self._regressor.to(device)
        tensors = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim == 5}
        x0, cond = encode_pair(
            self._vae, tensors, self.scale_factor, spec=self.spec, regressor=self._regressor
        )
        loss, info = losses.diffusion_loss(self.denoiser(cond), x0, min_snr_gamma=self.spec.min_snr_gamma)
        return loss, {"loss": loss.detach(), "mean_t": info["t"].float().mean()}
