"""The regression baseline at inference: loading a regressor run and interpolating whole volumes
(tiny model, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctlib import checkpoint as checkpoint_io
from ctlib.data import phantom, windows
from ctlib.diffusion.ema import EMA
from ctlib.errors import CTInputError
from ctlib.models import regressor
from ctlib.studies.interp import regression, thick_slices

TINY = regressor.RegressorConfig(features=(4, 4, 4, 4, 4, 4))


def save_regressor(path, model, *, ema=None, factor=4, mode="slab"):
    checkpoint_io.save_checkpoint(
        path, model_state=model.state_dict(), config={"model": TINY.to_dict()},
        normalization=windows.normalization_record(windows.FULL),
        extra={"factor": factor, "mode": mode, "preprocess_run_id": "none"},
        ema_state=ema.state_dict() if ema is not None else None, rng_state=False)
    return path


@pytest.fixture(scope="module")
def pair():
    volume = phantom.ct_phantom(shape=(40, 48, 48), spacing_mm=(2.5, 2.0, 2.0), seed=3)
    return thick_slices.thick_thin_pair(volume, 4)


def test_untrained_regressor_reproduces_linear_interpolation(tmp_path, pair):
    torch.manual_seed(0)
    path = save_regressor(tmp_path / "regressor.pt", regressor.build_regressor(TINY))
    bundle = regression.load_regressor_run(path, device="cpu")
    out = regression.interpolate_regression(pair.thick, bundle, 4, pair.thin.shape[0], roi_size=(16, 32, 32))
    linear = thick_slices.upsample_z(pair.thick, 4, "linear", n_thin=pair.thin.shape[0]).array
    assert out.shape == pair.thin.shape and out.spacing == pair.thin.spacing
    np.testing.assert_allclose(out.array, np.clip(linear, windows.FULL.low, windows.FULL.high), atol=0.05)


def test_ema_weights_are_loaded_when_present(tmp_path, pair):
    torch.manual_seed(0)
    model = regressor.build_regressor(
        regressor.RegressorConfig(**{**TINY.to_dict(), "zero_init_output": False})
    )
    averaged = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    averaged.update(model)
    path = save_regressor(tmp_path / "regressor.pt", model, ema=averaged)
    ema_bundle = regression.load_regressor_run(path, device="cpu")
    raw_bundle = regression.load_regressor_run(path, use_ema=False, device="cpu")
    assert (ema_bundle.meta["weights"], raw_bundle.meta["weights"]) == ("ema", "raw")
    name = next(iter(averaged.shadow))
    torch.testing.assert_close(ema_bundle.model.state_dict()[name], averaged.shadow[name])
    assert not torch.equal(raw_bundle.model.state_dict()[name], averaged.shadow[name])


def test_wrong_factor_and_bad_checkpoints_are_refused(tmp_path, pair):
    path = save_regressor(tmp_path / "regressor.pt", regressor.build_regressor(TINY), factor=6)
    bundle = regression.load_regressor_run(path, device="cpu")
    with pytest.raises(ValueError, match="trained for x6"):
        regression.interpolate_regression(pair.thick, bundle, 4)
    bad = tmp_path / "other.pt"
    checkpoint_io.save_checkpoint(bad, model_state={}, config={"model": {}},
                                  normalization=windows.normalization_record(windows.FULL), rng_state=False)
    with pytest.raises(CTInputError, match="extra.factor"):
        regression.load_regressor_run(bad)
    with pytest.raises(CTInputError, match="no_such_run"):
        regression.load_regressor_run("no_such_run")
