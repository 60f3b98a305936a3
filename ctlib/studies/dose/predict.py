"""One patient in, its predicted dose out: ``predict_case`` (behind ``ctlib dose predict``).

Input: an OpenKBP patient (``.npz`` or a folder of the challenge's CSVs), predicted on its own grid (padded
to the network's window and size multiple, then cropped back), or a DICOM-RT folder (CT series + RTSTRUCT,
optional RTDOSE / RTPLAN; ``dicom_rt_import.read_rt_folder``) whose CT is resampled to the training spacing
(``model_grid``: CT linear, masks nearest), predicted, and whose dose is resampled back onto the CT grid
(linear), 0 outside the body (the possible-dose mask).

Outputs in ``out_dir`` (``<id>`` the case id): ``<id>_dose_pred.nii.gz`` (float32 Gy on the CT grid),
``<id>_dose_pred_rtdose.dcm`` (RT Dose on the CT grid; the CT's frame of reference and study for DICOM input,
new ones for OpenKBP; no patient identifiers unless ``keep_identifiers``), ``<id>_dvh.csv`` (OpenKBP DVH
metrics of each structure present: predicted, planned when there is a plan, difference) and
``prediction.json`` (model name and sha256, input, grids, warnings). Everything is computed before the
first file is written; each file is written atomically, ``prediction.json`` last, and a failure while
writing removes the files this call had written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctlib import atomic
from ctlib.errors import CTInputError
from ctlib.io.openkbp import ROI_NAMES, TARGETS, OpenKBPPatient, is_openkbp_folder

InputKind = Literal["openkbp", "dicom"]
DEFAULT_TRAINING_SPACING_MM = (2.5, 3.906, 3.906)  # median (dz, dy, dx) of the OpenKBP training patients
SUFFIXES = {"nifti": "_dose_pred.nii.gz", "rtdose": "_dose_pred_rtdose.dcm", "dvh": "_dvh.csv"}
PREDICTION_JSON = "prediction.json"
AIR_HU = -1024.0
MIN_Z_MM = 60.0  # a CT shorter than this along z is far from the head-and-neck volumes the model saw


class DosePredictionWarning(UserWarning):
    """The input is outside what the model was trained on, or was read with a documented rule."""


@dataclass
class DoseCase:
    """A patient read for prediction, on its own CT grid."""

    patient: OpenKBPPatient  # canonical structure names; dose zeros when there is no plan
    has_dose: bool
    kind: InputKind
    source: Path
    reference_file: Path | None = None  # a CT file of the DICOM series (frame of reference, study)
    rtplan_file: Path | None = None
    files: dict[str, Any] = field(default_factory=dict)
    unmatched_roi_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- input
def input_kind(source: str | os.PathLike) -> InputKind:
    """``"openkbp"`` (a ``.npz`` file or a challenge CSV folder) or ``"dicom"`` (another folder); a cheap
    check of the path only, ``CTInputError`` for anything else."""
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "openkbp"
        raise CTInputError(path, "expected an OpenKBP patient (.npz, or a folder of the challenge's CSVs) "
                                 "or a DICOM-RT folder (CT series + RTSTRUCT)")
    if not path.exists():
        raise CTInputError(path, "no such file or folder")
    return "openkbp" if is_openkbp_folder(path) else "dicom"


def case_id(source: str | os.PathLike, patient_id: str | None = None) -> str:
    """The output name stem: ``patient_id``, else the file stem or folder name, made file-name safe."""
    text = patient_id or (Path(source).stem if Path(source).is_file() else Path(source).resolve().name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def output_paths(out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    """Where ``predict_case`` writes each output of case ``name``."""
    out = Path(out_dir)
    paths = {key: out / f"{name}{suffix}" for key, suffix in SUFFIXES.items()}
    return {**paths, "json": out / PREDICTION_JSON}


def read_case(source: str | os.PathLike, *, patient_id: str | None = None) -> DoseCase:
    """Read an OpenKBP patient or a DICOM-RT folder (see the module docstring)."""
    path = Path(source)
    if input_kind(path) == "openkbp":
        from ctlib.io import openkbp

        patient = openkbp.read_openkbp(path)
        has_dose = patient.dose_gy is not None and bool(np.any(patient.dose_gy))
        if patient.dose_gy is None:
            patient.dose_gy = np.zeros(patient.ct.shape, dtype=np.float32)
        return DoseCase(patient=patient, has_dose=has_dose, kind="openkbp", source=path,
                        files={"layout": "csv" if path.is_dir() else "npz"})
    from ctlib.studies.dose import dicom_rt_import

    rt = dicom_rt_import.read_rt_folder(path, patient_id=patient_id)
    files = {"ct_files": len(rt.ct_files), "rtstruct": _name(rt.rtstruct_file),
             "rtdose": _name(rt.rtdose_file), "rtplan": _name(rt.rtplan_file)}
    return DoseCase(patient=rt.patient, has_dose=bool(rt.has_dose), kind="dicom", source=path,
                    reference_file=Path(rt.ct_files[0]), rtplan_file=rt.rtplan_file, files=files,
                    unmatched_roi_names=list(rt.unmatched_roi_names), warnings=list(rt.warnings))


def _name(path: Any) -> str | None:
    return None if path is None else Path(path).name


# --------------------------------------------------------------------------------------- prediction
def _model_needs(members: list[Any]) -> tuple[int, tuple[int, int, int]]:
    """The size multiple and the smallest grid the members' networks and windows need."""
    from ctlib.studies.dose import model_io

    multiple, smallest = 1, np.ones(3, dtype=int)
    for m in members:
        if [str(n) for n in m.model_config["roi_names"]] != list(ROI_NAMES):
            raise ValueError(f"model {m.run_id}: structures {m.model_config['roi_names']} are not the "
                             f"OpenKBP {list(ROI_NAMES)} that prediction builds")
        factor = int(m.model_config.get("resolution_factor", 1))
        multiple = math.lcm(multiple, model_io.required_multiple(m.model_config) * factor)
        roi = m.window_options.get("roi_size") or (1, 1, 1)
        smallest = np.maximum(smallest, np.asarray(roi, dtype=int) * factor)
    return multiple, tuple(int(s) for s in smallest)  # type: ignore[return-value]


def _on_model_grid(case: DoseCase, spacing_mm: tuple[float, float, float], multiple: int,
                   smallest: tuple[int, int, int], crop_to_body: bool = True) -> tuple[OpenKBPPatient, Any]:
    """The patient on the grid the model predicts on, and how to bring a dose on it back (a callable)."""
    from ctlib.studies.dose import model_grid

    p = case.patient
    if case.kind == "openkbp":  # already a training-like grid: pad only
        shape = model_grid.padded_shape(p.ct.shape, multiple, smallest)
        ct, window = model_grid.padded_volume(p.ct, shape, AIR_HU)
        pdm = model_grid.pad_to(p.possible_dose_mask, shape, False)[0]
        masks = {n: model_grid.pad_to(m, shape, False)[0] for n, m in p.structures.items()}
        grid_patient = OpenKBPPatient(p.patient_id, ct, np.zeros(shape, np.float32), pdm, masks, "predict")
        return grid_patient, lambda dose: dose[window]
    grid = model_grid.covering_grid(p.ct, spacing_mm, multiple=multiple, min_shape=smallest,
                                    within=p.possible_dose_mask if crop_to_body else None)
    ct = grid.with_array(model_grid.resample(p.ct.array, p.ct, grid, order=1, fill=AIR_HU))
    names = list(p.structures)
    stacked = np.stack([p.possible_dose_mask, *(p.structures[n] for n in names)]).astype(bool)
    sampled = model_grid.resample(stacked, p.ct, grid, order=0, fill=False)
    grid_patient = OpenKBPPatient(p.patient_id, ct, np.zeros(grid.shape, np.float32), sampled[0],
                                  {n: sampled[i + 1] for i, n in enumerate(names)}, "predict")

    def back(dose: np.ndarray) -> np.ndarray:
        return model_grid.resample(dose, grid, p.ct, order=1, fill=0.0) * p.possible_dose_mask

    return grid_patient, back


def domain_warnings(case: DoseCase) -> list[str]:
    """What makes this case unlike the OpenKBP head-and-neck patients the model learned from."""
    p, found = case.patient, []
    present = [n for n in ROI_NAMES if n in p.structures and np.any(p.structures[n])]
    if not any(n in TARGETS for n in present):
        found.append(f"no head-and-neck target ({' / '.join(TARGETS)}) among the structures "
                     f"({', '.join(present) or 'none'}): the model is out of its domain (OpenKBP "
                     "head-and-neck plans), the predicted dose is not meaningful")
    if not present:
        rois = f" (ROIs: {', '.join(case.unmatched_roi_names)})" if case.unmatched_roi_names else ""
        found.append(f"no ROI name maps to an OpenKBP structure{rois}")
    z_mm = p.ct.shape[0] * p.ct.spacing[0]
    if case.kind == "dicom" and z_mm < MIN_Z_MM:
        found.append(f"the CT covers {z_mm:g} mm along z ({p.ct.shape[0]} slice(s)): it was padded with air "
                     "to the model's window; the model saw whole head-and-neck volumes, so it is out of its "
                     "domain")
    if not np.any(p.possible_dose_mask):
        found.append("the possible-dose (body) mask is empty: the predicted dose is 0 everywhere")
    return found


def dvh_rows(case: DoseCase, pred_gy: np.ndarray) -> list[dict[str, Any]]:
    """OpenKBP DVH metrics of each structure present: predicted, planned (with a plan), difference."""
    from ctlib.metrics import dose_scores

    p = case.patient
    masks = {n: np.asarray(m, bool) for n, m in p.structures.items() if n in ROI_NAMES and np.any(m)}
    predicted = dose_scores.dvh_metrics(pred_gy, masks, p.ct.spacing).values
    planned = dose_scores.dvh_metrics(p.dose_gy, masks, p.ct.spacing).values if case.has_dose else {}
    rows = []
    for (structure, metric), value in predicted.items():
        plan = planned.get((structure, metric))
        rows.append({"structure": structure, "metric": metric, "predicted_gy": round(value, 4),
                     "planned_gy": None if plan is None else round(plan, 4),
                     "difference_gy": None if plan is None else round(value - plan, 4)})
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["structure", "metric", "predicted_gy", "planned_gy", "difference_gy"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _resolve_model(model: Any, device: str, training_spacing_mm: Any) -> Any:
    from ctlib.studies.dose import release_model

    if model is None or isinstance(model, str | os.PathLike):
        return release_model.open_dose_release(model or release_model.DEFAULT_NAME, device=device)
    if isinstance(model, release_model.ReleasedDoseModel):
        return model
    spacing = training_spacing_mm or DEFAULT_TRAINING_SPACING_MM
    return release_model.ReleasedDoseModel(model=model, config={"name": getattr(model, "run_id", "model"),
                                           "training_spacing_mm": list(spacing)}, path=Path("."), sha256="")


def predict_case(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: Any = None,
    device: str = "auto",
    keep_identifiers: bool = False,
    tta: bool | None = None,
    patient_id: str | None = None,
    overwrite: bool = False,
    training_spacing_mm: tuple[float, float, float] | None = None,
    crop_to_body: bool = True,
) -> dict[str, Any]:
    """Predict one patient's dose and write the outputs of the module docstring; returns ``prediction.json``.

    ``model``: a release name or folder (default: the released ``dose_unet``), a ``ReleasedDoseModel``, or a
    bundle / ensemble (then ``training_spacing_mm``, default the OpenKBP median). ``tta``: mirror test-time
    augmentation on or off (``None``: as released). Existing outputs are refused unless ``overwrite``.
    ``crop_to_body``: a DICOM CT's model grid covers the body's bounding box only (as OpenKBP's volumes are
    cropped), not its whole field of view, where air would cost windows; ``False`` covers every voxel.
    """
    from ctlib.studies.dose import features, release_model

    start = time.perf_counter()
    name = case_id(source, patient_id)
    targets = output_paths(out_dir, name)
    taken = [str(p) for p in targets.values() if p.exists()]
    if taken and not overwrite:
        raise CTInputError(taken[0], "exists; pass overwrite=True (--overwrite) to replace the outputs")
    released = _resolve_model(model, device, training_spacing_mm)
    members = release_model.members_of(released.model)
    if tta is not None and not all(hasattr(m, "tta") for m in members):
        raise ValueError("this ctlib's DoseModelBundle has no test-time augmentation (tta)")
    released_tta = [getattr(m, "tta", False) for m in members]
    case = read_case(source, patient_id=patient_id)
    notes = [*case.warnings, *domain_warnings(case)]
    multiple, smallest = _model_needs(members)
    grid_patient, back = _on_model_grid(case, released.training_spacing_mm, multiple, smallest, crop_to_body)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", features.DoseInputWarning)
        dose_patient = features.dose_patient_from_openkbp(grid_patient, "predict")
    notes += [str(w.message) for w in caught if issubclass(w.category, features.DoseInputWarning)]
    overridden = members if tta is not None else []
    try:
        for m in overridden:
            m.tta = bool(tta)
        grid_dose = released.model.predict(dose_patient)
        used_tta = [bool(getattr(m, "tta", False)) for m in members]
    finally:  # a model passed in keeps its own setting
        for m in overridden:
            m.tta = released_tta[members.index(m)]
    pred = np.clip(np.asarray(back(grid_dose), dtype=np.float32), 0.0, None)
    rows = dvh_rows(case, pred)
    summary = _summary(case, released, name, targets, dose_patient, pred, rows, notes, keep_identifiers,
                       members)
    summary["model"]["tta"] = used_tta
    summary["seconds"] = round(time.perf_counter() - start, 2)
    for line in notes:
        warnings.warn(line, DosePredictionWarning, stacklevel=2)
    _write_outputs(case, pred, rows, summary, targets, keep_identifiers)
    return summary


def _summary(case: DoseCase, released: Any, name: str, targets: dict[str, Path], dose_patient: Any,
             pred: np.ndarray, rows: list[dict[str, Any]], notes: list[str], keep_identifiers: bool,
             members: list[Any]) -> dict[str, Any]:
    from ctlib.metrics import dose_scores

    p = case.patient
    comparison = None
    if case.has_dose:
        errors = [abs(r["difference_gy"]) for r in rows if r["difference_gy"] is not None]
        score = dose_scores.dose_score(pred, p.dose_gy, p.possible_dose_mask)
        comparison = {"dose_score_gy": round(score, 4),
                      "dvh_score_gy": round(float(np.mean(errors)), 4) if errors else None,
                      "protocol": "OpenKBP: MAE in the possible-dose mask; mean |DVH metric error|"}
    return {
        "model": {"name": released.name, "path": str(released.path), "sha256": released.sha256,
                  "runs": [m.run_id for m in members],
                  "training_spacing_mm": list(released.training_spacing_mm)},
        "input": {"source": str(case.source), "kind": case.kind, "case_id": name, **case.files,
                  "shape": list(p.ct.shape), "spacing_mm": [round(s, 4) for s in p.ct.spacing],
                  "has_plan_dose": case.has_dose,
                  "structures": [n for n in ROI_NAMES if n in p.structures and np.any(p.structures[n])],
                  "missing_structures": [n for n in ROI_NAMES if n not in p.structures],
                  "unmatched_roi_names": case.unmatched_roi_names},
        "model_grid": {"shape": list(dose_patient.shape),
                       "spacing_mm": [round(float(s), 4) for s in dose_patient.spacing_mm],
                       "resampled": case.kind == "dicom"},
        "prediction": {"max_gy": round(float(pred.max()), 4),
                       "mean_in_body_gy": round(float(pred[p.possible_dose_mask].mean()), 4)
                       if np.any(p.possible_dose_mask) else 0.0},
        "plan_comparison": comparison,
        "outputs": {key: path.name for key, path in targets.items()},
        "identifiers_kept": bool(keep_identifiers),
        "warnings": notes,
    }


def _write_outputs(case: DoseCase, pred: np.ndarray, rows: list[dict[str, Any]], summary: dict[str, Any],
                   targets: dict[str, Path], keep_identifiers: bool) -> None:
    """Each file atomically, ``prediction.json`` last; on a failure the files written here are removed."""
    from ctlib.io import dicom_rt_write, nifti

    written: list[Path] = []
    try:
        nifti.write_nifti(case.patient.ct.with_array(pred), targets["nifti"], dtype="float32")
        written.append(targets["nifti"])
        dicom_rt_write.write_rtdose(pred, case.patient.ct, targets["rtdose"], reference=case.reference_file,
                                    keep_identifiers=keep_identifiers, rtplan=case.rtplan_file)
        written.append(targets["rtdose"])
        atomic.write_text(targets["dvh"], _csv(rows))
        written.append(targets["dvh"])
        atomic.write_text(targets["json"], json.dumps(summary, indent=2, allow_nan=False) + "\n")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
