"""Conditional diffusion for dose prediction (an ablation of the U-Net regressor; Ho et al. 2020, Song et al.
2021).

The dose, scaled to ``x0 = 2 * dose_gy / dose_scale_gy - 1`` (0 Gy -> -1, ``dose_scale_gy`` -> +1), is
denoised by MONAI's 3D ``DiffusionModelUNet`` (built by ``ctlib.models.latent_unet`` with one "latent"
channel) conditioned by channel concatenation on the network inputs of ``ctlib.studies.dose.datasets`` (CT,
SDFs, possible-dose mask) and, with ``constraint_channels``, on the constraint vector broadcast as
``K`` constant channels (each entry divided by its scale, as the U-Net's FiLM input). Training and
sampling reuse ``ctlib.diffusion`` (schedules, eps / v / x0 targets, min-SNR-gamma weighting, the
sampler registry) through the denoiser adapter of ``ctlib.diffusion.denoiser``; the U-Net
sees raw timesteps 0..T-1 in both. Sampling clips x0 to the data range [-1, 1] (``unit_range``: 0 Gy to
``dose_scale_gy``) at every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ctlib.diffusion import losses, samplers, spec
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.parameterization import Prediction


@dataclasses.dataclass
class DoseDiffusionSpec(spec.DiffusionSpec):
    """The shared diffusion spec plus dose scaling and constraint conditioning."""

    schedule: str = "cosine"  # "linear" | "scaled_linear" | "cosine"
    dose_scale_gy: float = 80.0  # dose_scale_gy maps to +1, 0 Gy to -1
    constraint_channels: bool = True  # append the scaled constraint vector as constant channels

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dose_scale_gy <= 0:
            raise ValueError(f"dose_scale_gy must be > 0, got {self.dose_scale_gy}")


def dose_to_unit(dose_gy: torch.Tensor, dose_scale_gy: float) -> torch.Tensor:
    """Dose in Gy -> ``2 * dose / dose_scale_gy - 1`` (the diffusion's data space, about [-1, 1])."""
    return 2.0 * dose_gy / dose_scale_gy - 1.0


def unit_to_dose(x: torch.Tensor, dose_scale_gy: float) -> torch.Tensor:
    """Inverse of ``dose_to_unit``, clamped to non-negative dose."""
    return ((x + 1.0) * 0.5 * dose_scale_gy).clamp_min(0.0)


def unit_range(dose_scale_gy: float) -> tuple[float, float]:
    """The data range of the diffusion, ``dose_to_unit`` of 0 Gy and of ``dose_scale_gy``: what sampling clips
    x0 to (a narrower clip, e.g. to (0, 1), would floor every predicted dose at ``dose_scale_gy / 2``)."""
    return (float(dose_to_unit(torch.tensor(0.0), dose_scale_gy)),
            float(dose_to_unit(torch.tensor(float(dose_scale_gy)), dose_scale_gy)))  # fmt: skip


def condition_channels(num_inputs: int, num_constraints: int, spec: DoseDiffusionSpec) -> int:
    """Channels of the condition: the network inputs, plus one per constraint with ``constraint_channels``."""
    return int(num_inputs) + (int(num_constraints) if spec.constraint_channels else 0)


class DoseDiffusion(nn.Module):
    """The denoiser with its spec: ``forward(batch) -> (loss, metrics)`` for ``ctlib.train.loop.train``, and
    ``sampler``.

    ``unet`` is a ``DiffusionModelUNet`` with ``in = 1 + condition_channels(...)`` and ``out = 1``;
    ``depth_multiple`` is ``latent_unet.required_depth_multiple`` (depth is padded to it; H and W must
    be multiples already). ``constraint_scales`` ``(K,)`` divide the constraints (1 for flags).
    """

    def __init__(
        self,
        unet: nn.Module,
        spec: DoseDiffusionSpec,
        *,
        depth_multiple: int,
        constraint_scales: Sequence[float],
    ) -> None:
        super().__init__()
        self.unet = unet
        self.spec = spec
        self.schedule = spec.noise_schedule()
        self.depth_multiple = int(depth_multiple)
        self.register_buffer("constraint_scales", torch.tensor(list(constraint_scales), dtype=torch.float32),
                             persistent=False)

    def condition(self, inputs: torch.Tensor, constraints: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` inputs and ``(B, K)`` constraints -> the condition
        ``(B, C (+ K), D, H, W)``."""
        if not self.spec.constraint_channels:
            return inputs
        planes = (constraints.float() / self.constraint_scales).to(inputs.dtype)
        planes = planes[:, :, None, None, None].expand(-1, -1, *inputs.shape[2:])
        return torch.cat([inputs, planes], dim=1)

    def denoiser(self, cond: torch.Tensor | None = None) -> Denoiser:
        """The U-Net adapted for the samplers: the spec's prediction and schedule, depth padding, ``cond``."""
        prediction: Prediction = self.spec.prediction  # type: ignore[assignment]
        return Denoiser(self.unet, prediction, self.schedule, cond=cond, depth_multiple=self.depth_multiple)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Diffusion loss (min-SNR weighted if the spec says so) of a ``DosePatchDataset`` batch."""
        x0 = dose_to_unit(batch["dose"].float(), self.spec.dose_scale_gy)
        cond = self.condition(batch["inputs"].float(), batch["constraints"])
        loss, info = losses.diffusion_loss(self.denoiser(cond), x0, min_snr_gamma=self.spec.min_snr_gamma)
        return loss, {"mean_t": info["t"].float().mean()}

    def sampler(
        self,
        *,
        num_steps: int = 20,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        name: str = "ddim",
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A dose model ``(inputs (n, C, d, h, w), constraints (n, K)) -> dose_gy (n, 1, d, h, w)`` that
        samples.

        Each call runs the registered sampler ``name`` (DDIM, Song et al. 2021, by default; eta 0 is
        deterministic given the initial noise, drawn from ``generator``) from pure noise, in eval mode,
        and maps the sample back to Gy. Plug it into ``ctlib.studies.dose.inference.predict_dose`` for whole
        volumes: windows are sampled one after the other from the same generator.
        """
        sample = samplers.get_sampler(name)

        def dose_model(inputs: torch.Tensor, constraints: torch.Tensor) -> torch.Tensor:
            was_training = self.training
            self.eval()
            try:
                cond = self.condition(inputs.float(), constraints)
                x = sample(
                    self.denoiser(cond), (inputs.shape[0], 1, *inputs.shape[2:]),
                    num_steps=num_steps, generator=generator, eta=eta,
                    clip_x0=unit_range(self.spec.dose_scale_gy),
                )
            finally:
                self.train(was_training)
            return unit_to_dose(x, self.spec.dose_scale_gy)

        return dose_model
