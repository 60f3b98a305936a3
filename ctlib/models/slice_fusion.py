"""Slice-wise 3D CT encoder: a 2D network per (group of) axial slice(s), then a transformer over slices.

As in fVLM / CT-FM style encoders: every axial slice group ``(slice_group, H, W)`` goes through a 2D
ResNet (MONAI, randomly initialised; ``conv1_t_stride=2``) or a 2D ViT, its pooled feature is projected
and LayerNorm-ed per slice (per-slice normalization), a learned CLS token is prepended and a rotary
transformer (``rope_transformer``) fuses the slices; the CLS output is the volume feature.
Input ``(B, 1, D, H, W)`` in [-1, 1]; ``D`` must be a multiple of ``slice_group``.

``local_weights_path`` loads a user's pretrained 2D slice-encoder weights (safetensors, or a torch state
dict read with ``weights_only=True``); the keys must match the configured 2D network. Nothing is ever
downloaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange
from monai.networks.nets import ViT
from monai.networks.nets.resnet import ResNet
from torch import nn

from ctlib.config import ConfigDict
from ctlib.models.rope_transformer import RopeTransformer

SliceNet = Literal["resnet", "vit"]


@dataclasses.dataclass
class SliceFusionConfig(ConfigDict):
    """Hyper-parameters of ``SliceFusionEncoder``."""

    slice_net: SliceNet = "resnet"
    slice_group: int = 2  # adjacent slices stacked as the 2D network's channels
    resnet_widths: tuple[int, ...] = (16, 32, 64, 128)
    resnet_layers: tuple[int, ...] = (1, 1, 1, 1)
    vit_image_size: int = 64  # ViT only: H = W of the input slices
    vit_patch: int = 16
    vit_hidden: int = 192
    vit_layers: int = 4
    vit_heads: int = 3
    feature_dim: int = 128  # slice feature and fusion width
    fusion_depth: int = 2
    fusion_heads: int = 4
    local_weights_path: str = ""  # optional 2D slice-encoder weights (user's own file; never downloaded)

    def __post_init__(self) -> None:
        if self.slice_net not in ("resnet", "vit"):
            raise ValueError(f"slice_net must be 'resnet' or 'vit', got {self.slice_net!r}")
        if self.slice_group < 1 or self.feature_dim % self.fusion_heads:
            raise ValueError("slice_group must be >= 1 and feature_dim divisible by fusion_heads")


def slice_network(config: SliceFusionConfig) -> tuple[nn.Module, int]:
    if config.slice_net == "resnet":
        net = ResNet(
            "basic",
            list(config.resnet_layers),
            list(config.resnet_widths),
            spatial_dims=2,
            n_input_channels=config.slice_group,
            conv1_t_stride=2,
            feed_forward=False,
        )
        return net, int(config.resnet_widths[-1])
    net = ViT(
        in_channels=config.slice_group,
        img_size=config.vit_image_size,
        patch_size=config.vit_patch,
        hidden_size=config.vit_hidden,
        mlp_dim=4 * config.vit_hidden,
        num_layers=config.vit_layers,
        num_heads=config.vit_heads,
        spatial_dims=2,
    )
    return net, config.vit_hidden


def load_local_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state dict into ``module`` strictly, from safetensors or torch (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file (local_weights_path)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = [line.strip() for line in str(err).splitlines() if "size mismatch" in line][:1]
        raise ValueError(f"{path}: weights do not fit the slice encoder: {' '.join(detail)}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: weights do not fit the slice encoder: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )


class SliceFusionEncoder(nn.Module):
    """``(B, 1, D, H, W) -> (B, feature_dim)``: 2D slice features fused by a rotary CLS transformer."""

    def __init__(self, config: SliceFusionConfig) -> None:
        super().__init__()
        self.config = config
        self.slice_net, width = slice_network(config)
        if config.local_weights_path:
            load_local_weights(self.slice_net, config.local_weights_path)
        self.project = nn.Linear(width, config.feature_dim)
        self.slice_norm = nn.LayerNorm(config.feature_dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.feature_dim))
        nn.init.normal_(self.cls, std=0.02)
        self.fusion = RopeTransformer(config.feature_dim, config.fusion_depth, config.fusion_heads)

    def slice_tokens(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + D / slice_group, feature_dim)``: CLS, then one normalized token per slice group."""
        b, c, d, h, w = volume.shape
        g = self.config.slice_group
        if c != 1 or d % g:
            raise ValueError(f"expected (B, 1, D, H, W) with D a multiple of {g}, got {tuple(volume.shape)}")
        slices = rearrange(volume, "b 1 (n g) h w -> (b n) g h w", g=g)
        features = self.slice_net(slices)
        if isinstance(features, tuple):  # MONAI ViT: (normed patch tokens, hidden states): mean of patches
            features = features[0].mean(dim=1)
        tokens = self.slice_norm(self.project(features.reshape(slices.shape[0], -1)))
        tokens = rearrange(tokens, "(b n) c -> b n c", b=b)
        return torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.fusion(self.slice_tokens(volume))[:, 0]

    @torch.no_grad()
    def slice_attention(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, D / slice_group)``: the last fusion layer's CLS-to-slice attention, mean over heads."""
        maps = self.fusion.attention_maps(self.slice_tokens(volume))
        return maps[-1][:, :, 0, 1:].mean(dim=1)
