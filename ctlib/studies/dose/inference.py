"""Whole-volume dose prediction by overlapping windows (MONAI ``sliding_window_inference``).

The dose model is any callable ``model(inputs, constraints) -> dose_gy`` with ``inputs``
``(n, C, d, h, w)`` and ``constraints`` ``(n, K)``: the dose U-Net, or a diffusion sampler wrapped by
``ctlib.studies.dose.diffusion.window_sampler``. MONAI cuts ``(1, C, D, H, W)`` into ``roi_size`` windows,
``sw_batch_size`` at a time; the patient's constraint vector is repeated for every window of a call
(a closure), and windows are blended with Gaussian (or constant) weights. Patients of a batch are
predicted one after the other, so each window sees its own patient's constraints. The prediction
is set to 0 outside the possible-dose mask, where OpenKBP doses are 0 by definition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from ctlib.data import windows
from ctlib.studies.dose import augment, coarse, datasets
from ctlib.studies.dose.patient_file import SDF_CLIP_MM, DosePatient

BlendMode = Literal["gaussian", "constant"]
DoseModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _device_of(model: DoseModel, fallback: torch.device) -> torch.device:
    if isinstance(model, nn.Module):
        params = list(model.parameters())
        if params:
            return params[0].device
    return fallback


def predict_dose(
    model: DoseModel,
    inputs: torch.Tensor,
    constraints: torch.Tensor,
    pdm: torch.Tensor | None = None,
    *,
    roi_size: Sequence[int] = (64, 128, 128),
    overlap: float = 0.5,
    blend: BlendMode = "gaussian",
    sigma_scale: float = 0.125,
    sw_batch_size: int = 1,
    sw_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sliding-window dose ``(B, 1, D, H, W)`` in Gy from ``inputs`` ``(B, C, D, H, W)`` and ``constraints``
    ``(B, K)``.

    ``overlap`` is the fraction shared by neighbouring windows; ``blend="gaussian"`` weights each window
    by a Gaussian of relative width ``sigma_scale`` (MONAI), ``"constant"`` averages. A module model runs
    in eval mode without autograd (its mode is restored); windows go to ``sw_device`` (default: the
    module's device, else that of ``inputs``) and the result stays on the device of ``inputs``. Voxels outside
    ``pdm`` ``(B, 1, D, H, W)`` are set to 0.
    """
    if blend not in get_args(BlendMode):
        raise ValueError(f"predict_dose: blend must be one of {list(get_args(BlendMode))}, got {blend!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"predict_dose: overlap must be in [0, 1), got {overlap}")
    if inputs.ndim != 5 or constraints.ndim != 2 or constraints.shape[0] != inputs.shape[0]:
        raise ValueError(
            "predict_dose: expected inputs (B, C, D, H, W) and constraints (B, K), got "
            f"{tuple(inputs.shape)} and {tuple(constraints.shape)}"
        )
    if pdm is not None and (pdm.shape[0] != inputs.shape[0] or pdm.shape[2:] != inputs.shape[2:]):
        raise ValueError(f"predict_dose: pdm {tuple(pdm.shape)} does not match inputs {tuple(inputs.shape)}")
    device = torch.device(sw_device) if sw_device is not None else _device_of(model, inputs.device)
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    outputs = []
    try:
        with torch.no_grad():
            for b in range(inputs.shape[0]):
                c = constraints[b : b + 1].to(device)

                def window_model(x: torch.Tensor, c: torch.Tensor = c) -> torch.Tensor:
                    return model(x, c.expand(x.shape[0], -1)).float()

                outputs.append(
                    sliding_window_inference(
                        inputs[b : b + 1],
                        tuple(int(r) for r in roi_size),
                        sw_batch_size,
                        window_model,
                        overlap=overlap,
                        mode=blend,
                        sigma_scale=sigma_scale,
                        sw_device=device,
                        device=inputs.device,
                    )
                )
    finally:
        if was_training is not None:
            model.train(was_training)
    dose = torch.cat(outputs).clamp_min(0.0)
    if pdm is not None:
        dose = dose * pdm.to(device=dose.device, dtype=dose.dtype)
    return dose


def predict_patient(
    model: DoseModel,
    patient: DosePatient,
    *,
    window: str | windows.HUWindow = "full",
    sdf_clip_mm: float = SDF_CLIP_MM,
    include_pdm: bool = True,
    resolution_factor: int = 1,
    mirror_tta: bool = False,
    **options: object,
) -> np.ndarray:
    """Predicted dose ``(D, H, W)`` float32 in Gy for one ``DosePatient`` (``options`` go to
    ``predict_dose``).

    ``window``, ``sdf_clip_mm``, ``include_pdm`` and ``resolution_factor`` must be those the model was
    trained with (its checkpoint's normalization record and model config). With ``resolution_factor`` f > 1
    the inputs are average-pooled by f, predicted on the coarse grid and brought back by normalized
    trilinear upsampling (``ctlib.studies.dose.coarse``). ``mirror_tta``: test-time augmentation, the mean
    of the prediction and the un-mirrored prediction of the left-right mirrored patient
    (``ctlib.studies.dose.augment.mirror_inputs``; Left / Right structures swapped).
    """
    batch = datasets.patient_tensors(patient, window=window, sdf_clip_mm=sdf_clip_mm, include_pdm=include_pdm)
    inputs, constraints, pdm = batch["inputs"], batch["constraints"], batch["pdm"]
    factor = int(resolution_factor)
    if factor > 1:
        inputs = coarse.pool_inputs(inputs, factor, include_pdm=include_pdm)
        coarse_pdm = coarse.pool_mask(pdm, factor)
    dose = predict_dose(model, inputs, constraints, None, **options)  # type: ignore[arg-type]
    if mirror_tta:
        names = [str(n) for n in patient.roi_names], [str(n) for n in patient.constraint_names]
        mirrored = augment.mirror_inputs(inputs, constraints, *names)
        dose = 0.5 * (dose + predict_dose(model, *mirrored, None, **options).flip(-1))  # type: ignore[arg-type]
    if factor > 1:
        dose = coarse.upsample_dose(dose, coarse_pdm, patient.shape, factor)
    dose = dose * pdm.to(dose.dtype)
    return dose[0, 0].cpu().numpy().astype(np.float32)
