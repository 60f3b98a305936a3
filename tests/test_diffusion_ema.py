"""EMA of model weights: closed-form updates, warmup, weight swapping and checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctlib.diffusion.ema import EMA


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 2, 3), nn.GroupNorm(1, 2))


def test_update_equals_closed_form_without_warmup():
    model = _model()
    w0 = model[0].weight.detach().clone()
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    # shadow_2 = 0.9 (0.9 w0 + 0.1 (w0 + 1)) + 0.1 (w0 + 2) = w0 + 0.09 + 0.2
    torch.testing.assert_close(ema.shadow["0.weight"], w0 + 0.29, rtol=0, atol=1e-6)
    assert ema.num_updates == 2


def test_warmup_decay_follows_the_tensorflow_schedule():
    ema = EMA(_model(), decay=0.999)
    decays = []
    for _ in range(4):
        decays.append(ema.current_decay())
        ema.update(_model())
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12, 4 / 13])
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.999
    assert EMA(_model(), decay=0.999, warmup=False).current_decay() == 0.999


def test_applied_to_swaps_weights_in_and_back():
    model, other = _model(0), _model(1)
    ema = EMA(other, decay=0.5)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 1, 4, 4, 4)
    with ema.applied_to(model):
        torch.testing.assert_close(model(x), other(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k]), k
    ema.copy_to(model)
    torch.testing.assert_close(model[0].weight, other[0].weight)


def test_state_dict_round_trip_resumes_identically():
    model = _model()
    ema = EMA(model, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.mul_(1.1)
        ema.update(model)
    restored = EMA(_model(5), decay=0.5, warmup=False)
    restored.load_state_dict(ema.state_dict())
    assert (restored.decay, restored.warmup, restored.num_updates) == (0.99, True, 3)
    for k in ema.shadow:
        assert torch.equal(restored.shadow[k], ema.shadow[k])
    ema.update(model)
    restored.update(model)
    assert torch.equal(restored.shadow["0.weight"], ema.shadow["0.weight"])
    with pytest.raises(ValueError, match="parameter names"):
        EMA(nn.Linear(2, 2)).load_state_dict(ema.state_dict())


def test_low_precision_parameters_get_float32_shadows_and_bad_decay_is_refused():
    model = _model().to(torch.bfloat16)
    ema = EMA(model)
    assert all(v.dtype == torch.float32 for v in ema.shadow.values())
    ema.copy_to(model)
    assert model[0].weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)
