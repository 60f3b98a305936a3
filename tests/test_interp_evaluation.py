"""All interpolators on one simulated pair: which methods run at which factor, and what is scored
(tiny models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_interp_pipeline import tiny_interpolator

from ctlib.data import phantom, windows
from ctlib.models import regressor
from ctlib.studies.interp import evaluation, regression

SAMPLING = evaluation.SamplingOptions(steps=2, samples=2, window_depth=16)


@pytest.fixture(scope="module")
def volume():
    return phantom.ct_phantom(shape=(36, 32, 32), spacing_mm=(2.5, 2.0, 2.0), seed=1)


@pytest.fixture(scope="module")
def regressor_x4():
    torch.manual_seed(0)
    model = regressor.build_regressor(regressor.RegressorConfig(features=(4, 4, 4, 4, 4, 4)))
    return regression.RegressorBundle(model=model, window=windows.FULL, factor=4, mode="slab", device="cpu")


@pytest.fixture(scope="module")
def comparison_x4(volume, regressor_x4):
    return evaluation.compare_methods(
        volume, 4, interpolator=tiny_interpolator(factor=4), regressor=regressor_x4, sampling=SAMPLING
    )


def test_learned_methods_run_only_at_their_trained_factor(volume, regressor_x4, comparison_x4):
    at_4 = comparison_x4
    at_2 = evaluation.compare_methods(
        volume, 2, interpolator=tiny_interpolator(factor=4), regressor=regressor_x4, sampling=SAMPLING
    )
    assert list(at_4.estimates) == list(evaluation.METHODS)
    assert (
        list(at_2.estimates) == ["linear", "cubic"] and at_2.diffusion is None and at_2.consistency() is None
    )
    for estimate in at_4.estimates.values():
        array = getattr(estimate, "array", estimate)
        assert array.shape == at_4.pair.thin.shape


def test_scores_follow_the_protocol_and_data_consistency_is_reported(comparison_x4):
    comparison = comparison_x4
    rows = {row["method"]: row for row in comparison.scores()}
    assert set(rows) == set(evaluation.METHODS)
    assert all(row["factor"] == 4 and np.isfinite(row["psnr_full_db"]) for row in rows.values())
    # The untrained regressor (zero-initialized output) is linear interpolation.
    assert rows["regressor"]["psnr_full_db"] == pytest.approx(rows["linear"]["psnr_full_db"], abs=0.01)
    dc = comparison.consistency()
    assert dc["residual_after_hu"] < 1.0 < dc["residual_before_hu"] and dc["windows"] >= 1
    assert rows["diffusion"]["slab_residual_hu"] < rows["diffusion, no DC"]["slab_residual_hu"]


def test_a_volume_too_short_for_the_factor_is_refused(volume):
    with pytest.raises(ValueError):
        evaluation.compare_methods(volume.with_array(volume.array[:5]), 6)
