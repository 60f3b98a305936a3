"""Sampling ablation: the sampler x steps x eta x samples grid (DDPM on its full chain), the table of
protocol metrics and timings, the uncertainty statistics, and the summary (tiny random models, CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctlib.data import phantom, windows
from ctlib.models import latent_unet
from ctlib.models import vae as vae_module
from ctlib.studies.interp import ablation, bundle, latent_diffusion, pipeline, thick_slices
from ctlib.studies.interp import scoring as interpolation

TINY_VAE = vae_module.VAEConfig(channels=(8, 8, 8, 8), num_res_blocks=1, norm_num_groups=4)
TINY_UNET = latent_unet.LatentUNetConfig(channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                                         norm_num_groups=4, num_head_channels=8)
T = 8  # a short training chain keeps the full DDPM chain cheap


@pytest.fixture(scope="module")
def interpolator() -> bundle.Interpolator:
    import torch

    torch.manual_seed(0)
    spec = latent_diffusion.InterpDiffusionSpec(factor=4, num_train_timesteps=T)
    return bundle.Interpolator(
        vae_module.build_vae(TINY_VAE),
        latent_unet.build_latent_unet(TINY_UNET),
        spec,
        0.8,
        windows.FULL,
        2,
        "cpu",
    )


def _pair(seed: int = 0) -> thick_slices.ThickThinPair:
    return thick_slices.thick_thin_pair(phantom.ct_phantom(shape=(12, 20, 24), seed=seed), 4)


# ---------------------------------------------------------------------------------- the grid
def test_grid_crosses_ddim_options_and_runs_ddpm_on_its_full_chain():
    grid = ablation.sampling_grid(["ddim", "ddpm"], [5, 10], [0.0, 1.0], [1, 2], num_train_timesteps=50)
    ddim = [s for s in grid if s.sampler == "ddim"]
    ddpm = [s for s in grid if s.sampler == "ddpm"]
    assert len(ddim) == 2 * 2 * 2 and len(ddpm) == 2
    assert {(s.steps, s.eta) for s in ddpm} == {(50, 1.0)} and [s.samples for s in ddpm] == [1, 2]
    assert ddim[0] == ablation.Setting("ddim", 5, 0.0, 1) and ddim[-1] == ablation.Setting("ddim", 10, 1.0, 2)
    assert ddim[0].label == "ddim 5 steps, eta 0, K=1"
    # repeats collapse; DDPM needs no steps or etas
    assert len(ablation.sampling_grid(["ddim", "ddim"], [5, 5], [0.0], [1], num_train_timesteps=50)) == 1
    assert len(ablation.sampling_grid(["ddpm"], [], [], [1], num_train_timesteps=50)) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler_names": ["euler"]}, "unknown sampler"),
    ({"steps_list": [0]}, r"steps must lie in \[1, T=50\]"),
    ({"steps_list": [51]}, r"steps must lie in \[1, T=50\]"),
    ({"samples_list": [0]}, "samples must be integers >= 1"),
    ({"etas": [-0.5]}, "eta must be >= 0"),
    ({"etas": []}, "needs at least one value"),
])
def test_grid_refuses_bad_options(kwargs, message):
    args = {"sampler_names": ["ddim"], "steps_list": [5], "etas": [0.0], "samples_list": [1], **kwargs}
    with pytest.raises(ValueError, match=message):
        ablation.sampling_grid(**args, num_train_timesteps=50)


# ------------------------------------------------------------------------ uncertainty statistics
def test_uncertainty_error_correlation_against_closed_forms():
    rng = np.random.default_rng(0)
    error = rng.normal(size=(4, 5, 6)).astype(np.float32)
    mask = np.ones(error.shape, dtype=bool)
    assert ablation.uncertainty_error_correlation(np.abs(error), error, mask) == pytest.approx(1.0)
    assert (
        ablation.uncertainty_error_correlation(10.0 - 2.0 * np.abs(error), -error, mask)
        == pytest.approx(-1.0)
    )
    other = rng.normal(size=error.shape)
    expected = np.corrcoef(other[mask], np.abs(error[mask]))[0, 1]
    assert ablation.uncertainty_error_correlation(other, error, mask) == pytest.approx(expected)
    assert np.isnan(ablation.uncertainty_error_correlation(np.ones_like(error), error, mask))
    mask[:, :2] = False  # only the masked voxels count
    assert (
        ablation.uncertainty_error_correlation(np.where(mask, np.abs(error), 0.0), error, mask)
        == pytest.approx(1.0)
    )


def test_error_by_uncertainty_bins_a_calibrated_map():
    std = np.linspace(1.0, 100.0, 1000).reshape(10, 10, 10)
    mask = np.ones(std.shape, dtype=bool)
    curve = ablation.error_by_uncertainty(std, 2.0 * std, mask, bins=5)
    assert len(curve) == 5 and curve["voxels"].sum() == 1000
    np.testing.assert_allclose(curve["abs_error_hu"], 2.0 * curve["std_hu"])
    assert curve["std_hu"].is_monotonic_increasing


# -------------------------------------------------------------------------------- the runs
def test_run_ablation_scores_every_setting_and_keeps_what_is_asked(interpolator):
    pairs = {"phantom_0": _pair()}
    grid = (ablation.sampling_grid(["ddim"], [1, 2], [0.0, 1.0], [1, 2], num_train_timesteps=T)
            + ablation.sampling_grid(["ddpm"], [], [], [2], num_train_timesteps=T))
    lines = []
    out = ablation.run_ablation(pairs, interpolator, grid, seed=1, window_depth=16,
                                keep=lambda v, s: v == "phantom_0" and s.samples == 2 and s.sampler == "ddpm",
                                log=lines.append)
    table = out.table
    assert len(table) == len(pairs) * len(grid) == 8 + 1 and len(lines) == len(table)
    assert list(table.columns) == ["volume_id", *ablation.SETTING_COLUMNS, *ablation.METRIC_COLUMNS]
    assert np.isfinite(table[["psnr_full_db", "psnr_soft_db", "ssim_full", "seconds"]].to_numpy()).all()
    assert (table["slab_residual_hu"] < 1.0).all()  # data consistency is on
    assert (table["residual_before_hu"] > table["slab_residual_hu"]).all()
    assert (table.loc[table["sampler"] == "ddpm", "steps"] == T).all()
    assert (table["unet_evals"] == table["steps"] * table["samples"]).all()  # one z-window
    single, multi = table[table["samples"] == 1], table[table["samples"] == 2]
    assert single["std_error_corr"].isna().all() and single["std_mean_hu"].isna().all()
    assert multi["std_error_corr"].between(-1, 1).all() and (multi["std_mean_hu"] > 0).all()
    # kept: exactly the asked results, with their std map
    (key, result), = out.kept.items()
    assert key == ("phantom_0", ablation.Setting("ddpm", T, 1.0, 2)) and result.std is not None
    # a row equals a direct call of the pipeline with the same seed (deterministic DDIM)
    direct = pipeline.interpolate_volume(
        pairs["phantom_0"].thick,
        interpolator,
        sampler="ddim",
        steps=2,
        eta=0.0,
        samples=1,
        window_depth=16,
        seed=1,
        progress=False,
    )
    row = table[(table["sampler"] == "ddim") & (table["steps"] == 2) & (table["eta"] == 0.0)
                & (table["samples"] == 1)].iloc[0]
    assert row["psnr_full_db"] == pytest.approx(
        interpolation.evaluate(direct.mean, pairs["phantom_0"])["psnr_full_db"]
    )


def test_summarize_averages_over_volumes_in_grid_order():
    settings = [("ddim", 20, 0.0, 1), ("ddim", 5, 1.0, 2), ("ddpm", 1000, 1.0, 1)]
    rows = []
    for v, volume_id in enumerate(["a", "b"]):
        for i, setting in enumerate(settings):
            metrics = {c: float(10 * i + v) for c in ablation.METRIC_COLUMNS}
            rows.append(
                {
                    "volume_id": volume_id,
                    **dict(zip(ablation.SETTING_COLUMNS, setting, strict=True)),
                    **metrics,
                }
            )
    summary = ablation.summarize(pd.DataFrame(rows))
    assert [tuple(r) for r in summary[ablation.SETTING_COLUMNS].itertuples(index=False)] == settings
    assert (summary["volumes"] == 2).all()
    np.testing.assert_allclose(summary["psnr_full_db"], [0.5, 10.5, 20.5])
    np.testing.assert_allclose(summary["seconds_per_step"], [0.5, 10.5, 20.5])
