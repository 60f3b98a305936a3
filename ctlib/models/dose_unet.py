"""The dose U-Net: a 3D residual U-Net conditioned on the constraint vector by FiLM (Perez et al. 2018).

Input ``(B, C, D, H, W)``: the CT window-normalized to ``[-1, 1]``, the signed distance field of every
structure divided by its clip distance, and (optionally) the possible-dose mask, on channels (see
``ctlib.studies.dose.datasets``); the constraint vector ``(B, K)`` (prescriptions and organ-at-risk limits in
Gy, presence flags) conditions every level. Output ``(B, 1, D, H, W)``: dose in Gy, non-negative.

Architecture (MONAI blocks): level 0 is a ``ResidualUnit`` at full resolution, each further level a
strided ``ResidualUnit`` (halves D, H and W); the last level is the bottleneck. The decoder upsamples
(``UpSample``, transposed convolution), concatenates the skip and applies a ``ResidualUnit``. After
every encoder level and every decoder block, feature-wise linear modulation
``h <- h * (1 + gamma(c)) + beta(c)`` with ``(gamma, beta)`` per channel from one MLP of the scaled
constraints ``c = constraints / constraint_scales``. The network predicts ``dose / dose_scale_gy``
through a softplus (or ReLU), so outputs are non-negative and of order 1 inside the target; the head's
bias starts at ``initial_dose_gy``.
Every spatial size must be a multiple of ``2**(levels - 1)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from torch import nn

from ctlib.config import ConfigDict

OutputActivation = Literal["softplus", "relu"]
OUTPUT_ACTIVATIONS: tuple[str, ...] = get_args(OutputActivation)


@dataclasses.dataclass
class DoseUNetConfig(ConfigDict):
    """Hyper-parameters of the FiLM-conditioned residual 3D U-Net."""

    in_channels: int = 12  # CT + 10 structure SDFs + possible-dose mask
    # K: 3 prescriptions + 7 OAR limits (Gy) + 10 presence flags (ctlib.studies.dose.features)
    constraint_dim: int = 20
    channels: tuple[int, ...] = (16, 32, 64, 128)  # one entry per level; the last is the bottleneck
    num_res_units: int = 2  # convolutions per ResidualUnit (MONAI ``subunits``)
    norm: str = "instance"  # MONAI norm name ("instance", "batch", ...)
    dropout: float = 0.0
    film_hidden: int = 64  # hidden width of the constraint MLP
    dose_scale_gy: float = 80.0  # the network predicts dose / dose_scale_gy
    constraint_scales: tuple[float, ...] | None = None  # divides the constraints; None: dose_scale_gy for all
    output_activation: str = "softplus"  # "softplus" or "relu"
    initial_dose_gy: float = 10.0  # the head's bias starts where the output is this dose (a low-dose bath)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) < 2:
            raise ValueError(f"DoseUNetConfig: need at least two levels, got channels={self.channels}")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"DoseUNetConfig.output_activation must be one of {list(OUTPUT_ACTIVATIONS)}, got "
                f"{self.output_activation!r}"
            )
        if self.dose_scale_gy <= 0 or not 0 < self.initial_dose_gy < self.dose_scale_gy:
            raise ValueError(
                f"DoseUNetConfig: need dose_scale_gy > 0 and 0 < initial_dose_gy < dose_scale_gy, got "
                f"{self.dose_scale_gy}, {self.initial_dose_gy}"
            )
        if self.constraint_scales is not None:
            self.constraint_scales = tuple(float(s) for s in self.constraint_scales)
            if len(self.constraint_scales) != self.constraint_dim or min(self.constraint_scales) <= 0:
                raise ValueError(
                    f"DoseUNetConfig: constraint_scales needs {self.constraint_dim} positive entries, got "
                    f"{self.constraint_scales}"
                )


def required_multiple(config: DoseUNetConfig) -> int:
    """``2**(levels - 1)``: every spatial size of the input must be a multiple of it."""
    return 2 ** (len(config.channels) - 1)


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018): ``h * (1 + gamma) + beta`` per channel."""

    def forward(self, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """``h`` ``(B, C, D, H, W)``, ``gamma`` and ``beta`` ``(B, C)`` -> ``(B, C, D, H, W)``."""
        shape = (*gamma.shape, *([1] * (h.ndim - 2)))
        return h * (1.0 + gamma.reshape(shape).to(h.dtype)) + beta.reshape(shape).to(h.dtype)


class DoseUNet(nn.Module):
    """Residual 3D U-Net with FiLM conditioning at every encoder level and decoder block."""

    def __init__(self, config: DoseUNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        unit = dict(
            spatial_dims=3, subunits=config.num_res_units, norm=config.norm, dropout=config.dropout or None
        )
        self.encoder = nn.ModuleList(
            ResidualUnit(in_channels=config.in_channels if i == 0 else ch[i - 1], out_channels=ch[i],
                         strides=1 if i == 0 else 2, **unit)
            for i in range(len(ch))
        )
        self.upsample = nn.ModuleList(
            UpSample(3, in_channels=ch[i + 1], out_channels=ch[i], scale_factor=2, mode="deconv")
            for i in reversed(range(len(ch) - 1))
        )
        self.decoder = nn.ModuleList(
            ResidualUnit(in_channels=2 * ch[i], out_channels=ch[i], **unit)
            for i in reversed(range(len(ch) - 1))
        )
        self.head = Convolution(3, ch[0], 1, kernel_size=1, conv_only=True)
        # Start near initial_dose_gy rather than softplus(0) * scale (55 Gy at 80 Gy): the first steps then
        # learn the dose pattern instead of removing a global offset.
        start = config.initial_dose_gy / config.dose_scale_gy
        bias = math.log(math.expm1(start)) if config.output_activation == "softplus" else start
        nn.init.constant_(self.head.conv.bias, bias)
        # One (gamma, beta) pair per modulated block: encoder levels, then decoder blocks.
        self.film_channels = [*ch, *(ch[i] for i in reversed(range(len(ch) - 1)))]
        self.film_mlp = nn.Sequential(
            nn.Linear(config.constraint_dim, config.film_hidden),
            nn.SiLU(),
            nn.Linear(config.film_hidden, config.film_hidden),
            nn.SiLU(),
            nn.Linear(config.film_hidden, 2 * sum(self.film_channels)),
        )
        self.film = FiLM()
        scales = config.constraint_scales or (config.dose_scale_gy,) * config.constraint_dim
        self.register_buffer("constraint_scales", torch.tensor(scales, dtype=torch.float32), persistent=False)

    def film_parameters(self, constraints: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(gamma, beta)]`` of shape ``(B, C_block)`` for every modulated block,
        from ``constraints`` ``(B, K)``."""
        if constraints.ndim != 2 or constraints.shape[1] != self.config.constraint_dim:
            raise ValueError(
                f"DoseUNet: constraints must be (B, {self.config.constraint_dim}), got "
                f"{tuple(constraints.shape)}"
            )
        out = self.film_mlp(constraints.float() / self.constraint_scales)
        pairs, start = [], 0
        for c in self.film_channels:
            pairs.append((out[:, start : start + c], out[:, start + c : start + 2 * c]))
            start += 2 * c
        return pairs

    def forward(self, x: torch.Tensor, constraints: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, D, H, W)`` and ``constraints`` ``(B, K)``
        -> dose in Gy ``(B, 1, D, H, W)``, >= 0."""
        multiple = required_multiple(self.config)
        if x.ndim != 5 or x.shape[1] != self.config.in_channels or any(s % multiple for s in x.shape[2:]):
            raise ValueError(
                f"DoseUNet: expected (B, {self.config.in_channels}, D, H, W) with D, H, W multiples of "
                f"{multiple}, got {tuple(x.shape)}"
            )
        if constraints.shape[0] != x.shape[0]:
            raise ValueError(
                f"DoseUNet: {constraints.shape[0]} constraint vectors for a batch of {x.shape[0]}"
            )
        film = iter(self.film_parameters(constraints))
        skips = []
        h = x
        for block in self.encoder:
            h = self.film(block(h), *next(film))
            skips.append(h)
        h = skips.pop()
        for up, block in zip(self.upsample, self.decoder, strict=True):
            h = torch.cat([up(h), skips.pop()], dim=1)
            h = self.film(block(h), *next(film))
        out = self.head(h).float()
        scaled = F.softplus(out) if self.config.output_activation == "softplus" else F.relu(out)
        return scaled * self.config.dose_scale_gy


def build_dose_unet(config: DoseUNetConfig) -> DoseUNet:
    """The FiLM-conditioned dose U-Net from a ``DoseUNetConfig``."""
    return DoseUNet(config)
