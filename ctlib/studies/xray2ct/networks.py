"""The two learned reconstructors of the X-ray-to-CT study, both on ``ViewLifter`` features:

- ``DeterministicX2CT``: lifted views -> MONAI ``BasicUNet`` (3D) -> the volume in [-1, 1] (the
  X2CT-GAN-style baseline, trained with L1 plus a projection loss).
- ``DiffusionX2CT``: the conditional denoiser: ``cat([x_t, lifted views])`` -> MONAI ``DiffusionModelUNet``
  (3D) at full volume resolution, with the raw integer timesteps 0 .. T-1 in training and sampling alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from monai.networks.nets import BasicUNet, DiffusionModelUNet
from torch import nn

from ctlib.config import ConfigDict
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.spec import DiffusionSpec
from ctlib.models import level_checks
from ctlib.studies.xray2ct.lifting import NORM, NORM_GROUPS, LiftConfig, ViewLifter
from ctlib.studies.xray2ct.views import ViewGeometry

KINDS = ("deterministic", "diffusion")


@dataclasses.dataclass
class X2CTConfig(ConfigDict):
    """Everything that rebuilds a reconstructor: its kind, the view geometry, the lifting and the 3D net."""

    kind: str = "diffusion"  # "deterministic" | "diffusion"
    geometry: dict[str, Any] = dataclasses.field(default_factory=lambda: ViewGeometry().to_dict())
    lift: dict[str, Any] = dataclasses.field(default_factory=lambda: LiftConfig().to_dict())
    unet_features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)  # deterministic: BasicUNet widths
    channels: tuple[int, ...] = (16, 32, 64)  # diffusion: DiffusionModelUNet levels
    attention_levels: tuple[bool, ...] = (False, False, False)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    num_head_channels: int = 16

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"X2CTConfig.kind must be one of {KINDS}, got {self.kind!r}")
        self.unet_features = tuple(int(f) for f in self.unet_features)
        if len(self.unet_features) != 6 or any(f % NORM_GROUPS for f in self.unet_features):
            raise ValueError(
                f"X2CTConfig.unet_features: six widths divisible by {NORM_GROUPS}, got {self.unet_features}"
            )
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if self.kind == "diffusion":
            level_checks.check_levels(
                "X2CTConfig", self.channels, self.attention_levels, self.norm_num_groups
            )
        self.view_geometry()  # validates the nested configs
        self.lift_config()

    def view_geometry(self) -> ViewGeometry:
        """The ``ViewGeometry`` of the stored dict."""
        return ViewGeometry.from_dict(self.geometry)

    def lift_config(self) -> LiftConfig:
        """The ``LiftConfig`` of the stored dict."""
        return LiftConfig.from_dict(self.lift)


class DeterministicX2CT(nn.Module):
    """Two views ``(B, V, rows, cols)`` -> volume ``(B, 1, D, H, W)`` in model units."""

    def __init__(self, config: X2CTConfig) -> None:
        super().__init__()
        self.config = config
        self.lifter = ViewLifter(config.view_geometry(), config.lift_config())
        self.unet = BasicUNet(
            spatial_dims=3,
            in_channels=self.lifter.out_channels,
            out_channels=1,
            features=config.unet_features,
            norm=NORM,
        )

    def forward(self, drrs: torch.Tensor) -> torch.Tensor:
        return self.unet(self.lifter(drrs))


class DiffusionX2CT(nn.Module):
    """The denoiser network: ``forward(x_t (B, 1, D, H, W), t (B,), drrs)`` -> prediction like ``x_t``."""

    def __init__(self, config: X2CTConfig) -> None:
        super().__init__()
        self.config = config
        self.lifter = ViewLifter(config.view_geometry(), config.lift_config())
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=1 + self.lifter.out_channels, out_channels=1,
            channels=config.channels, attention_levels=config.attention_levels,
            num_res_blocks=config.num_res_blocks, norm_num_groups=config.norm_num_groups,
            num_head_channels=config.num_head_channels,
        )  # fmt: skip

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, drrs: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([x_t, self.lifter(drrs).to(x_t.dtype)], dim=1), t)

    def denoiser(self, drrs: torch.Tensor, spec: DiffusionSpec) -> Denoiser:
        """The sampling adapter: the views lifted once and concatenated to ``x_t`` at every step."""
        return Denoiser(self.unet, spec.prediction, spec.noise_schedule(), cond=self.lifter(drrs))


def build(config: X2CTConfig) -> DeterministicX2CT | DiffusionX2CT:
    """The network ``config.kind`` names."""
    return DeterministicX2CT(config) if config.kind == "deterministic" else DiffusionX2CT(config)
