"""The slice-interpolation run kinds as typed objects, each checkpoint field read here once.

- ``DiffusionRun`` (notebook ``2026-11-23_03_diffusion``, ``checkpoints/diffusion.pt``): the latent
  U-Net (``unet.*`` weights of ``LatentDiffusionLoss``, EMA shadow in ``ema_state``), ``config["model"]
  = {unet: LatentUNetConfig, spec: InterpDiffusionSpec}``, the HU window, and ``extra = {vae_run_id,
  preprocess_run_id, scale_factor, regressor_run_id}``; its VAE is the ``VAERun`` named by ``vae_run_id``
  and, for a residual model over the regressor, its baseline the ``RegressorRun`` of ``regressor_run_id``.
- ``RegressorRun`` (notebook ``2026-11-23_05_regressor``, ``checkpoints/regressor.pt``): the
  ``ResidualRegressor`` (and EMA), ``config["model"]`` (a ``RegressorConfig``), the HU window and
  ``extra = {preprocess_run_id, factor, mode}``.

``load`` takes a run id, a run folder or a ``.pt`` file and raises ``CTInputError`` when unusable.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ctlib.data import windows
from ctlib.errors import CTInputError
from ctlib.models import latent_unet, regressor, run_checkpoint
from ctlib.models.vae_run import VAERun
from ctlib.studies.interp.latent_diffusion import InterpDiffusionSpec

_UNUSABLE = (ValueError, TypeError, KeyError, RuntimeError)


@dataclasses.dataclass
class DiffusionRun(run_checkpoint.RunKind):
    """A trained latent U-Net (eval, no grad) with its diffusion spec, window, scale factor and VAE run."""

    NAME: ClassVar[str] = "diffusion"  # checkpoints/diffusion.pt

    unet: nn.Module
    unet_config: latent_unet.LatentUNetConfig
    spec: InterpDiffusionSpec
    normalization: dict[str, Any]
    window: windows.HUWindow
    scale_factor: float
    vae_run_id: str | None
    preprocess_run_id: str | None
    step: int | None
    weights: str  # "ema" or "model"
    path: Path
    regressor_run_id: str | None = None  # the baseline of spec.baseline == "regressor"

    @property
    def depth_multiple(self) -> int:
        """Every latent size the U-Net sees is a multiple of this."""
        return latent_unet.required_depth_multiple(self.unet_config)

    @classmethod
    def load(
        cls, run_id_or_path: str | os.PathLike, *, use_ema: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> DiffusionRun:
        """The U-Net of a diffusion run, with its EMA weights when ``use_ema`` and stored (warns when not)."""
        keys = ("config.model.unet", "config.model.spec", "extra.scale_factor")
        path, ckpt = run_checkpoint.open_run(run_id_or_path, cls.NAME, "diffusion", keys, map_location)
        try:
            unet_config = latent_unet.LatentUNetConfig.from_dict(ckpt["config"]["model"]["unet"])
            spec = InterpDiffusionSpec.from_dict(ckpt["config"]["model"]["spec"])
            window = windows.window_from_record(ckpt["normalization"])
            unet = latent_unet.build_latent_unet(unet_config)
            # LatentDiffusionLoss holds the U-Net as ``unet``: its names (and the EMA's) carry that prefix
            state = {k[len("unet."):]: v for k, v in ckpt["model_state"].items() if k.startswith("unet.")}
            state = state or dict(ckpt["model_state"])
            state, used_ema = run_checkpoint.ema_weights(state, ckpt, use_ema, prefix="unet.")
            unet.load_state_dict(state)
        except _UNUSABLE as err:
            raise CTInputError(path, f"unusable diffusion checkpoint ({type(err).__name__}: {err})") from None
        if use_ema and not used_ema:
            warnings.warn("the diffusion checkpoint holds no EMA weights: sampling with the raw weights",
                          stacklevel=2)
        extra = ckpt["extra"]
        return cls(
            unet=unet.eval().requires_grad_(False), unet_config=unet_config, spec=spec,
            normalization=ckpt["normalization"], window=window, scale_factor=float(extra["scale_factor"]),
            vae_run_id=extra.get("vae_run_id"), preprocess_run_id=extra.get("preprocess_run_id"),
            step=extra.get("step"), weights="ema" if used_ema else "model", path=path,
            regressor_run_id=extra.get("regressor_run_id"),
        )

    def load_vae(self, vae_checkpoint: str | os.PathLike | None = None) -> VAERun:
        """The VAE this U-Net was trained on (``vae_run_id``, or ``vae_checkpoint``), its window checked."""
        if vae_checkpoint is None and not self.vae_run_id:
            raise CTInputError(self.path, "checkpoint names no vae_run_id: pass vae_checkpoint")
        vae_run = VAERun.load(self.vae_run_id if vae_checkpoint is None else Path(vae_checkpoint))
        if (vae_run.window.low, vae_run.window.high) != (self.window.low, self.window.high):
            raise CTInputError(
                self.path,
                f"HU window {self.window} differs from the VAE's {vae_run.window} ({vae_run.path}): "
                "not trained together",
            )
        return vae_run

    def load_regressor(self) -> RegressorRun:
        """The baseline regressor of a residual model (``regressor_run_id``), its window, factor and mode
        checked against this run's."""
        if not self.regressor_run_id:
            raise CTInputError(self.path, f"baseline {self.spec.baseline!r} but the checkpoint names no "
                                          "regressor_run_id")
        run = RegressorRun.load(self.regressor_run_id)
        ours = ((self.window.low, self.window.high), self.spec.factor, self.spec.mode)
        theirs = ((run.window.low, run.window.high), run.factor, run.mode)
        if ours != theirs:
            raise CTInputError(self.path, f"(window, factor, mode) {ours} differ from the regressor's "
                                          f"{theirs} ({run.path}): not trained together")
        return run


@dataclasses.dataclass
class RegressorRun(run_checkpoint.RunKind):
    """A trained residual regressor (eval, no grad) with the window, factor and thick-slice mode it fits."""

    NAME: ClassVar[str] = "regressor"  # checkpoints/regressor.pt

    model: nn.Module
    config: regressor.RegressorConfig
    normalization: dict[str, Any]
    window: windows.HUWindow
    factor: int
    mode: str
    preprocess_run_id: str | None
    step: int | None
    weights: str  # "ema" or "raw"
    path: Path

    @classmethod
    def load(
        cls, run_id_or_path: str | os.PathLike, *, use_ema: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> RegressorRun:
        """The regressor of a run, with its EMA weights when ``use_ema`` and stored."""
        keys = ("config.model", "extra.factor", "extra.mode")
        path, ckpt = run_checkpoint.open_run(run_id_or_path, cls.NAME, "regressor", keys, map_location)
        try:
            config = regressor.RegressorConfig.from_dict(ckpt["config"]["model"])
            model = regressor.build_regressor(config)
            state, used_ema = run_checkpoint.ema_weights(dict(ckpt["model_state"]), ckpt, use_ema)
            model.load_state_dict(state)
            window = windows.window_from_record(ckpt["normalization"])
        except _UNUSABLE as err:
            raise CTInputError(path, f"unusable regressor checkpoint ({type(err).__name__}: {err})") from None
        extra = ckpt["extra"]
        return cls(
            model=model.eval().requires_grad_(False), config=config, normalization=ckpt["normalization"],
            window=window, factor=int(extra["factor"]), mode=str(extra["mode"]),
            preprocess_run_id=extra.get("preprocess_run_id"), step=extra.get("step"),
            weights="ema" if used_ema else "raw", path=path,
        )
