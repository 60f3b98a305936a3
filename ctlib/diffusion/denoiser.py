"""The denoiser adapter: a network wrapped once with its parameterization, schedule and condition.

As k-diffusion's ``external.py`` (``DiscreteVDDPMDenoiser``) adapts a model for its samplers, a
``Denoiser`` holds everything the samplers and the training loss would otherwise have to know:

- the prediction the network was trained for (``"epsilon"``, ``"v"`` or ``"x0"``) and the noise
  schedule its raw integer timesteps ``0 .. T-1`` index;
- the condition, concatenated to ``x_t`` along channels (``cat([x_t, cond], 1)``);
- depth padding: MONAI's 3D ``DiffusionModelUNet`` downsamples every axis by ``2 ** (levels - 1)``,
  so a stack whose depth is not a multiple of ``depth_multiple`` is edge-padded in depth for the call
  and cropped back;
- an optional precision context (e.g. bf16 autocast) around the network; the output comes back in
  the dtype of ``x_t``.

Samplers call ``denoiser(x_t, t)`` and read ``denoiser.prediction`` and ``denoiser.schedule``; they
know nothing of conditioning. Shared by every study that denoises 3D stacks (slice interpolation, dose).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
from einops import repeat

from ctlib.diffusion import parameterization
from ctlib.diffusion.parameterization import Prediction
from ctlib.diffusion.schedules import NoiseSchedule
from ctlib.models import latent_unet

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B, C_in, D, H, W), t (B,)) -> out


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """``network`` adapted for sampling and training: ``denoiser(x_t, t)`` -> the network's prediction.

    ``network(x, timesteps)`` is MONAI's ``DiffusionModelUNet`` or any callable of that form; it sees
    ``cat([x_t, cond], 1)`` (``x_t`` alone without ``cond``) with depth padded to ``depth_multiple``.
    ``precision`` is a context factory entered around the network call (default: none).
    """

    network: Network
    prediction: Prediction
    schedule: NoiseSchedule
    cond: torch.Tensor | None = None  # (B, C_cond, D, H, W), concatenated to x_t along channels
    depth_multiple: int = 1
    precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def __post_init__(self) -> None:
        parameterization.check_prediction(self.prediction)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's output for ``x_t`` ``(B, C, D, H, W)`` at raw timesteps ``t`` ``(B,)``, like x_t."""
        x = self._with_condition(x_t)
        padded, pad = latent_unet.pad_depth(x, self.depth_multiple)
        with self.precision():
            out = self.network(padded, t)
        return latent_unet.crop_depth(out, pad).to(x_t.dtype)

    def _with_condition(self, x_t: torch.Tensor) -> torch.Tensor:
        cond = self.cond
        if cond is None:
            return x_t
        if cond.shape[0] != x_t.shape[0] or cond.shape[2:] != x_t.shape[2:]:
            raise ValueError(
                f"Denoiser: condition shape {tuple(cond.shape)} does not match x_t {tuple(x_t.shape)} "
                "outside the channel axis (it is concatenated along dim 1)"
            )
        return torch.cat([x_t, cond.to(dtype=x_t.dtype)], dim=1)

    def x0_eps(
        self, x_t: torch.Tensor, t: int, clip_x0: tuple[float, float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_pred, eps_pred)`` at one raw timestep ``t`` (Ho et al. 2020; Salimans & Ho 2022)."""
        out = self(x_t, torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device))
        return parameterization.predict_x0_eps(self.prediction, out, x_t, t, self.schedule, clip_x0)

    def conditioned(self, cond: torch.Tensor | None) -> Denoiser:
        """The same denoiser with condition ``cond`` ``(B, C_cond, D, H, W)`` (None: unconditional)."""
        return dataclasses.replace(self, cond=cond)

    def repeated(self, m: int) -> Denoiser:
        """The denoiser of ``m`` stacked copies of the batch: the condition repeated as ``(m b) ...``."""
        if self.cond is None:
            return self
        return self.conditioned(repeat(self.cond, "b ... -> (m b) ...", m=m))

    def placement(self) -> tuple[torch.device, torch.dtype]:
        """Device and dtype of a starting noise: the condition's, else the network's, else CPU float32."""
        if self.cond is not None:
            return self.cond.device, self.cond.dtype
        if isinstance(self.network, torch.nn.Module):
            for p in self.network.parameters():
                return p.device, p.dtype
        return torch.device("cpu"), torch.float32
