"""The FiLM-conditioned dose U-Net: shapes, non-negative Gy output, conditioning, gradients,
config round trip."""

from __future__ import annotations

import pytest
import torch

from ctlib.models import dose_unet

TINY = dict(in_channels=3, constraint_dim=4, channels=(4, 8, 8), num_res_units=1, film_hidden=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(**kw) -> dose_unet.DoseUNet:
    torch.manual_seed(0)
    return dose_unet.build_dose_unet(dose_unet.DoseUNetConfig(**{**TINY, **kw}))


@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_shape_and_nonnegative_gy(activation):
    net = _net(output_activation=activation)
    x, c = torch.randn(2, 3, 8, 12, 16), torch.rand(2, 4) * 70
    y = net(x, c)
    assert y.shape == (2, 1, 8, 12, 16)
    assert y.dtype == torch.float32 and bool((y >= 0).all())


def test_output_scales_with_dose_scale():
    x, c = torch.randn(1, 3, 8, 8, 8), torch.rand(1, 4)
    a = _net(dose_scale_gy=80.0, initial_dose_gy=20.0, constraint_scales=(1.0,) * 4)(x, c)
    b = _net(dose_scale_gy=40.0, initial_dose_gy=10.0, constraint_scales=(1.0,) * 4)(x, c)
    torch.testing.assert_close(a, 2.0 * b)


def test_film_changes_output_with_constraints():
    net = _net().eval()
    x = torch.randn(1, 3, 8, 8, 8)
    a = net(x, torch.tensor([[70.0, 63.0, 54.0, 26.0]]))
    b = net(x, torch.tensor([[0.0, 63.0, 54.0, 26.0]]))
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(net(x, torch.tensor([[70.0, 63.0, 54.0, 26.0]])), a)


def test_film_identity_when_mlp_outputs_zero():
    net = _net().eval()
    torch.nn.init.zeros_(net.film_mlp[-1].weight)
    torch.nn.init.zeros_(net.film_mlp[-1].bias)
    x = torch.randn(1, 3, 8, 8, 8)
    torch.testing.assert_close(net(x, torch.zeros(1, 4)), net(x, torch.full((1, 4), 60.0)))
    h, g, bta = torch.randn(2, 3, 2, 2, 2), torch.randn(2, 3), torch.randn(2, 3)
    expected = h * (1 + g[:, :, None, None, None]) + bta[:, :, None, None, None]
    torch.testing.assert_close(dose_unet.FiLM()(h, g, bta), expected)


def test_gradients_reach_every_parameter():
    net = _net()
    loss = net(torch.randn(2, 3, 8, 8, 8), torch.rand(2, 4) * 70).mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert net.film_mlp[0].weight.grad.abs().sum() > 0


def test_constraint_scales_divide_inputs_of_the_mlp():
    net = _net(constraint_scales=(70.0, 1.0, 1.0, 1.0)).eval()
    ref = _net(constraint_scales=(1.0, 1.0, 1.0, 1.0)).eval()
    x = torch.randn(1, 3, 8, 8, 8)
    torch.testing.assert_close(
        net(x, torch.tensor([[70.0, 1.0, 0.0, 1.0]])), ref(x, torch.tensor([[1.0, 1.0, 0.0, 1.0]]))
    )


def test_bad_inputs_are_refused():
    net = _net()
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, 3, 6, 8, 8), torch.rand(1, 4))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        net(torch.randn(1, 3, 8, 8, 8), torch.rand(1, 5))
    with pytest.raises(ValueError, match="output_activation"):
        dose_unet.DoseUNetConfig(output_activation="exp")
    with pytest.raises(ValueError, match="constraint_scales"):
        dose_unet.DoseUNetConfig(constraint_dim=2, constraint_scales=(1.0,))


def test_config_round_trip():
    config = dose_unet.DoseUNetConfig(**TINY, constraint_scales=(80.0, 80.0, 1.0, 1.0))
    again = dose_unet.DoseUNetConfig.from_dict(config.to_dict())
    assert again == config and isinstance(again.channels, tuple)
    assert dose_unet.required_multiple(config) == 4
    with pytest.raises(ValueError, match="unknown key"):
        dose_unet.DoseUNetConfig.from_dict({"chanels": [4, 8]})


@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_head_starts_at_initial_dose(activation):
    net = _net(output_activation=activation, initial_dose_gy=12.0)
    torch.nn.init.zeros_(net.head.conv.weight)
    y = net(torch.randn(1, 3, 8, 8, 8), torch.rand(1, 4))
    torch.testing.assert_close(y, torch.full_like(y, 12.0))
