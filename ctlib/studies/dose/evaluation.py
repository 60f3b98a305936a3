"""OpenKBP-style evaluation of trained dose models (Babier et al., Med Phys 2021): dose score, DVH score,
gamma, constraints.

Protocol, per patient of a split of the preprocessing run recorded in the model's checkpoint:

- the whole dose is predicted by sliding windows (``ctlib.studies.dose.inference``; DDIM sampling for the
diffusion
  variant, with a generator seeded per patient so a patient's sample does not depend on which others are
  evaluated) and set to 0 outside the possible-dose mask;
- dose score = MAE in Gy inside the possible-dose mask (``ctlib.metrics.dose_scores.dose_score``), averaged
  over patients, as the challenge does;
- DVH metrics = D99 / D95 / D1 of the PTVs, D0.1cc / Dmean of the organs at risk, over the structures the
  patient has (missing ones are skipped, as in the challenge); the DVH score is the mean |error| pooled over
  every (patient, structure, metric) pair (the challenge's number) and, per patient, over its own pairs;
- gamma = global 3 % / 3 mm, 10 % low-dose cutoff of the planned maximum, the planned dose as reference
  (``ctlib.metrics.gamma``); the pass rate is averaged over patients;
- the clinical constraint check (``dose_scores.constraint_table`` with ``ctlib.studies.dose.features`` limits)
is made
  on the planned and the predicted dose, and the two verdicts compared.

``ANCHORS`` are the published numbers on the challenge's full 100-patient test set; the shared data holds 40
of those patients, so a comparison with them is indicative, not like for like.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ctlib.metrics import dose_scores, gamma
from ctlib.runs import record
from ctlib.studies.dose import features, inference, model_io, run_kind
from ctlib.studies.dose.patient_file import DosePatient, load_dose_patient

GAMMA_DEFAULTS: dict[str, float] = {"dose_percent": 3.0, "distance_mm": 3.0, "cutoff_percent": 10.0}
DVH_COLUMNS = ("run_id", "variant", "patient", "structure", "metric", "true_gy", "pred_gy", "abs_error_gy")


@dataclass(frozen=True)
class Anchor:
    """A published OpenKBP result: dose and DVH score in Gy on the challenge's test set."""

    name: str
    dose_score_gy: float
    dvh_score_gy: float
    test_patients: int
    source: str


ANCHORS = (
    Anchor("OpenKBP challenge winner", 2.43, 1.48, 100,
           "Babier et al., Med Phys 48:5549 (2021), full 100-patient test set (as quoted in issue 5)"),
    Anchor("plain 3D U-Net", 2.77, 2.20, 100,
           "OpenKBP, full 100-patient test set (as quoted in issue 5)"),
)


# ---------------------------------------------------------------------------------- model bundle
@dataclass
class DoseModelBundle:
    """A trained dose model ready to predict whole patients: module, checkpoint and inference options."""

    run_id: str
    variant: str  # the loss name of a U-Net, "diffusion" for the diffusion ablation
    module: nn.Module
    run: run_kind.DoseRun  # what the checkpoint and params.json of the training run record
    # roi_size, overlap, blend, sw_batch_size, sw_device
    window_options: dict[str, Any] = field(default_factory=dict)
    sample_steps: int = 20
    sample_eta: float = 0.0
    seed: int = 0
    tta: bool = False  # mirror test-time augmentation (inference.predict_patient's mirror_tta)

    @property
    def model_config(self) -> dict[str, Any]:
        return self.run.model_config

    @property
    def model_kind(self) -> str:
        return self.run.kind

    @property
    def preprocess_run_id(self) -> str:
        return str(self.run.preprocess_run_id)

    def predictor(self) -> inference.DoseModel:
        """``(inputs, constraints) -> dose_gy``;
        a fresh generator seeded by ``seed`` for the diffusion sampler."""
        device = next(self.module.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        return model_io.dose_predictor(
            self.module, sample_steps=self.sample_steps, sample_eta=self.sample_eta, generator=generator
        )

    def predict(self, patient: DosePatient) -> np.ndarray:
        """Whole-patient dose ``(D, H, W)`` in Gy, with the checkpoint's input normalization."""
        return inference.predict_patient(
            self.predictor(), patient, window=self.run.window, sdf_clip_mm=self.run.sdf_clip_mm,
            include_pdm=self.run.include_pdm, mirror_tta=self.tta,
            resolution_factor=int(self.model_config.get("resolution_factor", 1)), **self.window_options,
        )


def load_dose_run(
    run_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    sw_batch_size: int = 1,
    sample_steps: int | None = None,
    sample_eta: float | None = None,
    seed: int = 0,
    tta: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> DoseModelBundle:
    """The model of a training run (notebook 02): ``<run_dir>/checkpoints/dose_model.pt`` (or ``checkpoint``,
    e.g. a snapshot of that run) in eval mode; ``tta``: mirror test-time augmentation.

    Sliding-window and sampling options left ``None`` are those the run validated with (its ``sw_roi``,
    ``sw_overlap``, ``sw_blend``, ``sample_steps``, ``sample_eta``), else the checkpoint's patch size.
    """
    run_dir = Path(run_dir)
    path = Path(checkpoint) if checkpoint is not None else run_kind.DoseRun.checkpoint_file(run_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir.name}: no dose checkpoint {path} (is it a run of the dose training notebook?)"
        )
    run = run_kind.DoseRun.load(path if checkpoint is not None else run_dir, map_location=device,
                                use_ema=use_ema)
    params_file = run_dir / "params.json"  # a checkpoint kept elsewhere in the run folder (a snapshot)
    trained = run.parameters or (record.read_json_object(params_file).get("parameters", {})
                                 if params_file.is_file() else {})
    roi = roi_size or trained.get("sw_roi") or run.patch_size
    options = {
        "roi_size": [int(r) for r in roi],
        "overlap": float(trained.get("sw_overlap", 0.5) if overlap is None else overlap),
        "blend": str(trained.get("sw_blend", "gaussian") if blend is None else blend),
        "sw_batch_size": int(sw_batch_size),
        "sw_device": torch.device(device),
    }
    return DoseModelBundle(
        run_id=run_dir.name,
        variant=run.variant,
        module=run.module,
        run=run,
        window_options=options,
        sample_steps=int(trained.get("sample_steps", 20) if sample_steps is None else sample_steps),
        sample_eta=float(trained.get("sample_eta", 0.0) if sample_eta is None else sample_eta),
        seed=int(seed),
        tta=bool(tta),
    )


# ------------------------------------------------------------------------------------ one patient
def structure_masks(patient: DosePatient) -> dict[str, np.ndarray]:
    """``{name: (D, H, W) bool}`` of the structures the patient has (missing ones left out)."""
    return {str(name): patient.masks[i] for i, name in enumerate(patient.roi_names) if patient.present[i]}


def patient_constraints(patient: DosePatient) -> list[dose_scores.Constraint]:
    """The clinical checks of one patient: every OAR limit of ``features.OAR_LIMITS`` and D95 >= prescription
    of each PTV it has (an absent OAR keeps its row, flagged "missing", in the table)."""
    present = set(structure_masks(patient))
    prescriptions = {name: dose for name, dose in features.PRESCRIPTION_GY.items() if name in present}
    return dose_scores.head_neck_constraints(features.OAR_LIMITS, prescriptions)


def constraint_check(patient: DosePatient, pred_dose_gy: np.ndarray) -> pd.DataFrame:
    """One row per constraint: the planned and the predicted value and verdict, and whether they agree."""
    masks, checks = structure_masks(patient), patient_constraints(patient)
    planned = dose_scores.constraint_table(patient.dose_gy, masks, patient.spacing_mm, checks)
    predicted = dose_scores.constraint_table(pred_dose_gy, masks, patient.spacing_mm, checks)
    table = planned[["structure", "metric", "sense", "limit"]].copy()
    table["planned_gy"], table["planned_pass"] = planned["value"], planned["pass"]
    table["predicted_gy"], table["predicted_pass"] = predicted["value"], predicted["pass"]
    table["agree"] = (planned["pass"] == predicted["pass"]).astype("boolean")
    table["note"] = planned["note"]
    return table


@dataclass
class PatientEvaluation:
    """Scores of one patient (``row``), its DVH metric rows, constraint rows, prediction and gamma map."""

    row: dict[str, Any]
    dvh: list[dict[str, Any]]
    constraints: pd.DataFrame
    pred_dose_gy: np.ndarray
    gamma_map: np.ndarray | None


def evaluate_patient(
    bundle: DoseModelBundle,
    patient: DosePatient,
    *,
    with_gamma: bool = True,
    gamma_options: dict[str, Any] | None = None,
) -> PatientEvaluation:
    """Predict one patient and score it (the module docstring's protocol)."""
    t0 = time.perf_counter()
    pred = bundle.predict(patient)
    predict_s = time.perf_counter() - t0
    masks = structure_masks(patient)
    true_dvh = dose_scores.dvh_metrics(patient.dose_gy, masks, patient.spacing_mm)
    pred_dvh = dose_scores.dvh_metrics(pred, masks, patient.spacing_mm)
    differences = dose_scores.dvh_differences(true_dvh, pred_dvh)
    ident = {"run_id": bundle.run_id, "variant": bundle.variant, "patient": patient.patient_id}
    dvh_rows = [
        {
            **ident,
            "structure": s,
            "metric": m,
            "true_gy": true_dvh.values[(s, m)],
            "pred_gy": pred_dvh.values[(s, m)],
            "abs_error_gy": err,
        }
        for (s, m), err in differences.items()
    ]
    row: dict[str, Any] = {
        **ident, "model_kind": bundle.model_kind,
        "dose_score_gy": dose_scores.dose_score(pred, patient.dose_gy, patient.possible_dose_mask),
        "dvh_score_gy": float(np.mean(list(differences.values()))) if differences else float("nan"),
        "dvh_pairs": len(differences), "structures": len(masks), "predict_s": predict_s,
    }
    gamma_map = None
    if with_gamma:
        t0 = time.perf_counter()
        result = gamma.gamma_index(
            patient.dose_gy, pred, patient.spacing_mm, **{**GAMMA_DEFAULTS, **(gamma_options or {})}
        )
        row["gamma_pass_percent"] = result.pass_rate_percent
        row["gamma_evaluated_voxels"] = result.evaluated_voxels
        row["gamma_s"] = time.perf_counter() - t0
        gamma_map = np.asarray(result.gamma, dtype=np.float32)
    constraints = constraint_check(patient, pred)
    constraints.insert(0, "patient", patient.patient_id)
    constraints.insert(0, "variant", bundle.variant)
    row["constraints_agree_percent"] = float(100.0 * constraints["agree"].dropna().astype(float).mean())
    return PatientEvaluation(row, dvh_rows, constraints, pred, gamma_map)


# ----------------------------------------------------------------------------------- many patients
@dataclass
class Evaluation:
    """Per-patient scores, pooled DVH metric rows, constraint rows, and the predictions kept."""

    scores: pd.DataFrame  # one row per (variant, patient)
    dvh: pd.DataFrame  # one row per (variant, patient, structure, metric)
    constraints: pd.DataFrame  # one row per (variant, patient, constraint)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # patient id -> (D, H, W) Gy
    gamma_maps: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate_patients(
    bundle: DoseModelBundle,
    patient_paths: Iterable[str | os.PathLike],
    *,
    with_gamma: bool = True,
    gamma_options: dict[str, Any] | None = None,
    keep: Sequence[str] | bool = (),
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Evaluation:
    """Evaluate ``bundle`` on every patient file; ``keep`` lists the patient ids whose prediction and gamma
    map are returned (``True``: all); ``progress`` receives each patient's score row as it is done."""
    rows, dvh_rows, constraint_tables, predictions, gamma_maps = [], [], [], {}, {}
    for path in patient_paths:
        patient = load_dose_patient(path)
        result = evaluate_patient(bundle, patient, with_gamma=with_gamma, gamma_options=gamma_options)
        rows.append(result.row)
        dvh_rows += result.dvh
        constraint_tables.append(result.constraints)
        if keep is True or (keep and patient.patient_id in keep):
            predictions[patient.patient_id] = result.pred_dose_gy
            if result.gamma_map is not None:
                gamma_maps[patient.patient_id] = result.gamma_map
        if progress is not None:
            progress(result.row)
    if not rows:
        raise ValueError(f"evaluate_patients: no patient files given for run {bundle.run_id}")
    return Evaluation(
        pd.DataFrame(rows),
        pd.DataFrame(dvh_rows, columns=list(DVH_COLUMNS)),
        pd.concat(constraint_tables, ignore_index=True),
        predictions,
        gamma_maps,
    )


def summarize(scores: pd.DataFrame, dvh: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: patients, dose score (mean and sd over patients), DVH score (pooled over every
    (patient, structure, metric) pair, the challenge's number; and mean of per-patient scores), gamma pass
    rate."""
    out = []
    for (run_id, variant), group in scores.groupby(["run_id", "variant"], sort=False):
        pooled = dvh[(dvh["run_id"] == run_id) & (dvh["variant"] == variant)]["abs_error_gy"]
        row = {"variant": variant, "run_id": run_id, "model_kind": group["model_kind"].iloc[0],
               "patients": len(group), "dose_score_gy": group["dose_score_gy"].mean(),
               "dose_score_sd_gy": group["dose_score_gy"].std(ddof=1) if len(group) > 1 else float("nan"),
               "dvh_score_gy": float(pooled.mean()) if len(pooled) else float("nan"),
               "dvh_score_patient_mean_gy": group["dvh_score_gy"].mean()}
        if "gamma_pass_percent" in group:
            row["gamma_pass_percent"] = group["gamma_pass_percent"].mean()
            row["gamma_pass_sd_percent"] = (group["gamma_pass_percent"].std(ddof=1) if len(group) > 1
                                            else float("nan"))
        out.append(row)
    return pd.DataFrame(out).set_index("variant")


def with_anchors(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary``'s dose / DVH score (and gamma) next to the published OpenKBP anchors,
    with the test-set size."""
    ours = summary.reset_index()[["variant", "patients", "dose_score_gy", "dvh_score_gy"]
                                 + (["gamma_pass_percent"] if "gamma_pass_percent" in summary else [])]
    ours.insert(1, "source", "this study")
    anchors = pd.DataFrame(
        [
            {
                "variant": a.name,
                "source": a.source,
                "patients": a.test_patients,
                "dose_score_gy": a.dose_score_gy,
                "dvh_score_gy": a.dvh_score_gy,
            }
            for a in ANCHORS
        ]
    )
    return pd.concat([ours, anchors], ignore_index=True).set_index("variant")


def constraint_summary(constraints: pd.DataFrame) -> pd.DataFrame:
    """Per variant and constraint: how many patients were checked, % passing on the plan and on the
    prediction, and % of patients where the two verdicts agree (rows without a verdict, missing structures,
    left out)."""
    checked = constraints.dropna(subset=["planned_pass", "predicted_pass"]).copy()
    for name in ("planned_pass", "predicted_pass", "agree"):
        checked[name] = checked[name].astype(float)
    grouped = checked.groupby(["variant", "structure", "metric", "sense", "limit"], sort=False)
    table = grouped.agg(patients=("patient", "nunique"), planned_pass_percent=("planned_pass", "mean"),
                        predicted_pass_percent=("predicted_pass", "mean"), agree_percent=("agree", "mean"))
    table[["planned_pass_percent", "predicted_pass_percent", "agree_percent"]] *= 100.0
    return table


def constraint_agreement(constraints: pd.DataFrame) -> pd.DataFrame:
    """One row per constraint: % of patients passing on the plans (of the first variant's patients) and, per
    variant, % of patients whose predicted verdict agrees with the plan's (a compact view of
    ``constraint_summary``)."""
    summary = constraint_summary(constraints).reset_index()
    keys = ["structure", "metric", "sense", "limit"]
    first = summary["variant"].iloc[0]
    table = summary[summary["variant"] == first].set_index(keys)[["patients", "planned_pass_percent"]]
    agree = summary.pivot_table(index=keys, columns="variant", values="agree_percent", sort=False)
    agree.columns = [f"agree % ({v})" for v in agree.columns]
    return table.join(agree)
