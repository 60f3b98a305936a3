"""Training the X-ray-to-CT reconstructors on a split file: the dataset and the two loss functions that
``ctlib.train.loop.train`` calls (each calls ``model(...)`` itself, so DDP and compile wrappers work).

- Deterministic (X2CT-GAN-style): ``L1(x_hat, x) + projection_weight * projection_loss(x_hat)``.
- Diffusion: the v-prediction loss with min-SNR-gamma weighting (Hang et al. 2023) over the cosine
  schedule (Nichol & Dhariwal 2021, not renormalized: bug 9 of issue 14), plus optionally
  ``projection_weight * alpha_bar_t * projection_loss(x0_hat)``: the implied clean volume is trusted in
  proportion to its signal fraction, so the physics term does not chase the blur of high-noise steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from ctlib.data import windows
from ctlib.diffusion import losses
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.spec import DiffusionSpec
from ctlib.studies.xray2ct import normalization, projection
from ctlib.studies.xray2ct.views import ViewGeometry

# The diffusion recipe of the study: v-prediction, cosine schedule, min-SNR-5 (issue 14).
SPEC = DiffusionSpec(prediction="v", schedule="cosine", num_train_timesteps=1000, min_snr_gamma=5.0)


class PairDataset:
    """``{"volume": (1, D, H, W) in model units, "drrs": (V, rows, cols) line integrals}`` per case."""

    def __init__(self, volumes_hu: np.ndarray, drrs: np.ndarray, window: windows.HUWindow) -> None:
        if len(volumes_hu) != len(drrs):
            raise ValueError(f"PairDataset: {len(volumes_hu)} volumes but {len(drrs)} view pairs")
        self.volumes = normalization.to_model(torch.from_numpy(np.asarray(volumes_hu, np.float32)), window)[
            :, None
        ]
        self.drrs = torch.from_numpy(np.asarray(drrs, np.float32))

    def __len__(self) -> int:
        return int(self.volumes.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"volume": self.volumes[index], "drrs": self.drrs[index]}


@dataclasses.dataclass
class DeterministicLoss:
    """L1 in model units plus the weighted projection loss."""

    geometry: ViewGeometry
    window: windows.HUWindow
    projection_weight: float = 0.1

    def __call__(
        self, batch: dict[str, torch.Tensor], model: nn.Module
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        prediction = model(batch["drrs"])
        l1 = (prediction - batch["volume"]).abs().mean()
        loss, metrics = l1, {"l1": float(l1.detach())}
        if self.projection_weight > 0:
            physics = projection.projection_loss(prediction, batch["drrs"], self.geometry, self.window).mean()
            loss = loss + self.projection_weight * physics
            metrics["projection"] = float(physics.detach())
        metrics["loss"] = float(loss.detach())
        return loss, metrics


@dataclasses.dataclass
class DiffusionLoss:
    """The min-SNR v-prediction loss, plus the signal-weighted projection loss of the implied x0."""

    geometry: ViewGeometry
    window: windows.HUWindow
    spec: DiffusionSpec = dataclasses.field(default_factory=lambda: SPEC)
    projection_weight: float = 0.0

    def __post_init__(self) -> None:
        self.schedule = self.spec.noise_schedule()

    def __call__(
        self, batch: dict[str, torch.Tensor], model: nn.Module
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        drrs = batch["drrs"]
        denoiser = Denoiser(lambda x_t, t: model(x_t, t, drrs), self.spec.prediction, self.schedule)
        loss, info = losses.diffusion_loss(
            denoiser,
            batch["volume"],
            min_snr_gamma=self.spec.min_snr_gamma,
            with_x0=self.projection_weight > 0,
        )
        metrics = {"diffusion": float(loss.detach())}
        if self.projection_weight > 0:
            physics = projection.projection_loss(info["x0_pred"], drrs, self.geometry, self.window)
            signal = self.schedule.alphas_cumprod.to(physics.device)[info["t"]].to(physics.dtype)
            weighted = (signal * physics).mean()
            loss = loss + self.projection_weight * weighted
            metrics["projection"] = float(weighted.detach())
        metrics["loss"] = float(loss.detach())
        return loss, metrics
