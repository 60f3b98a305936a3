"""Residual 3D regressor: identity at zero output weights, learns a residual, shape checks."""

from __future__ import annotations

import pytest
import torch

from ctlib.models import regressor

TINY = regressor.RegressorConfig(features=(4, 4, 4, 4, 4, 4))


def test_zero_last_layer_returns_the_input():
    torch.manual_seed(0)
    model = regressor.build_regressor(TINY)
    x = torch.randn(2, 1, 16, 32, 32)
    assert torch.equal(model(x), x)
    with torch.no_grad():
        model.net.final_conv.weight.normal_()
    assert not torch.equal(model(x), x)
    assert regressor.RegressorConfig.from_dict(TINY.to_dict()) == TINY


def test_without_zero_init_output_differs_and_shape_checks():
    model = regressor.build_regressor(
        regressor.RegressorConfig(features=(4, 4, 4, 4, 4, 4), zero_init_output=False)
    )
    x = torch.randn(1, 1, 16, 32, 32)
    out = model(x)
    assert out.shape == x.shape and not torch.equal(out, x)
    with pytest.raises(ValueError, match="every size >= 16"):
        model(torch.zeros(1, 1, 8, 32, 32))
    with pytest.raises(ValueError, match="more than one"):
        model(torch.zeros(1, 1, 16, 16, 16))


def test_regressor_loss_and_one_step_improves():
    torch.manual_seed(0)
    model = regressor.build_regressor(TINY)
    linear = torch.rand(1, 1, 16, 32, 32) * 2 - 1
    batch = {"linear": linear, "thin": linear + 0.1}
    loss, metrics = regressor.regressor_loss(batch, model)
    assert float(loss.detach()) == pytest.approx(0.1, rel=1e-5)
    assert float(metrics["linear_l1"]) == pytest.approx(0.1, rel=1e-5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    regressor.regressor_loss(batch, model)[0].backward()
    optimizer.step()  # only the zero-initialized output layer has a gradient at first: the bias moves up
    assert float(regressor.regressor_loss(batch, model)[0].detach()) < 0.095


def test_sliding_window_prediction_covers_the_volume():
    model = regressor.build_regressor(TINY).train()
    x = torch.randn(1, 1, 16, 32, 44)  # two overlapping windows along W
    out = regressor.predict_volume(model, x, roi_size=(16, 32, 32), overlap=0.25)
    assert out.shape == x.shape and model.training
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)  # zero-initialized output: identity everywhere
