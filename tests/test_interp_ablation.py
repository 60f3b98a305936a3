"""Sampling ablation: the sampler x steps x eta x samples grid (DDPM on its full chain), the table of
protocol metrics and timings, the uncertainty statistics, and the summary (tiny random models, CPU)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ctlib.data import phantom, windows
from ctlib.models import latent_unet
from ctlib.models import vae as vae_module
from ctlib.studies.interp import ablation, bundle, latent_diffusion, pipeline, thick_slices
from ctlib.studies.interp import figures as interp_figures
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


def test_rank_correlation_is_one_for_any_monotone_relation_where_pearson_is_not():
    rng = np.random.default_rng(1)
    error = rng.normal(scale=50.0, size=(6, 30, 40))
    mask = np.ones(error.shape, dtype=bool)
    std = np.exp(np.abs(error) / 10.0)  # monotone in |error|, far from linear
    assert ablation.uncertainty_rank_correlation(std, error, mask) == pytest.approx(1.0)
    assert ablation.uncertainty_error_correlation(std, error, mask) < 0.8
    assert ablation.uncertainty_rank_correlation(-std, error, mask) == pytest.approx(-1.0)
    assert np.isnan(ablation.uncertainty_rank_correlation(np.ones_like(error), error, mask))
    mask[:, :10] = False  # voxels outside the mask do not count, even when they break the order
    assert ablation.uncertainty_rank_correlation(np.where(mask, std, -std), error, mask) == pytest.approx(1.0)
    # a noisy relation: all voxels below max_voxels equal scipy; above it a seeded subsample
    noisy = np.abs(error) + rng.normal(scale=40.0, size=error.shape)
    full = stats.spearmanr(noisy[mask], np.abs(error[mask])).statistic
    assert ablation.uncertainty_rank_correlation(noisy, error, mask) == pytest.approx(full)
    few = [ablation.uncertainty_rank_correlation(noisy, error, mask, max_voxels=500, seed=seed)
           for seed in (0, 0, 1)]
    assert few[0] == few[1] != few[2] and few[0] == pytest.approx(full, abs=0.1)


def test_error_by_uncertainty_of_gaussian_errors_is_calibrated_in_every_decile():
    assert ablation.GAUSSIAN_ABS_RATIO == pytest.approx(np.sqrt(2.0 / np.pi))
    rng = np.random.default_rng(2)
    std = np.exp(rng.uniform(0.0, 5.0, size=(20, 100, 100)))  # 1 to 150 HU
    mask = rng.random(std.shape) < 0.5
    error = std * rng.normal(size=std.shape)  # error ~ N(0, std^2): calibrated
    curve = ablation.error_by_uncertainty(std, error, mask)
    assert list(curve["bin"]) == list(range(10)) and curve["voxels"].sum() == mask.sum()
    assert curve["std_hu"].is_monotonic_increasing
    np.testing.assert_allclose(curve["error_over_std"], np.sqrt(2.0 / np.pi), rtol=0.03)
    overconfident = ablation.error_by_uncertainty(std, 2.0 * error, mask)  # errors twice what std says
    np.testing.assert_allclose(overconfident["error_over_std"], 2.0 * np.sqrt(2.0 / np.pi), rtol=0.03)


def test_calibration_plot_draws_one_line_per_curve_and_the_gaussian_reference():
    curves = {f"volume {i}": pd.DataFrame({"std_hu": [1.0, 5.0, 9.0 + i], "abs_error_hu": [2.0, 6.0, 20.0]})
              for i in range(3)}
    fig = interp_figures.calibration_plot(curves, title="(a)")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == [*curves, "calibrated Gaussian, E|e| = 0.80 std"]
    np.testing.assert_allclose(ax.get_lines()[2].get_xdata(), [1.0, 5.0, 11.0])
    reference = ax.get_lines()[-1]
    np.testing.assert_allclose(reference.get_xdata(), [0.0, 11.0])
    np.testing.assert_allclose(reference.get_ydata(), [0.0, 11.0 * np.sqrt(2.0 / np.pi)])
    assert ax.get_title() == "(a)"
    plt.close(fig)


def test_calibration_panels_split_by_volume_and_by_setting_with_the_same_k():
    rows = []
    for volume_id in ("a", "b"):
        for steps, k in ((2, 2), (5, 2), (5, 4)):
            setting = ablation.Setting("ddim", steps, 0.0, k)
            for b in range(10):
                rows.append({"volume_id": volume_id, "setting": setting.label, "sampler": "ddim",
                             "steps": steps, "eta": 0.0, "samples": k, "bin": b, "std_hu": b + 1.0,
                             "std_error_spearman": 0.1 * steps + (volume_id == "b"),
                             "abs_error_hu": 2.0 * b + steps})
    calibration = pd.DataFrame(rows, columns=ablation.CALIBRATION_COLUMNS)
    fig = interp_figures.calibration_panels(calibration, "ddim 5 steps, eta 0, K=2", "a")
    ax_v, ax_s = fig.axes
    assert [line.get_label() for line in ax_v.get_lines()[:-1]] == ["a (rho 0.50)", "b (rho 1.50)"]
    assert [line.get_label() for line in ax_s.get_lines()[:-1]] == [
        "ddim 2 steps, eta 0, K=2 (rho 0.20)", "ddim 5 steps, eta 0, K=2 (rho 0.50)"]
    np.testing.assert_allclose(ax_s.get_lines()[1].get_ydata(), 2.0 * np.arange(10) + 5)
    assert ax_s.get_title() == "(b) per setting with K = 2, a"
    with pytest.raises(ValueError, match="no curve"):
        interp_figures.calibration_panels(calibration, "ddim 5 steps, eta 0, K=2", "c")
    plt.close(fig)


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
    uncertainty = ["std_error_pearson", "std_error_spearman", "std_mean_hu"]
    assert single[uncertainty].isna().all().all()
    assert multi[["std_error_pearson", "std_error_spearman"]].stack().between(-1, 1).all()
    assert (multi["std_mean_hu"] > 0).all()
    # one calibration curve (std deciles) per run with K >= 2, carrying that run's Spearman rho
    calibration = out.calibration
    assert list(calibration.columns) == ablation.CALIBRATION_COLUMNS
    runs = calibration.groupby(["volume_id", "setting"], sort=False)
    assert runs.ngroups == len(multi) and (runs.size() == 10).all()
    assert (runs["voxels"].sum() == int(interpolation.scored_mask(pairs["phantom_0"]).sum())).all()
    merged = calibration.merge(multi, on=["volume_id", *ablation.SETTING_COLUMNS], suffixes=("", "_row"))
    np.testing.assert_allclose(merged["std_error_spearman"], merged["std_error_spearman_row"])
    table_u = ablation.uncertainty_table(table)
    assert len(table_u) == len(multi) and table_u.columns[-1] == "goal rho >= 0.5"
    assert (table_u["goal rho >= 0.5"] == (table_u["std_error_spearman"] >= 0.5)).all()
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


def test_a_sweep_of_the_notebook_is_gathered_from_its_completed_members(tmp_path):
    """`-p cpu-real-sweep` runs one setting per member; `sweep_id` has the notebook read their tables back."""
    from ctlib import paths
    from ctlib.runs import params as run_params
    from ctlib.runs import record as run_record
    from ctlib.runs import sweep as sweeps

    notebook = "notebooks/slice_interp/2026-11-23_06_sampling_ablation.ipynb"
    grid = run_params.load_sweep_section(notebook, "cpu-real-sweep")["grid"]
    sweep = sweeps.create_sweep(notebook, "cpu-real-sweep", grid)
    for member in sweep.members[:3]:  # three members ran (the third failed), the rest never started
        folder = paths.runs_dir() / sweep.run_id(member)
        folder.mkdir()
        record = run_record.RunRecord.started(sweep.run_id(member), notebook=notebook, notebook_stem="x")
        record.finish(1.0, RuntimeError("out of memory") if member["index"] == 2 else None)
        record.to_file(folder)
        setting = {"sampler": "ddim", "steps": member["params"]["steps_list"][0],
                   "eta": member["params"]["etas"][0], "samples": member["params"]["samples_list"][0]}
        pd.DataFrame([{"volume_id": v, **setting, "psnr_full_db": 20.0 + member["index"] + i}
                      for i, v in enumerate(["a", "b"])]).to_csv(folder / "results.csv", index=False)
        pd.DataFrame([{"volume_id": "a", "setting": "s", **setting, "bin": 0, "std_hu": 1.0}] * (
            setting["samples"] - 1)).reindex(columns=ablation.CALIBRATION_COLUMNS).to_csv(
            folder / "calibration.csv", index=False)  # K = 1: the header only, as run_ablation writes it
    out = ablation.gather_sweep(sweep.sweep_id)
    assert list(out.table["psnr_full_db"]) == [20.0, 21.0, 21.0, 22.0] and out.kept == {}
    assert list(out.table.columns[:5]) == ["volume_id", *ablation.SETTING_COLUMNS]
    assert len(out.calibration) == 1 and list(out.calibration.columns) == ablation.CALIBRATION_COLUMNS
    summary = ablation.summarize(out.table)
    assert list(summary["samples"]) == [1, 2] and list(summary["volumes"]) == [2, 2]
    table = sweeps.read_table(sweep.sweep_id)
    assert list(table["status"]) == ["completed", "completed", "failed"] + ["missing"] * 9
