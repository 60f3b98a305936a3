"""The deterministic baseline at inference: a trained residual regressor applied to whole volumes.

A regressor run (notebook ``slice_interp/2026-11-23_05_regressor``) is read by
``ctlib.studies.interp.run_kinds.RegressorRun``. The regressor corrects the linear
z-interpolation of the thick slices (Kim et al. 2016, residual learning), so at inference the thick
volume is linearly upsampled, window-normalized, corrected by Gaussian-blended sliding windows
(``ctlib.models.regressor.predict_volume``) and mapped back to HU.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from ctlib.data import windows
from ctlib.io.volume import Volume
from ctlib.models import regressor
from ctlib.studies.interp import bundle, run_kinds, thick_slices


@dataclasses.dataclass
class RegressorBundle:
    """A trained residual regressor with the HU window, factor and thick-slice mode it was trained for."""

    model: nn.Module
    window: windows.HUWindow
    factor: int
    mode: str
    device: torch.device
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.model = self.model.to(self.device).eval().requires_grad_(False)


def load_regressor_run(
    run_id_or_checkpoint: str | os.PathLike, *, use_ema: bool = True, device: str | torch.device = "auto"
) -> RegressorBundle:
    """Load a regressor from a run id (or run folder, or ``.pt`` file) through ``run_kinds.RegressorRun``.

    ``CTInputError`` when unusable."""
    run = run_kinds.RegressorRun.load(run_id_or_checkpoint, use_ema=use_ema)
    return RegressorBundle(
        model=run.model, window=run.window, factor=run.factor, mode=run.mode,
        device=bundle.resolve_device(device),
        meta={"checkpoint": str(run.path), "preprocess_run_id": run.preprocess_run_id,
              "weights": run.weights},
    )


def interpolate_regression(
    thick: Volume,
    model_bundle: RegressorBundle,
    factor: int,
    n_thin: int | None = None,
    *,
    roi_size: tuple[int, int, int] = (32, 128, 128),
    overlap: float = 0.25,
) -> Volume:
    """Thin volume ``(n_thin, y, x)`` in HU on the thin grid: linear z-interpolation corrected by the
    regressor.

    ``factor`` must be the one the regressor was trained for (its residual is factor-specific).
    """
    if factor != model_bundle.factor:
        raise ValueError(f"regressor trained for x{model_bundle.factor}, asked for x{factor}")
    linear = thick_slices.upsample_z(thick, factor, "linear", n_thin=n_thin)
    x = torch.from_numpy(windows.normalize(linear.array, model_bundle.window))[None, None]
    y = regressor.predict_volume(
        model_bundle.model, x.to(model_bundle.device), roi_size=roi_size, overlap=overlap
    )
    return linear.with_array(
        windows.denormalize(y[0, 0].float().cpu().numpy(), model_bundle.window, clip=True)
    )
