"""Dose losses: zero for a perfect prediction, closed forms on tiny arrays,
the asymmetric PTV penalty, DoseLoss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctlib.studies.dose import losses

ROIS = ("Brainstem", "PTV56", "PTV70")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _case(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    true = torch.rand(2, 1, 4, 6, 6, generator=g) * 70
    pdm = torch.rand(2, 1, 4, 6, 6, generator=g) > 0.2
    masks = torch.zeros(2, 3, 4, 6, 6, dtype=torch.bool)
    masks[:, 0, :2, :3] = True  # organ at risk
    masks[:, 1, 2:, :3, :3] = True  # PTV56
    masks[:, 2, 2:, 3:, 3:] = True  # PTV70
    return {"true": true * pdm, "pdm": pdm, "masks": masks}


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_zero_for_perfect_and_positive_otherwise(name):
    case = _case()
    fn = losses.get_loss(name)
    perfect, _ = fn(case["true"], case["true"], case["pdm"], case["masks"], roi_names=ROIS)
    assert float(perfect) == pytest.approx(0.0, abs=1e-6)
    noisy = case["true"] + torch.randn(case["true"].shape, generator=torch.Generator().manual_seed(1)) * 5
    wrong, terms = fn(noisy, case["true"], case["pdm"], case["masks"], roi_names=ROIS)
    assert float(wrong) > 0.1 and "mae_gy" in terms


def test_registry_matches_literal_and_refuses_unknown():
    assert tuple(losses.LOSSES) == losses.LOSS_NAMES
    with pytest.raises(ValueError, match="expected one of"):
        losses.get_loss("l2")


def test_mae_ignores_voxels_outside_pdm():
    case = _case()
    pred = case["true"] + 2.0 * case["pdm"] + 100.0 * ~case["pdm"]
    assert float(losses.masked_mae(pred, case["true"], case["pdm"])) == pytest.approx(2.0)


def test_gradient_l1_closed_form():
    true = torch.zeros(1, 1, 4, 5, 6)
    ramp = 3.0 * torch.arange(6.0).reshape(1, 1, 1, 1, 6).expand_as(true)  # 3 Gy per voxel along W only
    pdm = torch.ones_like(true, dtype=torch.bool)
    assert float(losses.gradient_l1(ramp, true, pdm)) == pytest.approx(1.0)  # (0 + 0 + 3) / 3
    assert float(losses.gradient_l1(ramp + 7.0, ramp, pdm)) == pytest.approx(0.0)  # offsets have no gradient
    total, terms = losses.mae_gradient_loss(ramp, true, pdm, torch.zeros(1, 3, 4, 5, 6), gradient_weight=2.0)
    assert float(total) == pytest.approx(float(terms["mae_gy"]) + 2.0 * 1.0)


def test_soft_dvh_approaches_the_hard_dvh():
    g = torch.Generator().manual_seed(3)
    dose = torch.rand(1, 1, 4, 8, 8, generator=g) * 70
    mask = (torch.rand(1, 2, 4, 8, 8, generator=g) > 0.5)
    bins = torch.linspace(0.25, 69.75, 40)
    soft = losses.soft_dvh(dose, mask, bins, temperature_gy=1e-3)
    hard = torch.stack([
        torch.stack([(dose[0, 0][mask[0, s]] > d).float().mean() for d in bins]) for s in range(2)
    ])[None]
    assert (soft - hard).abs().max() < 0.02


def test_dvh_mse_closed_form():
    masks = torch.ones(1, 1, 2, 2, 2, dtype=torch.bool)
    true, pred = torch.full((1, 1, 2, 2, 2), 10.5), torch.full((1, 1, 2, 2, 2), 30.5)
    # Hard DVHs at 0, 1, ..., 80 Gy differ (1 vs 0) at the 20 bins 11 .. 30.
    value = losses.dvh_mse(pred, true, masks, bins=81, max_gy=80.0, temperature_gy=1e-3)
    assert float(value) == pytest.approx(20 / 81, abs=1e-4)
    # Absent structures do not dilute the mean.
    with_absent = torch.cat([masks, torch.zeros_like(masks)], dim=1)
    assert (
        float(losses.dvh_mse(pred, true, with_absent, bins=81, max_gy=80.0, temperature_gy=1e-3))
        == pytest.approx(20 / 81, abs=1e-4)
    )


def test_structure_weighted_closed_form():
    case = _case()
    pdm = torch.ones_like(case["pdm"])
    ptv = case["masks"][:, 1:].any(dim=1, keepdim=True)
    pred = case["true"] + ptv.float()  # 1 Gy error inside the PTVs only
    loss, _ = losses.structure_weighted_loss(pred, case["true"], pdm, case["masks"], roi_names=ROIS,
                                             ptv_weight=4.0, oar_weight=2.0)
    oar = case["masks"][:, :1]
    weights = 1.0 + torch.maximum(4.0 * ptv.float(), 2.0 * oar.float())
    assert float(loss) == pytest.approx(float(5.0 * ptv.sum() / weights.sum()))
    assert float(loss) > float(losses.masked_mae(pred, case["true"], pdm))  # PTV errors weigh more


def test_underdose_costs_more_than_overdose():
    case = _case()
    ptv = case["masks"][:, 1:].any(dim=1, keepdim=True)
    delta = 3.0 * ptv.float()
    under, _ = losses.ptv_underdose_loss(
        case["true"] - delta, case["true"], case["pdm"], case["masks"], roi_names=ROIS
    )
    over, _ = losses.ptv_underdose_loss(
        case["true"] + delta, case["true"], case["pdm"], case["masks"], roi_names=ROIS
    )
    assert float(under) > float(over) > 0
    # Everything in a PTV and in the pdm: under = delta * (1 + w), over = delta.
    ones = torch.ones(1, 1, 2, 2, 2, dtype=torch.bool)
    masks = torch.zeros(1, 3, 2, 2, 2, dtype=torch.bool)
    masks[:, 2] = True
    true = torch.full((1, 1, 2, 2, 2), 70.0)
    under, _ = losses.ptv_underdose_loss(true - 3, true, ones, masks, roi_names=ROIS, underdose_weight=2.0)
    over, _ = losses.ptv_underdose_loss(true + 3, true, ones, masks, roi_names=ROIS, underdose_weight=2.0)
    assert (float(under), float(over)) == pytest.approx((9.0, 3.0))


def test_underdose_against_prescription():
    masks = torch.zeros(1, 3, 1, 1, 2, dtype=torch.bool)
    masks[0, 1, 0, 0, 0] = True  # PTV56 voxel
    masks[0, 2, 0, 0, 1] = True  # PTV70 voxel
    pdm = torch.ones(1, 1, 1, 1, 2, dtype=torch.bool)
    true = torch.tensor([50.0, 68.0]).reshape(1, 1, 1, 1, 2)
    pred = torch.tensor([57.0, 65.0]).reshape(1, 1, 1, 1, 2)
    _, terms = losses.ptv_underdose_loss(
        pred, true, pdm, masks, roi_names=ROIS, underdose_reference="prescription"
    )
    assert float(terms["ptv_underdose_gy"]) == pytest.approx((0.0 + 5.0) / 2)  # only PTV70 is below its 70 Gy
    _, terms = losses.ptv_underdose_loss(pred, true, pdm, masks, roi_names=ROIS, underdose_reference="true")
    assert float(terms["ptv_underdose_gy"]) == pytest.approx((0.0 + 3.0) / 2)
    assert losses.prescription_gy("PTV63") == 63.0
    with pytest.raises(ValueError, match="PTV70"):
        losses.prescription_gy("Brainstem")
    with pytest.raises(ValueError, match="underdose_reference"):
        losses.ptv_underdose_loss(pred, true, pdm, masks, roi_names=ROIS, underdose_reference="plan")


class _Echo(nn.Module):
    """Predicts the dose hidden in the first input channel (a perfect model for the wrapper test)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, constraints: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.bias + 0.0 * constraints.sum()


def test_dose_loss_module_forward_and_options():
    case = _case()
    batch = {"inputs": case["true"], "constraints": torch.zeros(2, 4), "dose": case["true"],
             "pdm": case["pdm"], "masks": case["masks"]}
    module = losses.DoseLoss(_Echo(), "dvh", roi_names=ROIS, dvh_weight=5.0)
    loss, terms = module(batch)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6) and set(terms) == {"mae_gy", "dvh_mse"}
    with torch.no_grad():
        module.model.bias.fill_(2.0)
    loss, terms = module(batch)
    assert float(terms["mae_gy"]) == pytest.approx(2.0, abs=1e-5) and float(loss.detach()) > 2.0
    loss.backward()
    assert module.model.bias.grad is not None
    with pytest.raises(TypeError, match="gradient_weight"):
        losses.DoseLoss(_Echo(), "mae", roi_names=ROIS, gradient_weight=1.0)
    assert (
        losses.select_options("mae_gradient", {"gradient_weight": 2.0, "dvh_weight": 1.0})
        == {"gradient_weight": 2.0}
    )


def test_dose_loss_is_float32_under_bf16_autocast():
    case = _case()
    batch = {"inputs": case["true"], "constraints": torch.zeros(2, 4), "dose": case["true"],
             "pdm": case["pdm"], "masks": case["masks"]}
    module = losses.DoseLoss(_Echo(), "dvh", roi_names=ROIS)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss, terms = module(batch)
    assert loss.dtype == torch.float32 and terms["dvh_mse"].dtype == torch.float32
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
