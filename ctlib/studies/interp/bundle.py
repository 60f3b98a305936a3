"""Everything inference needs from a latent-diffusion run, loaded once: ``Interpolator``.

The checkpoints of a diffusion run and of its VAE run are read by ``ctlib.studies.interp.run_kinds``
(``DiffusionRun``) and ``ctlib.models.vae_run`` (``VAERun``); this module puts them together for sampling.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from ctlib.data import windows
from ctlib.device import resolve_device  # re-exported: bundle.resolve_device
from ctlib.models import vae as vae_module
from ctlib.studies.interp import run_kinds
from ctlib.studies.interp.latent_diffusion import InterpDiffusionSpec


@dataclasses.dataclass
class Interpolator:
    """A frozen per-slice VAE and 3D latent U-Net with how they were trained (spec, scale, window)."""

    vae: nn.Module
    unet: nn.Module
    spec: InterpDiffusionSpec
    scale_factor: float
    window: windows.HUWindow
    depth_multiple: int  # every latent size the U-Net sees is a multiple of this
    device: torch.device
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # run ids, checkpoint paths, weights
    regressor: nn.Module | None = None  # the baseline of a residual model with spec.baseline == "regressor"

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.vae = self.vae.to(self.device).eval().requires_grad_(False)
        self.unet = self.unet.to(self.device).eval().requires_grad_(False)
        if (self.spec.baseline == "regressor") != (self.regressor is not None):
            raise ValueError(
                f"baseline {self.spec.baseline!r}: a regressor goes with baseline 'regressor' only"
            )
        if self.regressor is not None:
            self.regressor = self.regressor.to(self.device).eval().requires_grad_(False)

    @property
    def vae_factor(self) -> int:
        """In-plane downsampling of the VAE (``vae.downsampling_factor``)."""
        return vae_module.downsampling_factor(self.vae)

    @property
    def inplane_multiple(self) -> int:
        """Image height and width must be multiples of this (VAE factor times the U-Net's multiple)."""
        return self.vae_factor * self.depth_multiple


def load_interpolator(
    diffusion_run_id_or_checkpoint: str | os.PathLike,
    *,
    vae_checkpoint: str | os.PathLike | None = None,
    use_ema: bool = True,
    device: str | torch.device = "auto",
) -> Interpolator:
    """Load a latent-diffusion interpolator from a diffusion run id (or run folder, or ``.pt`` file).

    The VAE comes from ``vae_checkpoint`` when given, else from the run named by the diffusion run's
    ``vae_run_id``; a residual model over the regressor also loads the regressor run it was trained with
    (``regressor_run_id``). ``use_ema`` samples with the EMA weights (the usual choice). A missing run, a
    missing or corrupt checkpoint, or one of another kind raises ``CTInputError``
    (``run_kinds.DiffusionRun`` and ``VAERun`` read the checkpoints).
    """
    diffusion_run = run_kinds.DiffusionRun.load(diffusion_run_id_or_checkpoint, use_ema=use_ema)
    vae_run = diffusion_run.load_vae(vae_checkpoint)
    baseline = diffusion_run.load_regressor() if diffusion_run.spec.baseline == "regressor" else None
    return Interpolator(
        vae=vae_run.vae,
        unet=diffusion_run.unet,
        spec=diffusion_run.spec,
        scale_factor=diffusion_run.scale_factor,
        window=diffusion_run.window,
        depth_multiple=diffusion_run.depth_multiple,
        device=resolve_device(device),
        regressor=None if baseline is None else baseline.model,
        meta={
            "diffusion_checkpoint": str(diffusion_run.path),
            "vae_checkpoint": str(vae_run.path),
            "vae_run_id": diffusion_run.vae_run_id,
            "regressor_run_id": diffusion_run.regressor_run_id,
            "preprocess_run_id": diffusion_run.preprocess_run_id,
            "weights": diffusion_run.weights,
        },
    )
