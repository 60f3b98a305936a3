"""Clinical-style dose report per patient (issue 16): OpenKBP DVH metrics, a protocol constraint table,
gamma 3 %/3 mm and 2 %/2 mm, the OpenKBP scores, and notes where the reference plan itself fails.

Protocol of one report (``patient_report``), the planned dose as reference:

- DVH metrics per OpenKBP (Babier et al., Med Phys 2021; ``ctlib.metrics.dose_scores``): D99 / D95 / D1 of
  each PTV, D0.1cc / Dmean of each organ at risk, plan and prediction and their absolute difference;
- constraints (``report_constraints``): the organ-at-risk limits of ``features.OAR_LIMITS`` (RTOG 0615 /
  QUANTEC; "max" evaluated as D0.1cc) and target coverage as scored in RTOG 0225, whose criteria RTOG 0615
  carries over: D95 >= 100 % and D99 >= 93 % of each PTV's prescription, and for PTV70 at most 20 % of the
  volume at or above 110 % (77 Gy) and at most 5 % at or above 115 % (80.5 Gy); every row names its source;
- gamma (Low et al. 1998; ``ctlib.metrics.gamma``): global, normalized to the plan maximum, 10 % low-dose
  cutoff, pass rate over the evaluated voxels inside the possible-dose mask (the body for DICOM imports);
- scores: OpenKBP dose score (MAE in the possible-dose mask) and this patient's DVH score (mean |diff|).

A patient without a planned dose (all zeros: a DICOM case without RTDOSE) gets a prediction-only report:
no plan columns, no gamma, no scores. The figure is drawn by ``report_figure.report_figure``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ctlib.atomic import write_json, write_text
from ctlib.metrics import dose_scores, gamma
from ctlib.metrics.dose_scores import Constraint, DVHCurves
from ctlib.studies.dose import evaluation, features
from ctlib.studies.dose.patient_file import DosePatient
from ctlib.viz import style

GAMMA_CRITERIA: tuple[tuple[str, float, float], ...] = (("3%/3mm", 3.0, 3.0), ("2%/2mm", 2.0, 2.0))
GAMMA_CUTOFF_PERCENT = 10.0
COVERAGE_SOURCE = "RTOG 0225 plan scoring, carried over by RTOG 0615"
METRIC_LABELS = {"D_99": "D99", "D_95": "D95", "D_1": "D1", "D_0.1_cc": "D0.1cc", "mean": "Dmean"}
DVH_COLUMNS = ["structure", "metric", "plan_gy", "predicted_gy", "abs_diff_gy"]
CONSTRAINT_COLUMNS = ["constraint", "structure", "metric", "limit", "unit", "direction", "source",
                      "plan_value", "plan_pass", "predicted_value", "predicted_pass", "note"]
PLAN_COLUMNS = ["plan_gy", "abs_diff_gy", "plan_value", "plan_pass"]


def target_constraints(prescription_gy: Mapping[str, float]) -> list[Constraint]:
    """Target coverage and hot-spot limits of RTOG 0225 / 0615 for the given PTVs
    (``{name: prescription in Gy}``); the hot-spot limits apply to the highest-dose PTV."""
    out = []
    for name, rx in prescription_gy.items():
        out.append(Constraint(name, "D_95", float(rx), "min",
                              f"{COVERAGE_SOURCE}: 95 % of the PTV at or above the prescription"))
        out.append(Constraint(name, "D_99", round(0.93 * rx, 2), "min",
                              f"{COVERAGE_SOURCE}: 99 % of the PTV at or above 93 % of the prescription"))
    if prescription_gy:
        name, rx = max(prescription_gy.items(), key=lambda item: item[1])
        for fraction, volume in ((1.10, 20.0), (1.15, 5.0)):
            out.append(Constraint(name, f"V_{round(fraction * rx, 2):g}", volume, "max",
                                  f"{COVERAGE_SOURCE}: at most {volume:g} % of the PTV at or above "
                                  f"{100 * fraction:.0f} % of the prescription"))
    return out


def report_constraints(present: Iterable[str]) -> list[Constraint]:
    """The report's checks for a patient whose contoured structures are ``present``: every OAR limit of
    ``features.OAR_LIMITS`` (an absent organ keeps its row, marked missing) and the target checks of
    each present PTV."""
    present = set(present)
    oars = dose_scores.head_neck_constraints(features.OAR_LIMITS, {})
    targets = target_constraints({n: d for n, d in features.PRESCRIPTION_GY.items() if n in present})
    return [*oars, *targets]


def metric_label(metric: str) -> str:
    """Display name of a ``dose_scores`` metric: ``D_95`` -> ``D95``, ``mean`` -> ``Dmean``,
    ``V_77`` -> ``V77Gy``."""
    if metric.startswith("V_"):
        return f"V{metric[2:]}Gy"
    return METRIC_LABELS.get(metric, metric.replace("_", ""))


def metric_unit(metric: str) -> str:
    """``%`` for a volume metric ``V_<Gy>``, else ``Gy``."""
    return "%" if metric.startswith("V_") else "Gy"


def constraint_label(c: Constraint) -> str:
    """``"SpinalCord D0.1cc <= 45 Gy"``."""
    return f"{c.structure} {metric_label(c.metric)} {'<=' if c.sense == 'max' else '>='} {c.limit:g} " \
           f"{metric_unit(c.metric)}"


@dataclass
class PatientReport:
    """One patient's report: tables, gamma pass rates (percent, by criterion), scores (Gy), notes, DVHs."""

    patient_id: str
    has_plan: bool
    dvh_metrics: pd.DataFrame  # DVH_COLUMNS (plan columns dropped without a plan)
    constraints: pd.DataFrame  # CONSTRAINT_COLUMNS (plan columns dropped without a plan)
    gamma: dict[str, float]  # {"3%/3mm": pass %, "2%/2mm": pass %}; empty without a plan
    scores: dict[str, float]  # dose_score_gy, dvh_score_gy; empty without a plan
    notes: list[str]
    curves: dict[str, DVHCurves] = field(default_factory=dict)  # "plan" (if any), "predicted"
    gamma_voxels: dict[str, int] = field(default_factory=dict)
    gamma_region: str = "possible-dose mask"

    def figure(self, patient: DosePatient, pred_dose_gy: np.ndarray, **kwargs: Any) -> plt.Figure:
        """``report_figure.report_figure(self, patient, pred_dose_gy, **kwargs)``."""
        from ctlib.studies.dose import report_figure

        return report_figure.report_figure(self, patient, pred_dose_gy, **kwargs)


def has_dose(dose_gy: np.ndarray) -> bool:
    """Whether a dose holds any nonzero voxel (an all-zero plan means: no plan)."""
    return bool(np.any(np.asarray(dose_gy) != 0))


def gamma_pass_rates(
    plan_dose_gy: np.ndarray,
    pred_dose_gy: np.ndarray,
    spacing_mm: Sequence[float],
    region: np.ndarray,
    *,
    criteria: Sequence[tuple[str, float, float]] = GAMMA_CRITERIA,
    cutoff_percent: float = GAMMA_CUTOFF_PERCENT,
    device: str | None = None,
) -> tuple[dict[str, float], dict[str, int]]:
    """Global gamma pass rates in percent (Low et al. 1998) per ``(name, dose %, DTA mm)`` criterion, over
    the voxels of ``region`` (``(D, H, W)`` bool) that pass the low-dose cutoff; and their counts."""
    rates, counts = {}, {}
    for name, dose_percent, distance_mm in criteria:
        result = gamma.gamma_index(plan_dose_gy, pred_dose_gy, spacing_mm, dose_percent=dose_percent,
                                   distance_mm=distance_mm, cutoff_percent=cutoff_percent, device=device)
        values = np.asarray(result.gamma)
        evaluated = np.isfinite(values) & region
        counts[name] = int(evaluated.sum())
        rates[name] = float(100.0 * np.mean(values[evaluated] <= 1.0)) if counts[name] else float("nan")
    return rates, counts


def _dvh_table(plan: dose_scores.DVHMetrics | None, pred: dose_scores.DVHMetrics) -> pd.DataFrame:
    rows = [{"structure": s, "metric": m, "plan_gy": plan.values[(s, m)] if plan else np.nan,
             "predicted_gy": value, "abs_diff_gy": abs(value - plan.values[(s, m)]) if plan else np.nan}
            for (s, m), value in pred.values.items()]
    return pd.DataFrame(rows, columns=DVH_COLUMNS)


def _constraint_table(
    plan: np.ndarray | None, pred: np.ndarray, masks: Mapping[str, np.ndarray], spacing_mm: Sequence[float],
    checks: Sequence[Constraint],
) -> pd.DataFrame:
    predicted = dose_scores.constraint_table(pred, masks, spacing_mm, checks)
    planned = dose_scores.constraint_table(plan, masks, spacing_mm, checks) if plan is not None else None
    table = pd.DataFrame({
        "constraint": [constraint_label(c) for c in checks],
        "structure": [c.structure for c in checks],
        "metric": [c.metric for c in checks],
        "limit": [float(c.limit) for c in checks],
        "unit": [metric_unit(c.metric) for c in checks],
        "direction": ["<=" if c.sense == "max" else ">=" for c in checks],
        "source": [c.source for c in checks],
        "plan_value": planned["value"] if planned is not None else np.nan,
        "plan_pass": planned["pass"] if planned is not None else pd.NA,
        "predicted_value": predicted["value"],
        "predicted_pass": predicted["pass"],
        "note": predicted["note"],
    }, columns=CONSTRAINT_COLUMNS)
    for name in ("plan_pass", "predicted_pass"):
        table[name] = table[name].astype("boolean")
    return table


def _violation(row: pd.Series, value: float) -> str:
    sign = ">" if row["direction"] == "<=" else "<"
    return (f"{row['structure']} {metric_label(row['metric'])} {value:.1f} {row['unit']} {sign} "
            f"{row['limit']:g} {row['unit']} ({row['source']})")


def _notes(table: pd.DataFrame, has_plan: bool) -> list[str]:
    notes = []
    predicted_fails = ~table["predicted_pass"].fillna(True)
    if has_plan:
        plan_fails = ~table["plan_pass"].fillna(True)
        for _, row in table[plan_fails].iterrows():
            fails_too = pd.notna(row["predicted_pass"]) and not row["predicted_pass"]
            verdict = "fails too" if fails_too else "passes"
            notes.append(f"the reference plan itself fails: {_violation(row, row['plan_value'])}; "
                         f"prediction {row['predicted_value']:.1f} {row['unit']} ({verdict})")
        worse = table[table["plan_pass"].fillna(False) & predicted_fails]
        notes += [f"the prediction fails where the plan passes: {_violation(row, row['predicted_value'])}"
                  for _, row in worse.iterrows()]
    else:
        notes.append("no planned dose (all zeros): the report covers the prediction only "
                     "(no gamma, no dose or DVH score)")
        notes += [f"the prediction fails: {_violation(row, row['predicted_value'])}"
                  for _, row in table[predicted_fails].iterrows()]
    skipped = table[table["note"] != ""]
    if len(skipped):
        notes.append("not checked: " + ", ".join(f"{s} ({n})" for s, n in
                                                 zip(skipped["structure"], skipped["note"], strict=True)))
    return notes


def patient_report(
    patient: DosePatient,
    pred_dose_gy: np.ndarray,
    *,
    plan_dose_gy: np.ndarray | None = None,
    gamma: bool = True,
    gamma_device: str | None = None,
) -> PatientReport:
    """The report of one patient (module docstring's protocol); ``plan_dose_gy`` defaults to
    ``patient.dose_gy``, an all-zero plan gives a prediction-only report; ``gamma=False`` skips gamma."""
    plan = np.asarray(patient.dose_gy if plan_dose_gy is None else plan_dose_gy)
    plan = dose_scores.check_dose("plan_dose_gy", plan, patient.shape)
    pred = dose_scores.check_dose("pred_dose_gy", pred_dose_gy, patient.shape)
    with_plan = has_dose(plan)
    masks = evaluation.structure_masks(patient)
    spacing = [float(s) for s in patient.spacing_mm]
    pred_dvh = dose_scores.dvh_metrics(pred, masks, spacing)
    plan_dvh = dose_scores.dvh_metrics(plan, masks, spacing) if with_plan else None
    checks = report_constraints(masks)
    table = _constraint_table(plan if with_plan else None, pred, masks, spacing, checks)
    top = max(float(pred.max()), float(plan.max()))
    curves = {"plan": dose_scores.dvh_curves(plan, masks, max_dose_gy=top)} if with_plan else {}
    curves["predicted"] = dose_scores.dvh_curves(pred, masks, max_dose_gy=top)
    notes = _notes(table, with_plan)
    region = np.asarray(patient.possible_dose_mask, dtype=bool)
    scores: dict[str, float] = {}
    rates: dict[str, float] = {}
    voxels: dict[str, int] = {}
    if with_plan:
        dvh = _dvh_table(plan_dvh, pred_dvh)
        scores["dose_score_gy"] = (dose_scores.dose_score(pred, plan, region) if region.any()
                                   else float("nan"))
        scores["dvh_score_gy"] = float(dvh["abs_diff_gy"].mean()) if len(dvh) else float("nan")
        if gamma:
            rates, voxels = gamma_pass_rates(plan, pred, spacing, region, device=gamma_device)
    else:
        dvh = _dvh_table(None, pred_dvh).drop(columns=["plan_gy", "abs_diff_gy"])
        table = table.drop(columns=["plan_value", "plan_pass"])
    return PatientReport(patient_id=patient.patient_id, has_plan=with_plan, dvh_metrics=dvh,
                         constraints=table, gamma=rates, scores=scores, notes=notes, curves=curves,
                         gamma_voxels=voxels)


def report_summary(report: PatientReport) -> dict[str, Any]:
    """The report's numbers and notes as plain JSON-ready values (what ``save_patient_report`` writes)."""
    checked = report.constraints.dropna(subset=["predicted_pass"])
    out: dict[str, Any] = {"patient": report.patient_id, "has_plan": report.has_plan,
                           **report.scores, "constraints_checked": len(checked),
                           "predicted_met": int(checked["predicted_pass"].sum())}
    for name, rate in report.gamma.items():
        out[f"gamma_{name}_pass_percent"] = rate
    if report.has_plan:
        planned = report.constraints.dropna(subset=["plan_pass"])
        out["plan_met"] = int(planned["plan_pass"].sum())
        out["plan_failures"] = int((~planned["plan_pass"]).sum())
    return out


def save_patient_report(
    report: PatientReport,
    figure: plt.Figure | None,
    out_dir: str | os.PathLike,
    patient_id: str,
    *,
    provenance: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``<patient_id>_report.{png,pdf,json}`` (the figure, 300 DPI, with ``provenance``),
    ``<patient_id>_dvh_metrics.csv``, ``<patient_id>_constraints.csv`` and ``<patient_id>_summary.json``
    (scores, gamma, notes) into ``out_dir``, each atomically; returns the paths."""
    out = Path(out_dir)
    written = []
    if figure is not None:
        about = {"patient": patient_id, "kind": "dose patient report", **(provenance or {})}
        written += style.save_figure(figure, out / f"{patient_id}_report", about)
    for name, table in (("dvh_metrics", report.dvh_metrics), ("constraints", report.constraints)):
        path = out / f"{patient_id}_{name}.csv"
        write_text(path, table.to_csv(index=False))
        written.append(path)
    path = out / f"{patient_id}_summary.json"
    write_json(path, {**report_summary(report), "gamma_region": report.gamma_region,
                      "gamma_cutoff_percent": GAMMA_CUTOFF_PERCENT, "notes": report.notes})
    return [*written, path]


def cohort_summary(reports: Sequence[PatientReport]) -> pd.DataFrame:
    """One row per patient (dose score, DVH score, gamma pass rates, constraints met by the plan and the
    prediction, plan failures) and two summary rows, ``mean`` and ``sd`` (ddof 1), over the patients."""
    if not reports:
        raise ValueError("cohort_summary: no reports given")
    columns = ["dose_score_gy", "dvh_score_gy",
               *(f"gamma_{name}_pass_percent" for name, _, _ in GAMMA_CRITERIA),
               "constraints_checked", "plan_met", "predicted_met", "plan_failures"]
    table = pd.DataFrame([report_summary(r) for r in reports]).set_index("patient")
    table = table.reindex(columns=columns).astype(float)
    summary = pd.DataFrame({"mean": table.mean(), "sd": table.std(ddof=1)}).T
    return pd.concat([table, summary])


def constraint_pass_rates(reports: Sequence[PatientReport]) -> pd.DataFrame:
    """Per constraint: patients checked, % passing on the plan and on the prediction, and % of patients
    where the two verdicts agree (missing structures and prediction-only reports left out of the plan
    columns)."""
    frames = [r.constraints.assign(patient=r.patient_id) for r in reports]
    if not frames:
        raise ValueError("constraint_pass_rates: no reports given")
    table = pd.concat(frames, ignore_index=True).dropna(subset=["predicted_pass"])
    if "plan_pass" not in table:
        table["plan_pass"] = pd.NA
    table["plan_pass"] = table["plan_pass"].astype("boolean")
    table["agree"] = (table["plan_pass"] == table["predicted_pass"]).astype("boolean")
    for name in ("plan_pass", "predicted_pass", "agree"):
        table[name] = table[name].astype(float)
    keys = ["constraint", "source"]
    out = table.groupby(keys, sort=False).agg(
        patients=("patient", "nunique"), plan_pass_percent=("plan_pass", "mean"),
        predicted_pass_percent=("predicted_pass", "mean"), agree_percent=("agree", "mean"))
    out[["plan_pass_percent", "predicted_pass_percent", "agree_percent"]] *= 100.0
    return out
