"""Sliding-window dose prediction: per-patient constraints, exact blending of pointwise models,
pdm zeroing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctlib.models import dose_unet
from ctlib.studies.dose import datasets, inference
from tests.test_dose_datasets import synthetic_patient

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pointwise(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """A model without spatial context: |channel 0| times the first constraint."""
    return x[:, :1].abs() * c[:, :1, None, None, None]


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_pointwise_model_is_reproduced_exactly(blend):
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(2, 3, 10, 13, 9, generator=g)
    constraints = torch.tensor([[2.0, 0.0], [5.0, 1.0]])
    out = inference.predict_dose(
        _pointwise, inputs, constraints, roi_size=(4, 8, 8), overlap=0.5, blend=blend
    )
    torch.testing.assert_close(out, _pointwise(inputs, constraints))


def test_output_is_zero_outside_pdm_and_nonnegative():
    inputs = torch.randn(1, 3, 8, 8, 8)
    pdm = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    pdm[..., 2:6, 2:6, 2:6] = True
    out = inference.predict_dose(
        lambda x, c: x[:, :1] - 0.5, inputs, torch.zeros(1, 1), pdm, roi_size=(4, 4, 4)
    )
    assert float(out[~pdm].abs().max()) == 0.0 and float(out.min()) >= 0.0
    torch.testing.assert_close(out[pdm], (inputs[:, :1][pdm] - 0.5).clamp_min(0))


def test_whole_window_equals_direct_forward_and_mode_is_restored():
    torch.manual_seed(0)
    net = dose_unet.build_dose_unet(dose_unet.DoseUNetConfig(in_channels=4, constraint_dim=4, channels=(4, 8),
                                                             num_res_units=1, film_hidden=8)).train()
    p = synthetic_patient()
    batch = datasets.patient_tensors(p)
    out = inference.predict_dose(net, batch["inputs"], batch["constraints"], roi_size=p.shape, overlap=0.0)
    assert net.training
    with torch.no_grad():
        torch.testing.assert_close(out, net.eval()(batch["inputs"], batch["constraints"]))
    dose = inference.predict_patient(net, p, roi_size=(4, 8, 8), overlap=0.25)
    assert dose.shape == p.shape and dose.dtype == np.float32
    assert float(np.abs(dose[~p.possible_dose_mask]).max()) == 0.0 and dose[p.possible_dose_mask].max() > 0


def test_bad_arguments_are_refused():
    x = torch.zeros(1, 3, 4, 4, 4)
    with pytest.raises(ValueError, match="blend"):
        inference.predict_dose(_pointwise, x, torch.ones(1, 1), blend="mean")
    with pytest.raises(ValueError, match="overlap"):
        inference.predict_dose(_pointwise, x, torch.ones(1, 1), overlap=1.0)
    with pytest.raises(ValueError, match="constraints"):
        inference.predict_dose(_pointwise, x, torch.ones(2, 1))
    with pytest.raises(ValueError, match="pdm"):
        inference.predict_dose(_pointwise, x, torch.ones(1, 1), torch.ones(1, 1, 4, 4, 2, dtype=torch.bool))
