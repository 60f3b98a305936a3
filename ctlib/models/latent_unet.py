"""The 3D latent diffusion U-Net conditioned by channel concatenation (Rombach et al. 2022; Saharia et al.
2022).

Input ``(B, latent + cond, D, h, w)``: the noisy thin-grid latents ``x_t`` and the thick-slice latents
placed on the thin grid, concatenated on channels; output ``(B, latent, D, h, w)`` (eps, v or x0,
as the diffusion code decides). MONAI's ``DiffusionModelUNet`` downsamples every axis by 2 at each
level but the last, so every spatial size must be a multiple of ``2**(levels - 1)``: depth is padded
here (edge replication) and cropped back; in-plane sizes come from the VAE and are checked.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet

from ctlib.config import ConfigDict
from ctlib.models import level_checks


@dataclasses.dataclass
class LatentUNetConfig(ConfigDict):
    """Hyper-parameters of ``monai.networks.nets.DiffusionModelUNet`` (3D)."""

    channels: tuple[int, ...] = (64, 128, 256)  # one entry per level
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_res_blocks: int | tuple[int, ...] = 2
    num_head_channels: int | tuple[int, ...] = 32
    norm_num_groups: int = 32
    latent_channels: int = 4
    cond_channels: int = 4
    use_flash_attention: bool = False  # torch scaled_dot_product_attention in the attention blocks
    resblock_updown: bool = False
    transformer_num_layers: int = 1

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        level_checks.check_levels(
            "LatentUNetConfig", self.channels, self.attention_levels, self.norm_num_groups
        )


def build_latent_unet(config: LatentUNetConfig) -> DiffusionModelUNet:
    """MONAI ``DiffusionModelUNet`` with ``spatial_dims=3``, ``in = latent + cond``, ``out = latent``."""
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=config.latent_channels + config.cond_channels,
        out_channels=config.latent_channels,
        channels=config.channels,
        attention_levels=config.attention_levels,
        num_res_blocks=config.num_res_blocks,
        num_head_channels=config.num_head_channels,
        norm_num_groups=config.norm_num_groups,
        resblock_updown=config.resblock_updown,
        transformer_num_layers=config.transformer_num_layers,
        use_flash_attention=config.use_flash_attention,
    )


def required_depth_multiple(config: LatentUNetConfig) -> int:
    """``2**(levels - 1)``: every spatial size of the U-Net input must be a multiple of it."""
    return 2 ** (len(config.channels) - 1)


def pad_depth(
    latents: torch.Tensor, multiple: int, mode: str = "replicate"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(B, C, D, h, w)`` along D to a multiple of ``multiple``, split evenly front/back:
    ``(padded, pad)``.

    ``pad = (before, after)``; ``crop_depth(padded, pad)`` undoes it. Edge replication by default, so
    the padding looks like the nearest real slices rather than a hard zero wall.
    """
    if latents.ndim != 5:
        raise ValueError(f"pad_depth: expected (B, C, D, h, w), got shape {tuple(latents.shape)}")
    depth = latents.shape[2]
    total = (-depth) % int(multiple)
    pad = (total // 2, total - total // 2)
    if total == 0:
        return latents, pad
    return F.pad(latents, (0, 0, 0, 0, pad[0], pad[1]), mode=mode), pad


def crop_depth(x: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``pad_depth``: drop ``pad[0]`` leading and ``pad[1]`` trailing slices of
    ``(B, C, D, h, w)``."""
    before, after = pad
    return x[:, :, before : x.shape[2] - after]


def check_inplane(config: LatentUNetConfig, shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless the latent h and w of ``shape`` ``(..., h, w)`` suit the U-Net."""
    multiple = required_depth_multiple(config)
    h, w = shape[-2], shape[-1]
    if h % multiple or w % multiple:
        raise ValueError(
            f"latent in-plane size ({h}, {w}) must be a multiple of {multiple} for a "
            f"{len(config.channels)}-level U-Net: choose image patches that are multiples of {multiple} * "
            "the VAE factor"
        )
