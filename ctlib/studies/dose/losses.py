"""Training losses of the dose U-Net, selectable by name (``LOSSES``), all restricted to the possible-dose
mask.

Every loss has the signature ``loss(pred_gy, true_gy, pdm, masks, *, roi_names, **options) -> (loss, terms)``
with ``pred_gy`` and ``true_gy`` ``(B, 1, D, H, W)`` in Gy, ``pdm`` ``(B, 1, D, H, W)`` (bool or 0/1), and
``masks`` ``(B, S, D, H, W)`` structure masks in ``roi_names`` order (PTVs are the names starting with
``"PTV"``; the others are organs at risk). ``terms`` are detached scalars for the training history.

- ``mae``: mean absolute error in Gy over the pdm voxels (the OpenKBP dose score, as a loss).
- ``mae_gradient``: MAE + ``gradient_weight`` * L1 of the difference of forward finite differences
  along D, H and W (Gy per voxel), on voxel pairs both inside the pdm (sharper dose fall-off).
- ``dvh``: MAE + ``dvh_weight`` * differentiable DVH loss (Nguyen et al. 2020, Med Phys 48:1567): the
  cumulative DVH of each present structure, ``V(d_k) = mean_{v in s} sigmoid((D_v - d_k) / T)``, at
  ``dvh_bins`` doses ``d_k`` from 0 to ``dvh_max_gy``, softened by a temperature ``T`` in Gy; MSE
  between predicted and true DVHs, averaged over bins and present structures. (A DVH loss alone has
  no spatial anchor, so Nguyen et al. add it to a voxel-wise loss; so does this one.)
- ``structure_weighted``: MAE with voxel weights ``1 + ptv_weight`` inside any PTV and
  ``1 + oar_weight`` inside any organ at risk (the larger where they overlap), normalized by the
  weight sum.
- ``ptv_underdose``: MAE + ``underdose_weight`` * mean over PTV voxels of ``relu(reference - pred)``,
  with the reference the true dose or the PTV's prescription (the number in its name, e.g. PTV70 ->
  70 Gy): underdosing a target costs ``1 + underdose_weight`` times what the same overdose does.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from ctlib.io.openkbp import ROI_NAMES

LossName = Literal["mae", "mae_gradient", "dvh", "structure_weighted", "ptv_underdose"]
LOSS_NAMES: tuple[str, ...] = get_args(LossName)
UnderdoseReference = Literal["true", "prescription"]
Terms = dict[str, torch.Tensor]
DoseLossFn = Callable[..., tuple[torch.Tensor, Terms]]


def _mask_f(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(dtype=like.dtype)


def target_channels(roi_names: Sequence[str]) -> list[int]:
    """Indices of the planning target volumes (names starting with "PTV") in ``roi_names``."""
    return [i for i, name in enumerate(roi_names) if str(name).upper().startswith("PTV")]


def oar_channels(roi_names: Sequence[str]) -> list[int]:
    """Indices of the organs at risk (every name that is not a PTV)."""
    targets = set(target_channels(roi_names))
    return [i for i in range(len(roi_names)) if i not in targets]


def _any(masks: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """``(B, 1, D, H, W)`` bool: inside any of ``channels`` of ``masks``."""
    if not channels:
        return torch.zeros_like(masks[:, :1], dtype=torch.bool)
    return masks[:, channels].bool().any(dim=1, keepdim=True)


def masked_mae(pred_gy: torch.Tensor, true_gy: torch.Tensor, pdm: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in Gy over the voxels where ``pdm`` is set (0 if there are none)."""
    w = _mask_f(pdm, pred_gy)
    return ((pred_gy - true_gy).abs() * w).sum() / w.sum().clamp_min(1.0)


def gradient_l1(pred_gy: torch.Tensor, true_gy: torch.Tensor, pdm: torch.Tensor) -> torch.Tensor:
    """Mean over D, H, W of the L1 difference of forward finite differences (Gy per voxel),
    on pdm voxel pairs."""
    terms = []
    for dim in range(2, pred_gy.ndim):
        diff = torch.diff(pred_gy, dim=dim) - torch.diff(true_gy, dim=dim)
        n = pdm.shape[dim]
        pair = pdm.narrow(dim, 0, n - 1).bool() & pdm.narrow(dim, 1, n - 1).bool()
        terms.append(masked_mae(diff, torch.zeros_like(diff), pair))
    return torch.stack(terms).mean()


def soft_dvh(
    dose_gy: torch.Tensor, mask: torch.Tensor, bins_gy: torch.Tensor, temperature_gy: float
) -> torch.Tensor:
    """Differentiable cumulative DVH (Nguyen et al. 2020): fraction of ``mask`` voxels above each bin dose.

    ``dose_gy`` ``(B, 1, D, H, W)``, ``mask`` ``(B, S, D, H, W)``, ``bins_gy`` ``(K,)`` -> ``(B, S, K)``;
    the step ``[D_v > d]`` is replaced by ``sigmoid((D_v - d) / temperature_gy)``. An empty structure
    gives zeros.
    """
    if temperature_gy <= 0:
        raise ValueError(f"soft_dvh: temperature_gy must be > 0, got {temperature_gy}")
    d = dose_gy.flatten(2).float()  # (B, 1, V)
    m = mask.flatten(2).float()  # (B, S, V)
    above = torch.sigmoid((d.unsqueeze(-1) - bins_gy.float()) / temperature_gy)  # (B, 1, V, K)
    volume = torch.einsum("bsv,bvk->bsk", m, above[:, 0])
    return volume / m.sum(dim=2, keepdim=True).clamp_min(1.0)


def dvh_mse(
    pred_gy: torch.Tensor,
    true_gy: torch.Tensor,
    masks: torch.Tensor,
    *,
    bins: int = 32,
    max_gy: float = 80.0,
    temperature_gy: float = 1.0,
) -> torch.Tensor:
    """MSE between soft DVHs of prediction and truth over ``bins`` doses in ``[0, max_gy]``,
    present structures only."""
    if bins < 2 or max_gy <= 0:
        raise ValueError(f"dvh_mse: need bins >= 2 and max_gy > 0, got bins={bins}, max_gy={max_gy}")
    bins_gy = torch.linspace(0.0, max_gy, bins, device=pred_gy.device)
    present = masks.flatten(2).any(dim=2).float()  # (B, S)
    per = (
        soft_dvh(pred_gy, masks, bins_gy, temperature_gy) - soft_dvh(true_gy, masks, bins_gy, temperature_gy)
    ).pow(2)
    return (per.mean(dim=2) * present).sum() / present.sum().clamp_min(1.0)


def prescription_gy(name: str) -> float:
    """Prescription of an OpenKBP target from its name: ``"PTV70"`` -> 70.0 Gy."""
    match = re.fullmatch(r"PTV[_ ]?(\d+(?:\.\d+)?)", str(name).strip(), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"prescription_gy: cannot read a prescription from {name!r}; expected e.g. 'PTV70'")
    return float(match.group(1))


# ------------------------------------------------------------------------------- registered losses
def mae_loss(
    pred_gy: Tensor, true_gy: Tensor, pdm: Tensor, masks: Tensor, *, roi_names: Sequence[str] = ROI_NAMES,
) -> tuple[Tensor, Terms]:
    """Mean absolute error in Gy inside the possible-dose mask."""
    mae = masked_mae(pred_gy, true_gy, pdm)
    return mae, {"mae_gy": mae.detach()}


def mae_gradient_loss(
    pred_gy: Tensor, true_gy: Tensor, pdm: Tensor, masks: Tensor, *, roi_names: Sequence[str] = ROI_NAMES,
    gradient_weight: float = 1.0,
) -> tuple[Tensor, Terms]:
    """MAE + ``gradient_weight`` * L1 of the spatial-gradient difference (both in Gy)."""
    mae, grad = masked_mae(pred_gy, true_gy, pdm), gradient_l1(pred_gy, true_gy, pdm)
    return mae + gradient_weight * grad, {"mae_gy": mae.detach(), "gradient_l1": grad.detach()}


def dvh_loss(
    pred_gy: Tensor, true_gy: Tensor, pdm: Tensor, masks: Tensor, *, roi_names: Sequence[str] = ROI_NAMES,
    dvh_weight: float = 10.0, dvh_bins: int = 32, dvh_max_gy: float = 80.0, dvh_temperature_gy: float = 1.0,
) -> tuple[Tensor, Terms]:
    """MAE + ``dvh_weight`` * soft-DVH MSE (Nguyen et al. 2020) over the structures, inside the pdm."""
    mae = masked_mae(pred_gy, true_gy, pdm)
    inside = masks.bool() & pdm.bool()
    dvh = dvh_mse(
        pred_gy, true_gy, inside, bins=dvh_bins, max_gy=dvh_max_gy, temperature_gy=dvh_temperature_gy
    )
    return mae + dvh_weight * dvh, {"mae_gy": mae.detach(), "dvh_mse": dvh.detach()}


def structure_weighted_loss(
    pred_gy: Tensor, true_gy: Tensor, pdm: Tensor, masks: Tensor, *, roi_names: Sequence[str] = ROI_NAMES,
    ptv_weight: float = 4.0, oar_weight: float = 2.0,
) -> tuple[Tensor, Terms]:
    """MAE with weight ``1 + ptv_weight`` in PTVs and ``1 + oar_weight`` in organs at risk
    (max where both)."""
    ptv = _any(masks, target_channels(roi_names)).to(pred_gy.dtype)
    oar = _any(masks, oar_channels(roi_names)).to(pred_gy.dtype)
    weight = 1.0 + torch.maximum(ptv_weight * ptv, oar_weight * oar)
    w = weight * _mask_f(pdm, pred_gy)
    loss = ((pred_gy - true_gy).abs() * w).sum() / w.sum().clamp_min(1.0)
    return loss, {"mae_gy": masked_mae(pred_gy, true_gy, pdm).detach(), "weighted_mae_gy": loss.detach()}


def ptv_underdose_loss(
    pred_gy: Tensor, true_gy: Tensor, pdm: Tensor, masks: Tensor, *, roi_names: Sequence[str] = ROI_NAMES,
    underdose_weight: float = 2.0, underdose_reference: UnderdoseReference = "true",
) -> tuple[Tensor, Terms]:
    """MAE + ``underdose_weight`` * mean over PTV voxels of ``relu(reference - pred)``
    (an asymmetric penalty)."""
    if underdose_reference not in get_args(UnderdoseReference):
        raise ValueError(
            f"underdose_reference must be one of {list(get_args(UnderdoseReference))}, got "
            f"{underdose_reference!r}"
        )
    targets = target_channels(roi_names)
    if underdose_reference == "true":
        reference = true_gy
    else:
        # Where PTVs overlap the highest prescription applies (they do not overlap in OpenKBP).
        levels = torch.tensor(
            [prescription_gy(roi_names[i]) for i in targets], device=pred_gy.device, dtype=pred_gy.dtype
        )
        inside = masks[:, targets].to(pred_gy.dtype) * levels.reshape(1, -1, 1, 1, 1)
        reference = inside.amax(dim=1, keepdim=True) if targets else torch.zeros_like(pred_gy)
    ptv = _any(masks, targets) & pdm.bool()
    mae = masked_mae(pred_gy, true_gy, pdm)
    under = masked_mae(torch.relu(reference - pred_gy), torch.zeros_like(pred_gy), ptv)
    return mae + underdose_weight * under, {"mae_gy": mae.detach(), "ptv_underdose_gy": under.detach()}


LOSSES: dict[str, DoseLossFn] = {
    "mae": mae_loss,
    "mae_gradient": mae_gradient_loss,
    "dvh": dvh_loss,
    "structure_weighted": structure_weighted_loss,
    "ptv_underdose": ptv_underdose_loss,
}


def get_loss(name: str) -> DoseLossFn:
    """The loss registered under ``name`` in ``LOSSES``."""
    if name not in LOSSES:
        raise ValueError(f"unknown dose loss {name!r}; expected one of {list(LOSSES)}")
    return LOSSES[name]


def select_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that loss ``name`` accepts
    (a notebook passes every weight, each loss takes its own)."""
    accepted = set(inspect.signature(get_loss(name)).parameters) - {
        "pred_gy",
        "true_gy",
        "pdm",
        "masks",
        "roi_names",
    }
    return {k: v for k, v in options.items() if k in accepted}


class DoseLoss(nn.Module):
    """The dose model and a named loss: ``forward(batch) -> (loss, metrics)`` for ``ctlib.train.loop.train``.

    ``batch`` holds ``inputs`` ``(B, C, D, H, W)``, ``constraints`` ``(B, K)``, ``dose`` ``(B, 1, D, H, W)``
    in Gy, ``pdm`` ``(B, 1, D, H, W)`` and ``masks`` ``(B, S, D, H, W)`` (``ctlib.studies.dose.datasets``).
    Pass ``loop.forward_loss`` as the loss function; ``options`` go to the selected loss only (e.g.
    ``gradient_weight`` for ``mae_gradient``). The model is the only parameter (``model.*``).
    """

    def __init__(
        self, model: nn.Module, loss: str = "mae", *, roi_names: Sequence[str] = ROI_NAMES, **options: Any
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_name = loss
        self.loss_fn = get_loss(loss)
        self.roi_names = tuple(roi_names)
        self.options = dict(options)
        self.loss_fn(*(torch.zeros(1, 1, 2, 2, 2),) * 3, torch.zeros(1, len(self.roi_names), 2, 2, 2),
                     roi_names=self.roi_names, **self.options)  # refuse unknown options now, not at step 1

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Terms]:
        """Predict the batch's dose and return the selected loss and its terms."""
        pred_gy = self.model(batch["inputs"], batch["constraints"])
        if pred_gy.shape != batch["dose"].shape:
            raise ValueError(
                f"DoseLoss: prediction {tuple(pred_gy.shape)} != dose {tuple(batch['dose'].shape)}"
            )
        # The losses run in float32 even under bf16 autocast: DVH fractions and Gy sums need the precision.
        with torch.autocast(device_type=pred_gy.device.type, enabled=False):
            return self.loss_fn(pred_gy.float(), batch["dose"].float(), batch["pdm"], batch["masks"],
                                roi_names=self.roi_names, **self.options)
