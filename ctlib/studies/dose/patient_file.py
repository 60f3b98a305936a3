"""One preprocessed dose patient per ``.npz`` file: ``DosePatient``, its atomic writer and checked reader.

Layout of ``<run_dir>/patients/<split>/<patient_id>.npz`` (``np.savez_compressed``, no pickles):

- ``ct_hu`` float32 ``(D, H, W)`` = ``(z, y, x)``; ``dose_gy`` float32 ``(D, H, W)``, 0 outside
  ``possible_dose_mask`` (bool ``(D, H, W)``);
- ``masks`` bool ``(S, D, H, W)`` in ``roi_names`` order (all-False for a missing structure);
  ``present`` bool ``(S,)``;
- ``sdf_mm`` float32 ``(S, D, H, W)``: signed distance to each structure's surface in mm (negative
  inside), clipped to ``[-SDF_CLIP_MM, SDF_CLIP_MM]``; a missing structure holds ``+SDF_CLIP_MM``;
- ``constraints`` float32 ``(C,)`` with ``constraint_names`` str ``(C,)`` (see
``ctlib.studies.dose.features``);
- ``spacing_mm`` float64 ``(3,)`` = ``(dz, dy, dx)``; ``roi_names`` str ``(S,)``; ``patient_id`` and
  ``split`` str.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ctlib.atomic import atomic_path
from ctlib.errors import CTInputError
from ctlib.io.npz import read_npz

SDF_CLIP_MM = 50.0
SPLITS = ("train", "validation", "test")
KEYS = ("ct_hu", "dose_gy", "possible_dose_mask", "masks", "present", "sdf_mm", "constraints",
        "constraint_names", "spacing_mm", "roi_names", "patient_id", "split")


@dataclass
class DosePatient:
    """A preprocessed dose patient: CT, dose, masks, SDFs and constraints on one ``(D, H, W)`` grid."""

    ct_hu: np.ndarray               # (D, H, W) float32
    dose_gy: np.ndarray             # (D, H, W) float32, 0 outside possible_dose_mask
    possible_dose_mask: np.ndarray  # (D, H, W) bool
    masks: np.ndarray               # (S, D, H, W) bool
    present: np.ndarray             # (S,) bool
    sdf_mm: np.ndarray              # (S, D, H, W) float32
    constraints: np.ndarray         # (C,) float32
    constraint_names: np.ndarray    # (C,) str
    spacing_mm: np.ndarray          # (3,) float64 (dz, dy, dx)
    roi_names: np.ndarray           # (S,) str
    patient_id: str
    split: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` voxel counts."""
        return tuple(int(n) for n in self.ct_hu.shape)

    def mask(self, name: str) -> np.ndarray:
        """The ``(D, H, W)`` bool mask of structure ``name`` (all-False when missing)."""
        return self.masks[self._index(name)]

    def sdf(self, name: str) -> np.ndarray:
        """The ``(D, H, W)`` signed distance field of structure ``name`` in mm."""
        return self.sdf_mm[self._index(name)]

    def _index(self, name: str) -> int:
        names = [str(n) for n in self.roi_names]
        if name not in names:
            raise KeyError(f"no structure {name!r}; this patient has {names}")
        return names.index(name)


def _problems(p: DosePatient) -> list[str]:
    """What is inconsistent in ``p`` (shapes, dtypes, values); empty when it is well formed."""
    found = []
    grid = np.shape(p.ct_hu)
    if len(grid) != 3:
        return [f"ct_hu must be 3-D (D, H, W), got shape {grid}"]
    s, c = len(p.roi_names), len(p.constraint_names)
    expected = {"dose_gy": grid, "possible_dose_mask": grid, "masks": (s, *grid), "present": (s,),
                "sdf_mm": (s, *grid), "constraints": (c,), "spacing_mm": (3,)}
    for name, shape in expected.items():
        if np.shape(getattr(p, name)) != shape:
            found.append(f"{name} has shape {np.shape(getattr(p, name))}, expected {shape}")
    if found:
        return found
    for name in ("possible_dose_mask", "masks", "present"):
        if np.asarray(getattr(p, name)).dtype != bool:
            found.append(f"{name} must be bool, got {np.asarray(getattr(p, name)).dtype}")
    for name in ("ct_hu", "dose_gy", "sdf_mm", "constraints", "spacing_mm"):
        value = np.asarray(getattr(p, name))
        if not np.issubdtype(value.dtype, np.floating):
            found.append(f"{name} must be floating point, got {value.dtype}")
        elif not np.all(np.isfinite(value)):
            found.append(f"{name} holds {int(np.sum(~np.isfinite(value)))} NaN or infinite values")
    if found:
        return found
    if np.any(np.asarray(p.spacing_mm) <= 0):
        found.append(f"spacing_mm must be positive, got {np.asarray(p.spacing_mm).tolist()}")
    if np.asarray(p.dose_gy).min() < 0:
        found.append(f"dose_gy holds negative values (min {np.asarray(p.dose_gy).min():.3g} Gy)")
    if np.any(np.asarray(p.dose_gy)[~np.asarray(p.possible_dose_mask)] != 0):
        found.append("dose_gy is nonzero outside possible_dose_mask")
    masks, present = np.asarray(p.masks), np.asarray(p.present)
    if np.any(masks[~present]):
        found.append("a structure flagged absent has a nonempty mask")
    return found


def save_dose_patient(path: str | os.PathLike, patient: DosePatient) -> Path:
    """Write ``patient`` to ``path`` with ``np.savez_compressed``, atomically; returns the path.

    Refuses an inconsistent patient with ``ValueError`` (shapes, dtypes, NaN, negative dose).
    """
    path = Path(path)
    problems = _problems(patient)
    if problems:
        raise ValueError(f"DosePatient {patient.patient_id!r} is inconsistent: {'; '.join(problems)}")
    arrays = {
        "ct_hu": np.asarray(patient.ct_hu, dtype=np.float32),
        "dose_gy": np.asarray(patient.dose_gy, dtype=np.float32),
        "possible_dose_mask": np.asarray(patient.possible_dose_mask, dtype=bool),
        "masks": np.asarray(patient.masks, dtype=bool),
        "present": np.asarray(patient.present, dtype=bool),
        "sdf_mm": np.asarray(patient.sdf_mm, dtype=np.float32),
        "constraints": np.asarray(patient.constraints, dtype=np.float32),
        "constraint_names": np.asarray([str(n) for n in patient.constraint_names], dtype=str),
        "spacing_mm": np.asarray(patient.spacing_mm, dtype=np.float64),
        "roi_names": np.asarray([str(n) for n in patient.roi_names], dtype=str),
        "patient_id": np.asarray(str(patient.patient_id)),
        "split": np.asarray(str(patient.split)),
    }
    with atomic_path(path) as tmp:
        # np.savez_compressed appends ".npz" to a name without it; write through a handle instead.
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return path


def load_dose_patient(path: str | os.PathLike) -> DosePatient:
    """Read a ``DosePatient``; ``CTInputError`` naming the file when it is missing,
    unreadable or inconsistent."""
    path = Path(path)
    arrays = read_npz(path, KEYS, "a preprocessed dose patient")
    values = {f.name: arrays[f.name] for f in fields(DosePatient)}
    values["patient_id"] = str(values["patient_id"])
    values["split"] = str(values["split"])
    patient = DosePatient(**values)
    problems = _problems(patient)
    if problems:
        raise CTInputError(path, "; ".join(problems))
    return patient


def patient_path(run_dir: str | os.PathLike, split: str, patient_id: str) -> Path:
    """``<run_dir>/patients/<split>/<patient_id>.npz``."""
    return Path(run_dir) / "patients" / split / f"{patient_id}.npz"


def list_dose_patients(run_dir: str | os.PathLike, split: str) -> list[Path]:
    """The patient files of one split, sorted by the numbers in their ids (``pt_2`` before ``pt_10``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(run_dir) / "patients" / split
    return sorted(folder.glob("*.npz"), key=_natural_key)


def _natural_key(path: Path) -> tuple:
    digits = "".join(ch if ch.isdigit() else " " for ch in path.stem).split()
    return (tuple(int(d) for d in digits), path.stem)
