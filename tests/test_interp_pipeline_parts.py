"""The pieces interpolate_volume is composed of: options, window sampling and blending, running statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_interp_pipeline import FAST, _thick, tiny_interpolator

from ctlib.diffusion import schedules
from ctlib.diffusion.denoiser import Denoiser
from ctlib.studies.interp import pipeline


def test_options_and_keyword_overrides_give_the_same_volume():
    pair = _thick(n_thick=4)
    interp = tiny_interpolator()
    options = pipeline.InterpolationOptions(steps=2, progress=False, samples=2, eta=1.0, seed=5)
    by_options = pipeline.interpolate_volume(pair.thick, interp, options)
    by_keywords = pipeline.interpolate_volume(pair.thick, interp, samples=2, eta=1.0, seed=5, **FAST)
    np.testing.assert_array_equal(by_options.mean.array, by_keywords.mean.array)
    np.testing.assert_array_equal(by_options.std.array, by_keywords.std.array)
    assert by_options.settings == by_keywords.settings and by_options.settings["seed"] == 5
    overridden = pipeline.interpolate_volume(pair.thick, interp, options, seed=6)
    assert overridden.settings["seed"] == 6
    assert not np.array_equal(overridden.mean.array, by_options.mean.array)
    with pytest.raises(TypeError, match="num_steps"):
        pipeline.interpolate_volume(pair.thick, interp, num_steps=2)


def test_windows_condition_on_their_own_slices_and_blend_back_exactly():
    """An x0-predicting network that returns its condition: DDIM (eta 0) ends on x0, so every window gives
    its part of the condition and the blended stack must equal the whole condition."""
    schedule = schedules.make_schedule("linear", num_train_timesteps=10)
    cond = torch.randn(1, 4, 20, 2, 3, generator=torch.Generator().manual_seed(0))
    denoiser = Denoiser(lambda x, t: x[:, 4:], "x0", schedule)
    spans = pipeline.window_spans(20, 8, 3)
    assert len(spans) > 2
    calls = []
    options = pipeline.InterpolationOptions(steps=3)
    latents = pipeline.sample_latents(denoiser, cond, spans, pipeline.blend_weights(spans, 20), options, 0,
                                      on_window=lambda: calls.append(1))
    assert len(calls) == len(spans) and latents.shape == cond.shape
    torch.testing.assert_close(latents, cond, rtol=0, atol=1e-6)


def test_welford_and_running_mean_match_numpy():
    draws = np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float32)
    stats, mean = pipeline._Welford(), None
    for k, x in enumerate(draws):
        stats.add(x.copy())
        mean = pipeline._running_mean(mean, x, k + 1)
    np.testing.assert_allclose(stats.mean, draws.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats.std(), draws.std(0, ddof=1), atol=1e-6)
    np.testing.assert_allclose(mean, draws.mean(0), atol=1e-6)
    one = pipeline._Welford()
    one.add(draws[0])
    assert one.std() is None
