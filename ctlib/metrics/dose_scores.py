"""OpenKBP dose-prediction scores (Babier et al., Med Phys 2021): dose score, DVH metrics and score, DVH
curves, and a clinical constraint check table.

Conventions follow the challenge's reference code (``ababier/open-kbp``,
``provided_code/dose_evaluation_class.py``):

- dose score: mean absolute difference in Gy over the voxels of the possible-dose mask;
- targets (PTVs): D99, D95, D1 = the dose received by at least 99 %, 95 %, 1 % of the structure volume,
  i.e. ``np.percentile(dose[mask], 100 - p)`` with numpy's default linear interpolation;
- organs at risk: D0.1cc = ``np.percentile(dose[mask], 100 - n / size * 100)`` with
  ``n = max(1, round(100 mm^3 / voxel volume))`` the voxels in 0.1 cc (a structure smaller than 0.1 cc
  gives its minimum dose: the percentile is clipped at 0), and Dmean;
- DVH score: mean absolute difference over every available (structure, metric) pair. The challenge pools
  the pairs of all patients before averaging: pool ``dvh_differences`` over patients for that number.

Bad input: a structure that is missing from ``masks`` or whose mask is empty is skipped and reported
(``DVHMetrics.skipped``, ``DVHCurves.skipped``, the ``note`` column of ``constraint_table``); a NaN or
infinite dose, or an array whose shape differs from the dose's, raises a ``ValueError`` naming the array.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from ctlib.io.openkbp import OARS, TARGETS

OAR_METRICS = ("D_0.1_cc", "mean")
TARGET_METRICS = ("D_99", "D_95", "D_1")
TENTH_CC_MM3 = 100.0
_D_PERCENT = re.compile(r"^D_(\d+(?:\.\d+)?)$")

Key = tuple[str, str]  # (structure, metric)


def check_dose(name: str, dose_gy: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The dose as a float64 array;
    ``ValueError`` naming ``name`` if its shape differs or it holds NaN / inf."""
    dose = np.asarray(dose_gy, dtype=np.float64)
    if shape is not None and dose.shape != tuple(shape):
        raise ValueError(f"{name} has shape {dose.shape}, expected {tuple(shape)}")
    bad = ~np.isfinite(dose)
    if bad.any():
        raise ValueError(f"{name} (shape {dose.shape}) holds {int(bad.sum())} NaN or infinite voxels")
    return dose


def _check_mask(name: str, mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {mask.shape}, expected the dose's {shape}")
    return mask.astype(bool, copy=False)


def dose_score(pred_dose_gy: np.ndarray, true_dose_gy: np.ndarray, possible_dose_mask: np.ndarray) -> float:
    """OpenKBP dose score: mean |pred - true| in Gy over the possible-dose mask.

    The challenge code divides the sum over the whole grid by the mask's size; both doses are 0 outside
    the mask there, so this is the same number, and a prediction that is not masked is not penalized
    outside the region where dose may be delivered.
    """
    true = check_dose("true_dose_gy", true_dose_gy)
    pred = check_dose("pred_dose_gy", pred_dose_gy, true.shape)
    mask = _check_mask("possible_dose_mask", possible_dose_mask, true.shape)
    if not mask.any():
        raise ValueError("possible_dose_mask is empty: the dose score over no voxels is undefined")
    return float(np.abs(pred[mask] - true[mask]).mean())


def voxel_volume_mm3(spacing_mm: Sequence[float]) -> float:
    """Product of the voxel spacings in mm^3 (``ValueError`` unless every spacing is positive and finite)."""
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if spacing.size == 0 or not np.all(np.isfinite(spacing)) or not np.all(spacing > 0):
        raise ValueError(f"spacing_mm must hold positive finite numbers, got {spacing.tolist()}")
    return float(np.prod(spacing))


def d_tenth_cc(structure_dose_gy: np.ndarray, voxel_mm3: float) -> float:
    """D0.1cc (OpenKBP): the minimum dose of the hottest 0.1 cc,
    as the challenge's percentile of the voxels."""
    voxels = max(1.0, float(np.round(TENTH_CC_MM3 / voxel_mm3)))
    percent = max(0.0, 100.0 - voxels / structure_dose_gy.size * 100.0)
    return float(np.percentile(structure_dose_gy, percent))


def dose_at_volume(structure_dose_gy: np.ndarray, volume_percent: float) -> float:
    """D_v: the dose received by at least ``volume_percent`` % of the structure (percentile 100 - v)."""
    if not 0.0 <= volume_percent <= 100.0:
        raise ValueError(f"volume_percent must be in [0, 100], got {volume_percent}")
    return float(np.percentile(structure_dose_gy, 100.0 - volume_percent))


@dataclass
class DVHMetrics:
    """OpenKBP DVH metrics of one dose: ``values[(structure, metric)]`` in Gy;
    ``skipped[structure]`` says why not."""

    values: dict[Key, float]
    skipped: dict[str, str] = field(default_factory=dict)


def _usable_masks(
    masks: Mapping[str, np.ndarray], names: Sequence[str], shape: tuple[int, ...]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    usable, skipped = {}, {}
    for name in names:
        if name not in masks:
            skipped[name] = "missing"
            continue
        mask = _check_mask(f"mask of {name}", masks[name], shape)
        if mask.any():
            usable[name] = mask
        else:
            skipped[name] = "empty mask"
    return usable, skipped


def dvh_metrics(
    dose_gy: np.ndarray,
    masks: Mapping[str, np.ndarray],
    spacing_mm: Sequence[float],
    *,
    oars: Sequence[str] = OARS,
    targets: Sequence[str] = TARGETS,
) -> DVHMetrics:
    """OpenKBP DVH metrics: D99 / D95 / D1 of every target, D0.1cc / Dmean of every organ at risk, in Gy.

    ``masks`` maps structure names to boolean arrays of the dose's shape. Structures in ``oars`` or
    ``targets`` that are missing or empty are skipped and listed in ``skipped``; masks of other names
    are ignored (listed as "not an OAR or target").
    """
    dose = check_dose("dose_gy", dose_gy)
    voxel_mm3 = voxel_volume_mm3(spacing_mm)
    usable, skipped = _usable_masks(masks, [*oars, *targets], dose.shape)
    skipped.update(
        {name: "not an OAR or target" for name in masks if name not in usable and name not in skipped}
    )
    values: dict[Key, float] = {}
    for name, mask in usable.items():
        inside = dose[mask]
        if name in oars:
            values[(name, "D_0.1_cc")] = d_tenth_cc(inside, voxel_mm3)
            values[(name, "mean")] = float(inside.mean())
        else:
            for metric in TARGET_METRICS:
                values[(name, metric)] = dose_at_volume(inside, float(metric[2:]))
    return DVHMetrics(values=values, skipped=skipped)


def dvh_differences(true: DVHMetrics, pred: DVHMetrics) -> dict[Key, float]:
    """|pred - true| in Gy for every (structure, metric) pair; both must cover the same pairs (same masks)."""
    if set(true.values) != set(pred.values):
        only_true = sorted(set(true.values) - set(pred.values))
        only_pred = sorted(set(pred.values) - set(true.values))
        raise ValueError(f"DVH metrics cover different pairs (compute both with the same masks): "
                         f"only in true {only_true}, only in pred {only_pred}")
    return {key: abs(pred.values[key] - true.values[key]) for key in true.values}


def dvh_score(true: DVHMetrics, pred: DVHMetrics) -> float:
    """OpenKBP DVH score of one patient: mean |pred - true| over the available (structure, metric) pairs,
    in Gy."""
    differences = dvh_differences(true, pred)
    if not differences:
        raise ValueError(f"no DVH metric to compare: every structure was skipped ({true.skipped})")
    return float(np.mean(list(differences.values())))


@dataclass
class DVHCurves:
    """Cumulative DVHs: ``volume_percent[name][i]`` = % of the structure receiving >= ``dose_gy[i]``."""

    dose_gy: np.ndarray
    volume_percent: dict[str, np.ndarray]
    skipped: dict[str, str] = field(default_factory=dict)


def dvh_curves(
    dose_gy: np.ndarray,
    masks: Mapping[str, np.ndarray],
    *,
    bin_width_gy: float = 0.1,
    max_dose_gy: float | None = None,
) -> DVHCurves:
    """Cumulative dose-volume histograms of every non-empty mask on dose bins ``0, w, 2w, ...`` in Gy.

    The bins reach ``max_dose_gy`` (default: the highest dose in any structure, rounded up to a bin),
    so curves of two doses are comparable when both use the same ``max_dose_gy``.
    """
    if not bin_width_gy > 0:
        raise ValueError(f"bin_width_gy must be positive, got {bin_width_gy}")
    dose = check_dose("dose_gy", dose_gy)
    usable, skipped = _usable_masks(masks, list(masks), dose.shape)
    if max_dose_gy is None:
        max_dose_gy = max((float(dose[m].max()) for m in usable.values()), default=0.0)
    n_bins = int(math.ceil(max_dose_gy / bin_width_gy - 1e-9)) + 1
    bins = np.arange(n_bins) * bin_width_gy
    curves = {}
    for name, mask in usable.items():
        inside = np.sort(dose[mask])
        at_least = inside.size - np.searchsorted(inside, bins, side="left")  # voxels with dose >= bin
        curves[name] = 100.0 * at_least / inside.size
    return DVHCurves(dose_gy=bins, volume_percent=curves, skipped=skipped)


@dataclass(frozen=True)
class Constraint:
    """A clinical limit: ``metric`` of ``structure`` must be <= (``sense="max"``) or >= (``"min"``) ``limit``.

    Metrics: ``"mean"``, ``"max"``, ``"D_0.1_cc"``, ``"D_<v>"`` (dose to at least v % of the volume), all
    in Gy; ``"V_<d>"`` (% of the volume receiving at least d Gy), in percent.
    """

    structure: str
    metric: str
    limit: float
    sense: Literal["max", "min"] = "max"
    source: str = ""


def evaluate_metric(structure_dose_gy: np.ndarray, metric: str, voxel_mm3: float) -> float:
    """One DVH metric of the doses inside a structure (see ``Constraint`` for the names)."""
    if metric == "mean":
        return float(structure_dose_gy.mean())
    if metric == "max":
        return float(structure_dose_gy.max())
    if metric == "D_0.1_cc":
        return d_tenth_cc(structure_dose_gy, voxel_mm3)
    if (match := _D_PERCENT.match(metric)) is not None:
        return dose_at_volume(structure_dose_gy, float(match.group(1)))
    if metric.startswith("V_"):
        try:
            threshold_gy = float(metric[2:])
        except ValueError:
            threshold_gy = None
        if threshold_gy is not None:
            return float(100.0 * np.mean(structure_dose_gy >= threshold_gy))
    raise ValueError(
        f"unknown metric {metric!r}: expected 'mean', 'max', 'D_0.1_cc', 'D_<percent>' or 'V_<Gy>'"
    )


def constraint_table(
    dose_gy: np.ndarray,
    masks: Mapping[str, np.ndarray],
    spacing_mm: Sequence[float],
    constraints: Sequence[Constraint],
) -> pd.DataFrame:
    """Clinical constraint check: one row per constraint (structure, metric, sense, limit, value, pass, note).

    A missing or empty structure keeps its row with ``value`` NaN, ``pass`` <NA> and the reason in ``note``,
    so a table never claims a pass it did not check.
    """
    dose = check_dose("dose_gy", dose_gy)
    voxel_mm3 = voxel_volume_mm3(spacing_mm)
    rows = []
    for c in constraints:
        if c.sense not in ("max", "min"):
            raise ValueError(f"constraint on {c.structure}: sense must be 'max' or 'min', got {c.sense!r}")
        row = {"structure": c.structure, "metric": c.metric, "sense": c.sense, "limit": float(c.limit),
               "value": float("nan"), "pass": pd.NA, "note": ""}
        usable, skipped = _usable_masks(masks, [c.structure], dose.shape)
        if c.structure in skipped:
            row["note"] = skipped[c.structure]
            evaluate_metric(np.zeros(1), c.metric, voxel_mm3)  # still refuse an unknown metric name
        else:
            value = evaluate_metric(dose[usable[c.structure]], c.metric, voxel_mm3)
            row["value"] = value
            row["pass"] = value <= c.limit if c.sense == "max" else value >= c.limit
        rows.append(row)
    table = pd.DataFrame(rows, columns=["structure", "metric", "sense", "limit", "value", "pass", "note"])
    table["pass"] = table["pass"].astype("boolean")
    return table


def head_neck_constraints(
    oar_limits: Mapping[str, tuple[str, float, str]],
    prescription_gy: Mapping[str, float],
) -> list[Constraint]:
    """Constraints from limit tables like ``ctlib.studies.dose.features.OAR_LIMITS`` / ``PRESCRIPTION_GY``.

    ``"Dmax"`` is checked as D0.1cc (the OpenKBP convention for maxima), ``"Dmean"`` as the mean; each PTV
    gets D95 >= its prescription (RTOG 0522 / 0615: 95 % of the PTV receives at least the prescribed dose).
    """
    names = {"Dmax": "D_0.1_cc", "Dmean": "mean"}
    out = []
    for structure, (metric, limit, source) in oar_limits.items():
        if metric not in names:
            raise ValueError(f"limit of {structure}: metric must be one of {sorted(names)}, got {metric!r}")
        out.append(Constraint(structure, names[metric], float(limit), "max", source))
    for structure, dose in prescription_gy.items():
        out.append(Constraint(structure, "D_95", float(dose), "min", "RTOG 0522/0615: D95 >= prescription"))
    return out
