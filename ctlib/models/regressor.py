"""The deterministic baseline: a 3D U-Net that corrects linear z-interpolation (residual learning, Kim et al.
2016).

Input ``(B, 1, D, H, W)``: the thick volume linearly upsampled onto the thin grid, window-normalized to
``[-1, 1]`` (channel 0; further channels optional). Output: ``input[:, :1] + net(input)``, so the
network predicts ``thin - linear``. The last 1x1 convolution starts at zero by default, so an
untrained regressor reproduces linear interpolation exactly. Built on MONAI ``BasicUNet``
(4 max-poolings: every spatial size at least 16, ideally a multiple of 16, and more than one
voxel left at the bottom, e.g. D=24, H=W=64 for x2/x4/x6 patches).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.networks.nets import BasicUNet
from torch import nn

from ctlib.config import ConfigDict


@dataclasses.dataclass
class RegressorConfig(ConfigDict):
    """Hyper-parameters of the residual ``BasicUNet`` regressor."""

    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)  # BasicUNet: 5 encoder levels + the last decoder
    in_channels: int = 1
    norm: str = "instance"
    upsample: str = "deconv"  # "deconv", "pixelshuffle" or "nontrainable"
    dropout: float = 0.0
    zero_init_output: bool = True

    def __post_init__(self) -> None:
        self.features = tuple(int(f) for f in self.features)
        if len(self.features) != 6:
            raise ValueError(f"RegressorConfig: BasicUNet needs 6 feature counts, got {self.features}")


class ResidualRegressor(nn.Module):
    """``x[:, :1] + BasicUNet(x)``: predicts the residual between thin CT and its linear interpolation."""

    def __init__(self, config: RegressorConfig) -> None:
        super().__init__()
        self.net = BasicUNet(
            spatial_dims=3,
            in_channels=config.in_channels,
            out_channels=1,
            features=config.features,
            norm=config.norm,
            dropout=config.dropout,
            upsample=config.upsample,
        )
        if config.zero_init_output:
            nn.init.zeros_(self.net.final_conv.weight)
            nn.init.zeros_(self.net.final_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> ``(B, 1, D, H, W)``."""
        if x.ndim != 5 or min(x.shape[2:]) < 16 or math.prod(s // 16 for s in x.shape[2:]) < 2:
            raise ValueError(
                "ResidualRegressor: expected (B, C, D, H, W) with every size >= 16 and more than one voxel "
                f"after 4 poolings (e.g. 16 x 32 x 32), got {tuple(x.shape)}"
            )
        return x[:, :1] + self.net(x)


def build_regressor(config: RegressorConfig) -> ResidualRegressor:
    """The residual 3D regressor from a ``RegressorConfig``."""
    return ResidualRegressor(config)


def regressor_loss(batch: dict[str, Any], model: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1 between ``model(batch["linear"])`` and ``batch["thin"]``:
    a ``loss_fn`` for ``ctlib.train.loop.train``."""
    prediction = model(batch["linear"])
    loss = F.l1_loss(prediction.float(), batch["thin"].float())
    with torch.no_grad():
        linear_l1 = F.l1_loss(batch["linear"].float(), batch["thin"].float())
    return loss, {"l1": loss.detach(), "linear_l1": linear_l1}


def predict_volume(
    model: nn.Module,
    linear: torch.Tensor,
    *,
    roi_size: tuple[int, int, int] = (32, 128, 128),
    overlap: float = 0.25,
    sw_batch_size: int = 1,
) -> torch.Tensor:
    """Whole-volume prediction ``(B, C, D, H, W)`` -> ``(B, 1, D, H, W)`` by Gaussian-blended sliding windows.

    Overlapping ``roi_size`` windows (MONAI ``sliding_window_inference``) keep memory bounded; the
    model runs in eval mode without autograd and its previous mode is restored. Windows are clipped
    to the volume, so a volume smaller than ``roi_size`` along an axis is padded by MONAI.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            return sliding_window_inference(
                linear, roi_size, sw_batch_size, model, overlap=overlap, mode="gaussian",
                sw_device=device, device=linear.device,
            )
    finally:
        model.train(was_training)
