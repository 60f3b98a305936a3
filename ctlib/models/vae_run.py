"""The VAE run (notebook ``slice_interp/2026-11-23_02_vae``) as one typed object: ``VAERun.load(run_id)``.

A VAE run keeps ``checkpoints/vae.pt``: the ``AutoencoderKL`` weights (bare, or ``vae.*`` of a
``VAELossModule``), ``config["model"]`` (a ``VAEConfig``), the HU-window ``normalization`` record, and
``extra = {scale_factor, preprocess_run_id, step, ...}``; the scale factor is recorded after training
(``record_scale_factor``). Every field is read here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from monai.networks.nets import AutoencoderKL

from ctlib import checkpoint as checkpoint_io
from ctlib.data import windows
from ctlib.errors import CTInputError
from ctlib.models import run_checkpoint
from ctlib.models import vae as vae_module


@dataclasses.dataclass
class VAERun(run_checkpoint.RunKind):
    """A frozen per-slice VAE (eval, no grad) with the window, scale factor and provenance of its training."""

    NAME: ClassVar[str] = "vae"  # checkpoints/vae.pt

    vae: AutoencoderKL
    config: vae_module.VAEConfig
    normalization: dict[str, Any]  # the HU-window record (``windows.normalization_record``)
    window: windows.HUWindow
    scale_factor: float | None  # 1 / std of the latents; None until recorded
    preprocess_run_id: str | None
    step: int | None  # optimizer steps trained
    path: Path  # the checkpoint file

    @property
    def factor(self) -> int:
        """In-plane downsampling ``2**(levels - 1)``."""
        return vae_module.downsampling_factor(self.config)

    @classmethod
    def load(cls, run_id_or_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> VAERun:
        """The VAE of a run id, run folder or ``.pt`` file; ``CTInputError`` when missing or unusable."""
        path, ckpt = run_checkpoint.open_run(run_id_or_path, cls.NAME, "VAE", ("config.model",), map_location)
        try:
            return cls.from_checkpoint(ckpt, path)
        except (ValueError, TypeError, KeyError, RuntimeError) as err:
            raise CTInputError(path, f"unusable VAE checkpoint ({type(err).__name__}: {err})") from None

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], path: str | os.PathLike) -> VAERun:
        """Build from a checkpoint dict already read (``checkpoint.load_checkpoint``)."""
        config = vae_module.VAEConfig.from_dict(ckpt["config"]["model"])
        extra = ckpt["extra"]
        scale = extra.get("scale_factor")
        return cls(
            vae=vae_module.vae_from_state(config, ckpt["model_state"]),
            config=config,
            normalization=ckpt["normalization"],
            window=windows.window_from_record(ckpt["normalization"]),
            scale_factor=None if scale is None else float(scale),
            preprocess_run_id=extra.get("preprocess_run_id"),
            step=extra.get("step"),
            path=Path(path),
        )


def record_scale_factor(
    path: str | os.PathLike, scale_factor: float, *, normalization: dict[str, Any], preprocess_run_id: str
) -> Path:
    """Rewrite a trained VAE checkpoint with its latent scale factor, window record and preprocessing run.

    Everything else (weights, optimizer, scheduler, EMA, RNG, provenance) is kept as written, so a
    resumed run continues from the same state.
    """
    ckpt = checkpoint_io.load_checkpoint(path)
    return checkpoint_io.save_checkpoint(
        path, model_state=ckpt["model_state"], config=ckpt["config"], normalization=normalization,
        extra={**ckpt["extra"], "scale_factor": float(scale_factor), "preprocess_run_id": preprocess_run_id},
        optimizer_state=ckpt["optimizer_state"], scheduler_state=ckpt["scheduler_state"],
        ema_state=ckpt["ema_state"], rng_state=ckpt["rng"] or False, provenance_record=ckpt["provenance"],
    )
