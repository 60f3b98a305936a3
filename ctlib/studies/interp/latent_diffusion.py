"""Latent diffusion for slice interpolation (Rombach et al. 2022, with a 3D denoiser over 2D latents).

The frozen 2D VAE encodes every axial slice; the target is the latent stack of the thin volume and
the condition is the latent stack of the linear z-interpolation of the thick slices on the thin grid
(the thick slices "placed on the thin grid"), concatenated on channels. Latents are multiplied by the
VAE's scale factor so they have about unit variance. The U-Net sees raw timesteps 0..T-1 both in
training and sampling (both through ``LatentDiffusionLoss.denoiser``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ctlib.diffusion import losses, spec
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.parameterization import Prediction
from ctlib.models import vae as vae_module


@dataclasses.dataclass
class InterpDiffusionSpec(spec.DiffusionSpec):
    """The shared diffusion spec plus the thick-slice simulation the denoiser was trained on."""

    factor: int = 6  # thick spacing / thin spacing
    mode: str = "slab"  # thick-slice simulation: "slab" | "decimate"


def encode_pair(
    vae: nn.Module, batch: dict[str, torch.Tensor], scale_factor: float, *, chunk: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, cond)`` latents ``(B, 4, D, h, w)`` of a ``PairPatchDataset`` batch
    (thin target, linear condition)."""
    x0 = vae_module.encode_slices(vae, batch["thin"], scale_factor, chunk=chunk)
    cond = vae_module.encode_slices(vae, batch["linear"], scale_factor, chunk=chunk)
    return x0, cond


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
    ) -> None:
        super().__init__()
        self.unet = unet
        object.__setattr__(self, "_vae", vae.eval().requires_grad_(False))
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
        tensors = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim == 5}
        x0, cond = encode_pair(self._vae, tensors, self.scale_factor)
        loss, info = losses.diffusion_loss(self.denoiser(cond), x0, min_snr_gamma=self.spec.min_snr_gamma)
        return loss, {"loss": loss.detach(), "mean_t": info["t"].float().mean()}
