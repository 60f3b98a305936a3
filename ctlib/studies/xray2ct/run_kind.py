"""An X-ray-to-CT training run (notebooks ``xray2ct/..._03_baseline`` and ``..._04_diffusion``) as one object.

The run keeps ``checkpoints/x2ct_model.pt``: the weights (and EMA weights when trained with one),
``config["model"]`` (``X2CTConfig.to_dict()``, with the view geometry), the input ``normalization`` (the HU
window, ``ctlib.data.windows.normalization_record``) and ``extra = {preprocess_run_id, spec, step}``
(``spec``: the ``DiffusionSpec`` of a diffusion run, None for the deterministic one). Every field is read
here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import ClassVar

import torch

from ctlib.data import windows
from ctlib.diffusion.spec import DiffusionSpec
from ctlib.errors import CTInputError
from ctlib.models import run_checkpoint
from ctlib.studies.xray2ct import networks
from ctlib.studies.xray2ct.views import ViewGeometry


@dataclasses.dataclass
class X2CTRun(run_checkpoint.RunKind):
    """A trained reconstructor (eval, no grad) with its geometry, window and diffusion spec."""

    NAME: ClassVar[str] = "x2ct_model"  # checkpoints/x2ct_model.pt

    model: networks.DeterministicX2CT | networks.DiffusionX2CT
    config: networks.X2CTConfig
    window: windows.HUWindow
    spec: DiffusionSpec | None
    preprocess_run_id: str | None
    step: int | None
    weights: str  # "ema" or "model"
    path: Path

    @property
    def kind(self) -> str:
        """``"deterministic"`` or ``"diffusion"``."""
        return self.config.kind

    @property
    def geometry(self) -> ViewGeometry:
        """The view geometry the model was trained for."""
        return self.config.view_geometry()

    @classmethod
    def load(
        cls,
        run_id_or_path: str | os.PathLike,
        *,
        use_ema: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> X2CTRun:
        """The model of a run id, run folder or ``.pt`` file (EMA weights when ``use_ema`` and stored)."""
        path, ckpt = run_checkpoint.open_run(
            run_id_or_path,
            cls.NAME,
            "X-ray-to-CT model",
            ("config.model", "normalization", "extra"),
            map_location,
        )
        try:
            config = networks.X2CTConfig.from_dict(ckpt["config"]["model"])
            model = networks.build(config)
            state, used_ema = run_checkpoint.ema_weights(dict(ckpt["model_state"]), ckpt, use_ema)
            model.load_state_dict(state)
            window = windows.window_from_record(ckpt["normalization"])
            extra = ckpt["extra"]
            spec = DiffusionSpec.from_dict(extra["spec"]) if extra.get("spec") else None
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise CTInputError(
                path, f"unusable X-ray-to-CT checkpoint ({type(err).__name__}: {err})"
            ) from None
        if (spec is None) != (config.kind == "deterministic"):
            raise CTInputError(path, f"a {config.kind} model needs {'no' if spec else 'a'} diffusion spec")
        return cls(
            model=model.to(map_location).eval().requires_grad_(False),
            config=config,
            window=window,
            spec=spec,
            preprocess_run_id=extra.get("preprocess_run_id"),
            step=extra.get("step"),
            weights="ema" if used_ema else "model",
            path=path,
        )
