"""The U-Net as the samplers' ``model_fn(x, t)``: MONAI's 3D ``DiffusionModelUNet`` with depth padding.

The 3D U-Net downsamples every axis by ``2 ** (levels - 1)``; a latent (or dose) stack whose depth is
not a multiple of that is edge-padded in depth for the call and cropped back, so samplers and losses
can pass any depth. Shared by every study that denoises 3D stacks (slice interpolation, dose).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ctlib.models import latent_unet


def denoiser(unet: nn.Module, depth_multiple: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The sampler's ``model_fn(cat([x_t, cond], 1), t)``: pads depth for the U-Net and crops back."""

    def model_fn(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        padded, pad = latent_unet.pad_depth(x, depth_multiple)
        return latent_unet.crop_depth(unet(padded, timesteps), pad)

    return model_fn
