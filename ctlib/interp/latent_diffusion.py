"""Latent diffusion for slice interpolation (Rombach et al. 2022, with a 3D denoiser over 2D latents).

The frozen 2D VAE encodes every axial slice; the target is the latent stack of the thin volume and
the condition is the latent stack of the linear z-interpolation of the thick slices on the thin grid
(the thick slices "placed on the thin grid"), concatenated on channels. Latents are multiplied by the
VAE's scale factor so they have about unit variance. The U-Net sees raw timesteps 0..T-1 both in
training (``LatentDiffusionLoss``) and sampling (``denoiser``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ctlib.diffusion import losses, schedules
from ctlib.diffusion.parameterization import Prediction, check_prediction
from ctlib.models import latent_unet
from ctlib.models import vae as vae_module
from ctlib.models.config_dict import ConfigDict


@dataclasses.dataclass
class DiffusionSpec(ConfigDict):
    """How the denoiser was trained: parameterization, noise schedule, loss weighting, thick slices."""

    prediction: str = "v"  # "epsilon" | "v" | "x0"
    schedule: str = "scaled_linear"  # "linear" | "scaled_linear" | "cosine"
    num_train_timesteps: int = 1000
    min_snr_gamma: float | None = 5.0  # Hang et al. 2023; None = unweighted
    factor: int = 6  # thick spacing / thin spacing
    mode: str = "slab"  # thick-slice simulation: "slab" | "decimate"

    def __post_init__(self) -> None:
        check_prediction(self.prediction)
        if self.schedule not in ("linear", "scaled_linear", "cosine"):
            raise ValueError(f"schedule must be 'linear', 'scaled_linear' or 'cosine', got {self.schedule!r}")

    def noise_schedule(self) -> schedules.NoiseSchedule:
        """The schedule object the samplers and the loss use."""
        return schedules.make_schedule(self.schedule, num_train_timesteps=self.num_train_timesteps)


def encode_pair(
    vae: nn.Module, batch: dict[str, torch.Tensor], scale_factor: float, *, chunk: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, cond)`` latents ``(B, 4, D, h, w)`` of a ``PairPatchDataset`` batch (thin target, linear condition)."""
    x0 = vae_module.encode_slices(vae, batch["thin"], scale_factor, chunk=chunk)
    cond = vae_module.encode_slices(vae, batch["linear"], scale_factor, chunk=chunk)
    return x0, cond


def denoiser(unet: nn.Module, depth_multiple: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The sampler's ``model_fn(cat([x_t, cond], 1), t)``: pads latent depth for the U-Net and crops back."""

    def model_fn(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        padded, pad = latent_unet.pad_depth(x, depth_multiple)
        return latent_unet.crop_depth(unet(padded, timesteps), pad)

    return model_fn


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
        spec: DiffusionSpec,
        depth_multiple: int,
    ) -> None:
        super().__init__()
        self.unet = unet
        object.__setattr__(self, "_vae", vae.eval().requires_grad_(False))
        self.scale_factor = float(scale_factor)
        self.spec = spec
        self.schedule = spec.noise_schedule()
        self.depth_multiple = int(depth_multiple)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Encode the batch, draw t and noise, and return the (min-SNR weighted) loss."""
        device = next(self.unet.parameters()).device
        self._vae.to(device)
        tensors = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim == 5}
        x0, cond = encode_pair(self._vae, tensors, self.scale_factor)
        prediction: Prediction = self.spec.prediction  # type: ignore[assignment]
        loss, info = losses.diffusion_loss(
            denoiser(self.unet, self.depth_multiple),
            x0,
            cond,
            self.schedule,
            prediction=prediction,
            min_snr_gamma=self.spec.min_snr_gamma,
        )
        return loss, {"loss": loss.detach(), "mean_t": info["t"].float().mean()}
