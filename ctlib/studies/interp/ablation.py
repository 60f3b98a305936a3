"""Sampling ablation of latent-diffusion slice interpolation: sampler x steps x eta x samples, scored
with the slice-interpolation protocol (``ctlib.studies.interp.scoring``) and timed per volume.

DDPM (Ho et al. 2020) only runs its full chain of ``num_train_timesteps`` steps (fewer steps would need
a respaced schedule, see ``ctlib.diffusion.samplers``); it is always stochastic and equals DDIM with
eta = 1 on that chain, so its rows carry ``steps = T`` and ``eta = 1``. Every other sampler runs each
``steps`` x ``eta`` of the grid. With ``samples >= 2`` the per-voxel standard deviation of the samples
is compared with the absolute error of their mean over the scored voxels: Spearman rank correlation (the
goal is rho >= ``RANK_CORRELATION_GOAL``), Pearson correlation, and a calibration curve (mean |error| per
decile of the std against a calibrated Gaussian's ``sqrt(2/pi) * std``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from ctlib.diffusion import samplers
from ctlib.studies.interp import pipeline, thick_slices
from ctlib.studies.interp import scoring as interpolation
from ctlib.studies.interp.bundle import Interpolator

FULL_CHAIN_SAMPLERS = ("ddpm",)  # samplers that only run all T steps (steps_list and etas do not apply)
SETTING_COLUMNS = ["sampler", "steps", "eta", "samples"]
RANK_CORRELATION_GOAL = 0.5  # issue 12.7: Spearman rho(std, |error|) per volume should reach this
GAUSSIAN_ABS_RATIO = float(np.sqrt(2.0 / np.pi))  # E|e| / sigma for e ~ N(0, sigma^2)
CALIBRATION_COLUMNS = ["volume_id", "setting", *SETTING_COLUMNS, "std_error_spearman", "bin", "std_hu",
                       "abs_error_hu", "voxels", "error_over_std"]
RANK_MAX_VOXELS = 200_000  # voxels drawn for the rank correlation (standard error ~ 1 / sqrt(n) = 0.002)
METRIC_COLUMNS = [
    "psnr_full_db",
    "psnr_soft_db",
    "ssim_full",
    "slab_residual_hu",
    "psnr_full_no_dc_db",
    "residual_before_hu",
    "std_mean_hu",
    "std_error_pearson",
    "std_error_spearman",
    "unet_evals",
    "seconds",
    "seconds_per_step",
]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the sampling grid."""

    sampler: str
    steps: int
    eta: float
    samples: int

    @property
    def label(self) -> str:
        """Short name, e.g. ``ddim 20 steps, eta 0, K=2``."""
        return f"{self.sampler} {self.steps} steps, eta {self.eta:g}, K={self.samples}"


@dataclasses.dataclass
class AblationOutput:
    """Rows of ``run_ablation`` (one per volume and setting), the results the caller asked to keep, and
    the calibration curves of every run with K >= 2 (``CALIBRATION_COLUMNS``, one row per std decile)."""

    table: pd.DataFrame
    kept: dict[tuple[str, Setting], pipeline.InterpolationResult]
    calibration: pd.DataFrame


def sampling_grid(
    sampler_names: Iterable[str],
    steps_list: Iterable[int],
    etas: Iterable[float],
    samples_list: Iterable[int],
    *,
    num_train_timesteps: int,
) -> list[Setting]:
    """The settings of the sampler x steps x eta x samples grid, in that nesting order, without repeats.

    A full-chain sampler (DDPM) gets one setting per ``samples`` with ``steps = num_train_timesteps``
    and ``eta = 1``. Unknown samplers, steps outside ``[1, T]`` and samples < 1 raise ``ValueError``.
    """
    steps_list, etas, samples_list = (
        [int(s) for s in steps_list],
        [float(e) for e in etas],
        list(samples_list),
    )
    bad_steps = [s for s in steps_list if not 1 <= s <= num_train_timesteps]
    if bad_steps:
        raise ValueError(f"steps must lie in [1, T={num_train_timesteps}], got {bad_steps}")
    if any(isinstance(k, bool) or int(k) != k or k < 1 for k in samples_list):
        raise ValueError(f"samples must be integers >= 1, got {samples_list}")
    if any(e < 0 for e in etas):
        raise ValueError(f"eta must be >= 0, got {etas}")
    grid: list[Setting] = []
    for name in sampler_names:
        samplers.get_sampler(name)  # ValueError naming the registered samplers
        if name in FULL_CHAIN_SAMPLERS:
            points = [(num_train_timesteps, 1.0, int(k)) for k in samples_list]
        else:
            if not steps_list or not etas:
                raise ValueError(f"sampler {name!r} needs at least one value in steps_list and in etas")
            points = [(s, e, int(k)) for s in steps_list for e in etas for k in samples_list]
        for steps, eta, k in points:
            setting = Setting(name, steps, eta, k)
            if setting not in grid:
                grid.append(setting)
    return grid


def uncertainty_error_correlation(std_hu: np.ndarray, error_hu: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of the per-voxel std of the samples and |mean - truth| over ``mask``, all its
    voxels (NaN if either is flat). Sensitive to the shape of the relation; see the rank correlation."""
    s, e = std_hu[mask].astype(np.float64), np.abs(error_hu[mask]).astype(np.float64)
    if s.size < 2 or s.std() == 0 or e.std() == 0:
        return float("nan")
    return float(np.corrcoef(s, e)[0, 1])


def uncertainty_rank_correlation(
    std_hu: np.ndarray,
    error_hu: np.ndarray,
    mask: np.ndarray,
    *,
    max_voxels: int = RANK_MAX_VOXELS,
    seed: int = 0,
) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``) of the per-voxel std and |mean - truth| over
    ``mask`` (NaN if either is flat): 1 whenever the std grows monotonically with the error.

    Ranking every scored voxel of a whole volume (tens of millions) is slow, so when ``mask`` holds more
    than ``max_voxels`` voxels, ``max_voxels`` of them are drawn without replacement by
    ``numpy.random.default_rng(seed)``: the same voxels for every call on the same mask.
    """
    index = np.flatnonzero(mask)
    if index.size > max_voxels:
        index = np.sort(np.random.default_rng(seed).choice(index, size=max_voxels, replace=False))
    s = std_hu.reshape(-1)[index].astype(np.float64)
    e = np.abs(error_hu.reshape(-1)[index]).astype(np.float64)
    if s.size < 2 or s.min() == s.max() or e.min() == e.max():
        return float("nan")
    return float(stats.spearmanr(s, e).statistic)


def error_by_uncertainty(
    std_hu: np.ndarray, error_hu: np.ndarray, mask: np.ndarray, bins: int = 10
) -> pd.DataFrame:
    """Calibration curve of an uncertainty map: mean |error| per quantile bin (deciles by default) of the
    std over ``mask``, one row per non-empty bin: ``bin`` (its index), ``std_hu`` and ``abs_error_hu``
    (means), ``voxels`` and ``error_over_std`` (their ratio). A calibrated Gaussian (error ~ N(0, std^2))
    gives ``error_over_std = GAUSSIAN_ABS_RATIO`` = sqrt(2/pi) = 0.80 in every bin; above it the map is
    overconfident, below it underconfident. With K samples and a truth drawn like them, the error of
    their mean has std * sqrt(1 + 1/K); a small K also makes the std itself noisy, which flattens the curve.
    """
    s, e = std_hu[mask].astype(np.float64), np.abs(error_hu[mask]).astype(np.float64)
    if s.size == 0:
        return pd.DataFrame(columns=["bin", "std_hu", "abs_error_hu", "voxels", "error_over_std"])
    edges = np.unique(np.quantile(s, np.linspace(0.0, 1.0, bins + 1)))
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, max(len(edges) - 2, 0))
    voxels = np.bincount(which, minlength=max(len(edges) - 1, 1))
    filled = voxels > 0
    std_mean = np.bincount(which, weights=s, minlength=voxels.size)[filled] / voxels[filled]
    error_mean = np.bincount(which, weights=e, minlength=voxels.size)[filled] / voxels[filled]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(std_mean > 0, error_mean / std_mean, np.nan)
    return pd.DataFrame({"bin": np.flatnonzero(filled), "std_hu": std_mean, "abs_error_hu": error_mean,
                         "voxels": voxels[filled], "error_over_std": ratio})


def score(
    result: pipeline.InterpolationResult, pair: thick_slices.ThickThinPair
) -> tuple[dict[str, float], pd.DataFrame | None]:
    """Protocol metrics of one sampling result, its timing, and (K >= 2) the uncertainty statistics and
    the calibration curve (``error_by_uncertainty``, else None)."""
    row = interpolation.evaluate(result.mean, pair)
    row["psnr_full_no_dc_db"] = (interpolation.evaluate(result.raw, pair)["psnr_full_db"]
                                 if result.raw is not None else float("nan"))
    row["residual_before_hu"] = result.residual_before_hu
    curve = None
    if result.std is not None:
        mask = interpolation.scored_mask(pair)
        error = result.mean.array - pair.thin.array
        row["std_mean_hu"] = float(result.std.array[mask].mean())
        row["std_error_pearson"] = uncertainty_error_correlation(result.std.array, error, mask)
        row["std_error_spearman"] = uncertainty_rank_correlation(result.std.array, error, mask)
        curve = error_by_uncertainty(result.std.array, error, mask)
    else:
        row["std_mean_hu"] = row["std_error_pearson"] = row["std_error_spearman"] = float("nan")
    # network cost, independent of the machine: U-Net calls over all z-windows and samples
    row["unet_evals"] = result.settings["steps"] * result.settings["samples"] * len(result.windows)
    row["seconds"] = result.seconds
    row["seconds_per_step"] = result.seconds_per_step
    return row, curve


def run_ablation(
    pairs: Mapping[str, thick_slices.ThickThinPair],
    interpolator: Interpolator,
    grid: Iterable[Setting],
    *,
    seed: int = 0,
    window_depth: int | None = None,
    chunk: int = 16,
    bf16: bool = False,
    keep: Callable[[str, Setting], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> AblationOutput:
    """Run every setting of ``grid`` on every thick/thin pair with ``pipeline.interpolate_volume``.

    Each run uses the same ``seed``, so settings differ only in the sampler, not in the starting noise.
    ``keep(volume_id, setting)`` says which full results to return (they hold volumes: keep few);
    ``log`` receives one line per run. The table has ``volume_id``, the ``SETTING_COLUMNS`` and the
    ``METRIC_COLUMNS`` (PSNR in dB, SSIM, residuals and std in HU, U-Net calls, seconds per volume and
    per step); the calibration frame has ``CALIBRATION_COLUMNS``.
    """
    grid = list(grid)
    rows, kept, curves = [], {}, []
    for volume_id, pair in pairs.items():
        for setting in grid:
            t0 = time.perf_counter()
            result = pipeline.interpolate_volume(
                pair.thick, interpolator, factor=pair.factor, sampler=setting.sampler, steps=setting.steps,
                eta=setting.eta, samples=setting.samples, window_depth=window_depth, seed=seed, chunk=chunk,
                bf16=bf16, progress=False, return_raw=True)
            metrics, curve = score(result, pair)
            rows.append({"volume_id": volume_id, **dataclasses.asdict(setting), **metrics})
            if curve is not None:
                curves.append(curve.assign(volume_id=volume_id, setting=setting.label,
                                           **dataclasses.asdict(setting),
                                           std_error_spearman=metrics["std_error_spearman"]))
            if keep is not None and keep(volume_id, setting):
                kept[(volume_id, setting)] = result
            if log is not None:
                log(f"{volume_id}: {setting.label}: {rows[-1]['psnr_full_db']:.2f} dB, "
                    f"{time.perf_counter() - t0:.1f} s")
    table = pd.DataFrame(rows, columns=["volume_id", *SETTING_COLUMNS, *METRIC_COLUMNS])
    calibration = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    return AblationOutput(table, kept, calibration.reindex(columns=CALIBRATION_COLUMNS))


def uncertainty_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per volume and setting with K >= 2: mean std, Pearson r and Spearman rho of std vs |error|, and
    whether rho reaches ``RANK_CORRELATION_GOAL`` (column named after the goal)."""
    rows = table.loc[table["samples"] >= 2, ["volume_id", *SETTING_COLUMNS, "std_mean_hu",
                                              "std_error_pearson", "std_error_spearman"]]
    goal = rows["std_error_spearman"] >= RANK_CORRELATION_GOAL
    return rows.assign(**{f"goal rho >= {RANK_CORRELATION_GOAL:g}": goal}).reset_index(drop=True)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over volumes of every metric, one row per setting (grid order kept), plus ``volumes``."""
    grouped = table.groupby(SETTING_COLUMNS, sort=False)
    summary = grouped[METRIC_COLUMNS].mean()
    summary["volumes"] = grouped.size()
    return summary.reset_index()


def gather_sweep(sweep_id: str) -> AblationOutput:
    """The ablation of a sweep of the sampling-ablation notebook (``ctlib sweep ... -p cpu-real-sweep``): the
    ``results.csv`` and ``calibration.csv`` of its completed members (one setting each, read through the sweep
    table), concatenated in member order; nothing is sampled and no full result is kept."""
    from ctlib import runs
    from ctlib.runs import sweep as sweeps

    run_ids = sweeps.completed_run_ids(sweep_id)
    if not run_ids:
        raise ValueError(f"sweep {sweep_id}: no completed member to gather (ctlib sweep --status)")
    folders = [runs.run_dir_of(run_id) for run_id in run_ids]
    table = pd.concat([pd.read_csv(f / "results.csv") for f in folders], ignore_index=True)
    curves = [pd.read_csv(f / "calibration.csv") for f in folders if (f / "calibration.csv").is_file()]
    calibration = pd.concat([c for c in curves if len(c)], ignore_index=True) if any(len(c) for c in curves) \
        else pd.DataFrame()
    return AblationOutput(table.reindex(columns=["volume_id", *SETTING_COLUMNS, *METRIC_COLUMNS]), {},
                          calibration.reindex(columns=CALIBRATION_COLUMNS))
