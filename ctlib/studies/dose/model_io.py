"""Dose models from their recorded config: what the training notebook builds and checkpoints, and what
evaluation loads.

A dose model config (``config["model"]`` of the checkpoint) is a plain dict:

- ``{"kind": "unet", "net": DoseUNetConfig dict, "loss": name, "loss_options": {...}, "roi_names": [...]}``:
  a ``DoseLoss`` around the FiLM U-Net (weights ``model.*``);
- ``{"kind": "diffusion", "net": LatentUNetConfig dict, "spec": DoseDiffusionSpec dict,
  "constraint_scales": [...], "roi_names": [...]}``: a ``DoseDiffusion`` (weights ``unet.*``; EMA
  weights in the checkpoint's ``ema_state``).

``dose_predictor`` turns either module into the ``(inputs, constraints) -> dose_gy`` callable that
``ctlib.studies.dose.inference.predict_dose`` takes.
A trained run's checkpoint is read by ``ctlib.studies.dose.run_kind.DoseRun``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
from torch import nn

from ctlib.io.openkbp import ROI_NAMES
from ctlib.models import dose_unet, latent_unet
from ctlib.studies.dose import diffusion, losses

ModelKind = Literal["unet", "diffusion"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)


def unet_model_config(
    config: dose_unet.DoseUNetConfig,
    loss: str,
    loss_options: dict[str, Any],
    roi_names: Sequence[str] = ROI_NAMES,
    resolution_factor: int = 1,
) -> dict[str, Any]:
    """The recorded config of a U-Net trained with loss ``loss`` (only the options that loss takes are
    kept) on inputs pooled by ``resolution_factor`` (``ctlib.studies.dose.coarse``; 1: the CT grid)."""
    if int(resolution_factor) < 1:
        raise ValueError(f"resolution_factor must be >= 1, got {resolution_factor}")
    return {
        "kind": "unet",
        "net": config.to_dict(),
        "loss": loss,
        "loss_options": losses.select_options(loss, loss_options),
        "roi_names": [str(n) for n in roi_names],
        "resolution_factor": int(resolution_factor),
    }


def diffusion_model_config(
    config: latent_unet.LatentUNetConfig,
    spec: diffusion.DoseDiffusionSpec,
    constraint_scales: Sequence[float],
    roi_names: Sequence[str] = ROI_NAMES,
) -> dict[str, Any]:
    """The recorded config of a conditional dose diffusion model."""
    return {
        "kind": "diffusion",
        "net": config.to_dict(),
        "spec": spec.to_dict(),
        "constraint_scales": [float(s) for s in constraint_scales],
        "roi_names": [str(n) for n in roi_names],
    }


def build_module(model_config: dict[str, Any]) -> nn.Module:
    """The trainable module (``forward(batch) -> (loss, metrics)``) described by ``model_config``."""
    kind = model_config.get("kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"dose model config: kind must be one of {list(MODEL_KINDS)}, got {kind!r}")
    if kind == "unet":
        net = dose_unet.build_dose_unet(dose_unet.DoseUNetConfig.from_dict(model_config["net"]))
        return losses.DoseLoss(net, model_config["loss"], roi_names=model_config["roi_names"],
                               **model_config["loss_options"])
    config = latent_unet.LatentUNetConfig.from_dict(model_config["net"])
    return diffusion.DoseDiffusion(
        latent_unet.build_latent_unet(config),
        diffusion.DoseDiffusionSpec.from_dict(model_config["spec"]),
        depth_multiple=latent_unet.required_depth_multiple(config),
        constraint_scales=model_config["constraint_scales"],
    )


def required_multiple(model_config: dict[str, Any]) -> int:
    """Every spatial size (U-Net) or H and W (diffusion; depth is padded) must be a multiple of this."""
    levels = len(model_config["net"]["channels"])
    return 2 ** (levels - 1)


def dose_predictor(
    module: nn.Module,
    *,
    sample_steps: int = 20,
    sample_eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(inputs, constraints) -> dose_gy`` of a trained module: the U-Net itself,
    or DDIM sampling for diffusion."""
    if isinstance(module, losses.DoseLoss):
        return module.model
    if isinstance(module, diffusion.DoseDiffusion):
        return module.sampler(num_steps=sample_steps, eta=sample_eta, generator=generator)
    raise TypeError(
        f"dose_predictor: expected a DoseLoss or DoseDiffusion module, got {type(module).__name__}"
    )
