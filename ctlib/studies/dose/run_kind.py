"""The dose training run (notebook ``dose/2026-11-23_02_dose_train``) as one typed object: ``DoseRun.load``.

A dose run keeps ``checkpoints/dose_model.pt``: the module of ``model_io.build_module`` (a ``DoseLoss``
around the FiLM U-Net, or a ``DoseDiffusion`` with its EMA weights), ``config["model"]`` (the dose
model config, see ``model_io``), the input ``normalization`` record (HU window, ``sdf_clip_mm``,
``include_pdm``) and ``extra = {preprocess_run_id, roi_names, constraint_names, patch_size, step}``;
its ``params.json`` holds the sliding-window and sampling options it validated with. Every field is
read here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ctlib.data import windows
from ctlib.errors import CTInputError
from ctlib.models import run_checkpoint
from ctlib.runs import record
from ctlib.studies.dose import model_io
from ctlib.studies.dose.patient_file import SDF_CLIP_MM


@dataclasses.dataclass
class DoseRun(run_checkpoint.RunKind):
    """A trained dose model (eval, no grad) with its config, input normalization and validation options."""

    NAME: ClassVar[str] = "dose_model"  # checkpoints/dose_model.pt

    module: nn.Module  # DoseLoss (U-Net) or DoseDiffusion, see model_io.dose_predictor
    model_config: dict[str, Any]
    normalization: dict[str, Any]
    window: windows.HUWindow
    sdf_clip_mm: float
    include_pdm: bool
    preprocess_run_id: str | None
    patch_size: list[int] | None
    step: int | None  # optimizer steps trained
    has_ema: bool  # the checkpoint stores EMA weights
    weights: str  # "ema" or "model": the weights loaded
    parameters: dict[str, Any]  # the resolved parameters of the run (params.json), empty for a loose file
    path: Path

    @property
    def kind(self) -> str:
        """``"unet"`` or ``"diffusion"``."""
        return str(self.model_config["kind"])

    @property
    def variant(self) -> str:
        """The loss name of a U-Net, ``"diffusion"`` for the diffusion model."""
        if self.kind == "diffusion":
            return "diffusion"
        factor = int(self.model_config.get("resolution_factor", 1))
        return str(self.model_config["loss"]) + (f", whole patient pooled x{factor}" if factor > 1 else "")

    @classmethod
    def load(
        cls, run_id_or_path: str | os.PathLike, *, use_ema: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> DoseRun:
        """The model of a run id, run folder or ``.pt`` file, with EMA weights when ``use_ema`` and stored."""
        path, ckpt = run_checkpoint.open_run(run_id_or_path, cls.NAME, "dose model", ("config.model",),
                                             map_location)
        try:
            module = model_io.build_module(ckpt["config"]["model"])
            state, used_ema = run_checkpoint.ema_weights(dict(ckpt["model_state"]), ckpt, use_ema)
            module.load_state_dict(state)
            window = windows.window_from_record(ckpt["normalization"])
        except (ValueError, TypeError, KeyError, RuntimeError) as err:
            raise CTInputError(path, f"unusable dose checkpoint ({type(err).__name__}: {err})") from None
        norm, extra = ckpt["normalization"], ckpt["extra"]
        run_dir = run_checkpoint.run_folder(path)
        parameters = (record.read_json_object(run_dir / "params.json").get("parameters", {})
                      if run_dir is not None else {})
        return cls(
            module=module.to(map_location).eval().requires_grad_(False), model_config=ckpt["config"]["model"],
            normalization=norm, window=window, sdf_clip_mm=float(norm.get("sdf_clip_mm", SDF_CLIP_MM)),
            include_pdm=bool(norm.get("include_pdm", True)), preprocess_run_id=extra.get("preprocess_run_id"),
            patch_size=extra.get("patch_size"), step=extra.get("step"),
            has_ema=ckpt.get("ema_state") is not None, weights="ema" if used_ema else "model",
            parameters=parameters, path=path,
        )
