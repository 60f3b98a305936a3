"""Dose preprocessing: many patients -> ``<out>/patients/<split>/<id>.npz`` + ``manifest.csv``; phantom
patients.

Each patient is read (an OpenKBP ``.npz`` / challenge folder, or an ``OpenKBPPatient`` built in memory),
turned into a ``DosePatient`` by ``ctlib.studies.dose.features`` and written with ``save_dose_patient``. A
patient that is refused (``CTInputError``: unreadable file, grid mismatch, NaN dose, ...) gets a
manifest row with ``status = "refused"`` and the reason, and the others go on; warnings (an empty
mask treated as missing) are recorded in the ``warnings`` column.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ctlib.data import body_mask, splits
from ctlib.errors import CTInputError
from ctlib.io import openkbp
from ctlib.io.openkbp import ROI_NAMES, OpenKBPPatient
from ctlib.studies.dose import features, patient_file
from ctlib.studies.dose import phantom as dose_phantom
from ctlib.studies.dose.patient_file import SDF_CLIP_MM, SPLITS

PHANTOM_FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}
MANIFEST = "manifest.csv"


def phantom_patients(
    n: int,
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 64, 64),
    spacing_mm: tuple[float, float, float] = (2.5, 4.0, 4.0),
    fractions: dict[str, float] = PHANTOM_FRACTIONS,
) -> list[OpenKBPPatient]:
    """``n`` synthetic dose patients from ``ctlib.studies.dose.phantom`` (analytic dose, NOT plans), split by
    seed.

    Patient ``i`` uses phantom seed ``SeedSequence([seed, i])``, a penumbra in [4, 8] mm and a low-dose bath
    fraction in [0.2, 0.4] drawn from it, and is mirrored left-right when ``i`` is odd (PTV in the patient's
    left). Structures: ``PTV70`` and ``Brainstem`` (the other ROIs are missing). The possible-dose mask is
    the CT's body mask plus every voxel the analytic dose reaches (the phantom's body). Splits:
    ``ctlib.data.splits.make_splits`` with ``fractions`` (default 60/20/20).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    ids = [f"phantom_{i:03d}" for i in range(n)]
    split_of = splits.make_splits(ids, fractions, seed)
    patients = []
    for i, patient_id in enumerate(ids):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        case_seed = int(rng.integers(2**31))
        volume, structures, dose_gy = dose_phantom.dose_phantom(
            case_seed, tuple(shape), tuple(spacing_mm),
            penumbra_mm=float(rng.uniform(4.0, 8.0)), bath_fraction=float(rng.uniform(0.2, 0.4)),
        )
        if i % 2:
            volume = volume.with_array(np.ascontiguousarray(volume.array[:, :, ::-1]))
            structures = {k: np.ascontiguousarray(v[:, :, ::-1]) for k, v in structures.items()}
            dose_gy = np.ascontiguousarray(dose_gy[:, :, ::-1])
        volume.meta.update({"source": patient_id, "patient_id": patient_id})
        patients.append(OpenKBPPatient(
            patient_id=patient_id, ct=volume, dose_gy=dose_gy,
            possible_dose_mask=body_mask.body_mask(volume) | (dose_gy > 0),
            structures=dict(structures), split=split_of[patient_id],
        ))
    return patients


def select_patients(
    patients: Sequence[OpenKBPPatient], split_names: Sequence[str] = SPLITS, max_per_split: int = 0
) -> list[OpenKBPPatient]:
    """The patients whose split is in ``split_names``, the first ``max_per_split`` of each (0 = all),
    in order."""
    kept, seen = [], dict.fromkeys(split_names, 0)
    for patient in patients:
        if patient.split in seen and (max_per_split <= 0 or seen[patient.split] < max_per_split):
            seen[patient.split] += 1
            kept.append(patient)
    return kept


def openkbp_paths(
    data_root: str | os.PathLike, split_names: Sequence[str] = SPLITS, max_per_split: int = 0
) -> list[Path]:
    """The OpenKBP ``.npz`` files of the shared data (``<root>/openkbp/<split>/pt_*.npz``), natural order.

    ``max_per_split`` keeps the first ones of each split (0 = all).
    """
    unknown = sorted(set(split_names) - set(SPLITS))
    if unknown:
        raise ValueError(f"splits must be among {SPLITS}, got {unknown}")
    found = []
    for split in split_names:
        folder = Path(data_root) / "openkbp" / split
        paths = sorted(folder.glob("*.npz"), key=patient_file._natural_key)
        if not paths:
            raise CTInputError(folder, "no OpenKBP .npz patients here")
        found.extend(paths[:max_per_split] if max_per_split > 0 else paths)
    return found


def _describe(source: Path | OpenKBPPatient) -> tuple[str, str | None]:
    if isinstance(source, OpenKBPPatient):
        return source.patient_id, source.split
    source = Path(source)
    return source.stem if source.suffix == ".npz" else source.name, (
        source.parent.name if source.parent.name in SPLITS else None)


def preprocess_patients(
    sources: Iterable[str | os.PathLike | OpenKBPPatient],
    out_dir: str | os.PathLike,
    *,
    sdf_clip_mm: float = SDF_CLIP_MM,
    workers: int = 0,
) -> pd.DataFrame:
    """Preprocess every source into ``<out_dir>/patients/<split>/<id>.npz``; write and return the manifest.

    Manifest columns: ``id, split, status ("ok" / "refused"), refused_reason, warnings, spacing_dz_mm,
    spacing_dy_mm, spacing_dx_mm, present`` (``;``-joined canonical names), ``n_present, max_dose_gy,
    path`` (relative to ``out_dir``) and ``seconds``. The split is the patient's own (OpenKBP: the
    challenge's; phantoms: ``phantom_patients``), else the parent folder's name. ``workers > 1`` spreads
    the patients over that many processes (each patient is independent; rows keep the sources' order).
    """
    out_dir = Path(out_dir)
    sources = list(sources)
    if workers > 1 and len(sources) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(sources))) as pool:
            rows = list(
                pool.map(_preprocess_one, sources, [out_dir] * len(sources), [sdf_clip_mm] * len(sources))
            )
    else:
        rows = [_preprocess_one(source, out_dir, sdf_clip_mm) for source in sources]
    splits.save_manifest(out_dir / MANIFEST, rows)
    manifest = splits.load_manifest(out_dir / MANIFEST)
    text = ["split", "refused_reason", "warnings", "present", "path"]
    manifest[text] = manifest[text].astype(object).where(manifest[text].notna(), "")  # CSV reads "" as NaN
    return manifest


def _preprocess_one(source: str | os.PathLike | OpenKBPPatient, out_dir: Path, sdf_clip_mm: float) -> dict:
    """One patient's manifest row; its ``.npz`` is written unless the patient is refused."""
    start = time.perf_counter()
    patient_id, split = _describe(source)
    row: dict = {"id": patient_id, "split": split or "", "status": "refused", "refused_reason": "",
                 "warnings": "", "spacing_dz_mm": np.nan, "spacing_dy_mm": np.nan, "spacing_dx_mm": np.nan,
                 "present": "", "n_present": 0, "max_dose_gy": np.nan, "path": ""}
    try:
        patient = source if isinstance(source, OpenKBPPatient) else openkbp.read_openkbp(source)
        split = patient.split or split
        if split not in SPLITS:
            raise CTInputError(
                getattr(source, "patient_id", source), f"split {split!r} is not one of {SPLITS}"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", features.DoseInputWarning)
            dose_patient = features.dose_patient_from_openkbp(patient, split, sdf_clip_mm=sdf_clip_mm)
        path = patient_file.save_dose_patient(
            patient_file.patient_path(out_dir, split, dose_patient.patient_id), dose_patient)
        dz, dy, dx = dose_patient.spacing_mm.tolist()
        row.update(
            id=dose_patient.patient_id, split=split, status="ok",
            warnings=" | ".join(str(w.message) for w in caught),
            spacing_dz_mm=round(dz, 4), spacing_dy_mm=round(dy, 4), spacing_dx_mm=round(dx, 4),
            present=";".join(n for n, p in zip(ROI_NAMES, dose_patient.present, strict=True) if p),
            n_present=int(dose_patient.present.sum()),
            max_dose_gy=round(float(dose_patient.dose_gy.max()), 3),
            path=path.relative_to(out_dir).as_posix(),
        )
    except CTInputError as err:
        row["refused_reason"] = str(err)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def summary_metrics(manifest: pd.DataFrame) -> dict[str, float]:
    """Flat metrics for ``metrics.json``: counts per split and status, structure presence, mean max dose."""
    ok = manifest[manifest["status"] == "ok"]
    metrics: dict[str, float] = {
        "n_patients": int(len(ok)),
        "n_refused": int((manifest["status"] == "refused").sum()),
    }
    for split in SPLITS:
        metrics[f"n_{split}"] = int((ok["split"] == split).sum())
    present = ok["present"].fillna("").str.split(";")
    for name in ROI_NAMES:
        metrics[f"present_fraction_{name}"] = (
            round(float(present.apply(lambda p, n=name: n in p).mean()), 4) if len(ok) else 0.0
        )
    metrics["mean_max_dose_gy"] = round(float(ok["max_dose_gy"].mean()), 3) if len(ok) else 0.0
    return metrics
