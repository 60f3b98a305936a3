"""OpenKBP head-and-neck patients (Babier et al., Med Phys 2021): CT, dose, structures.

Two layouts are read: the repacked one-``.npz``-per-patient files of the shared data, and the
challenge's own per-patient folders of sparse CSVs (``index,data`` with the index a C-order flat
index into the 128^3 grid; structure files list indices only).

OpenKBP arrays are ``(i, j, k)`` with k the slice axis. Checked on the shared patients (brainstem
above oesophagus, mandible in front of the cord, left parotid at higher j): i runs posterior, j to
the patient's left, k inferior. So the ``Volume`` is ``array[k, i, j]`` with direction
``diag(1, 1, -1)`` in LPS. OpenKBP does not give the origin: it is set to 0.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctlib.errors import CTInputError
from ctlib.io.npz import read_npz
from ctlib.io.volume import Volume

GRID = (128, 128, 128)
ROI_NAMES = (
    "Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus",
    "Larynx", "Mandible", "PTV56", "PTV63", "PTV70",
)
OARS = ROI_NAMES[:7]
TARGETS = ROI_NAMES[7:]
CT_OFFSET = 1024  # OpenKBP stores about HU + 1024, 0 outside the body; clip to [0, 4095] first
OPENKBP_DIRECTION = np.diag([1.0, 1.0, -1.0])
REQUIRED_CSV = ("ct.csv", "dose.csv", "possible_dose_mask.csv", "voxel_dimensions.csv")


@dataclass
class OpenKBPPatient:
    """One OpenKBP patient on the ``(z, y, x)`` grid of its CT."""

    patient_id: str
    ct: Volume
    dose_gy: np.ndarray | None
    possible_dose_mask: np.ndarray
    structures: dict[str, np.ndarray] = field(default_factory=dict)
    split: str | None = None

    @property
    def missing_structures(self) -> list[str]:
        """ROI names that were not contoured for this patient."""
        return [name for name in ROI_NAMES if name not in self.structures]


def _to_zyx(array_ijk: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array_ijk, 2, 0))


def _check_voxel_size(voxel_mm: np.ndarray, source: Path) -> np.ndarray:
    """Three finite positive numbers (mm), or a refusal naming the file that holds them."""
    voxel_mm = np.asarray(voxel_mm, dtype=np.float64).reshape(-1)
    if voxel_mm.shape != (3,) or not np.all(np.isfinite(voxel_mm)) or not np.all(voxel_mm > 0):
        raise CTInputError(source, f"voxel size must be three positive numbers, got {voxel_mm.tolist()}")
    return voxel_mm


def _ct_volume(ct_stored: np.ndarray, voxel_mm: np.ndarray, source: Path, patient_id: str) -> Volume:
    voxel_mm = _check_voxel_size(voxel_mm, source)
    hu = np.clip(ct_stored.astype(np.float32), 0, 4095) - CT_OFFSET
    return Volume(
        array=_to_zyx(hu),
        spacing=(voxel_mm[2], voxel_mm[0], voxel_mm[1]),
        direction=OPENKBP_DIRECTION,
        meta={"format": "openkbp", "source": str(source), "patient_id": patient_id},
    )


def _check_grid(array: np.ndarray, name: str, source: Path) -> None:
    if array.shape != GRID:
        raise CTInputError(source, f"{name} has shape {array.shape}, expected {GRID}")


def _check_ct(ct: np.ndarray, source: Path) -> None:
    """A CT must be finite: a NaN would pass the clip to [0, 4095] unchanged and poison every mean."""
    if not np.issubdtype(ct.dtype, np.number) or np.issubdtype(ct.dtype, np.complexfloating):
        raise CTInputError(source, f"ct has dtype {ct.dtype}, expected real numbers")
    if np.issubdtype(ct.dtype, np.floating) and not np.all(np.isfinite(ct)):
        raise CTInputError(source, f"ct holds {int(np.sum(~np.isfinite(ct)))} NaN or infinite voxels")


def _check_structures(masks: np.ndarray, names: np.ndarray, present: np.ndarray | None, source: Path) -> None:
    """``structure_masks`` is one 128^3 mask per ROI name (and per ``roi_present`` flag)."""
    if names.ndim != 1:
        raise CTInputError(source, f"roi_names has shape {names.shape}, expected one name per structure")
    expected = (len(names), *GRID)
    if masks.shape != expected:
        raise CTInputError(
            source, f"structure_masks has shape {masks.shape}, expected {expected} (one mask per ROI name)"
        )
    if present is not None and present.shape != (len(names),):
        raise CTInputError(source, f"roi_present has shape {present.shape}, expected ({len(names)},)")


def _check_dose(dose: np.ndarray, source: Path) -> None:
    if not np.all(np.isfinite(dose)):
        raise CTInputError(source, f"dose holds {int(np.sum(~np.isfinite(dose)))} NaN or infinite voxels")
    if dose.min() < 0:
        raise CTInputError(source, f"dose holds negative values (min {dose.min():.3g} Gy)")


def read_openkbp_npz(path: str | os.PathLike) -> OpenKBPPatient:
    """Read one repacked OpenKBP patient (``.npz`` from the shared data's repack_openkbp.py)."""
    path = Path(path)
    fields = read_npz(path, ("ct", "possible_dose_mask", "structure_masks", "roi_names", "voxel_size_mm"),
                      "an OpenKBP patient file")
    patient_id = str(fields.get("patient_id", path.stem))
    _check_grid(fields["ct"], "ct", path)
    _check_ct(fields["ct"], path)
    _check_grid(fields["possible_dose_mask"], "possible_dose_mask", path)
    _check_structures(fields["structure_masks"], fields["roi_names"], fields.get("roi_present"), path)
    dose = fields.get("dose_gy")
    if dose is not None:
        _check_grid(dose, "dose_gy", path)
        _check_dose(dose, path)
        dose = _to_zyx(dose.astype(np.float32))
    names = [str(n) for n in fields["roi_names"]]
    present = fields.get("roi_present", np.ones(len(names), dtype=bool))
    structures = {
        name: _to_zyx(mask.astype(bool))
        for name, mask, here in zip(names, fields["structure_masks"], present, strict=True)
        if here and mask.any()
    }
    split = str(fields["split"]) if "split" in fields else None
    return OpenKBPPatient(
        patient_id=patient_id,
        ct=_ct_volume(fields["ct"], fields["voxel_size_mm"], path, patient_id),
        dose_gy=dose,
        possible_dose_mask=_to_zyx(fields["possible_dose_mask"].astype(bool)),
        structures=structures,
        split=split,
    )


def _read_sparse_csv(path: Path, dtype: type) -> np.ndarray:
    """Dense 128^3 array from an OpenKBP sparse CSV (``index,data``; masks give indices only)."""
    size = int(np.prod(GRID))
    out = np.zeros(size, dtype=dtype)
    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle)][1:]
        indices = np.fromiter((int(row[0]) for row in rows if row), dtype=np.int64)
        values = [row[1] if len(row) > 1 else "" for row in rows if row]
    except (OSError, ValueError, IndexError) as err:
        raise CTInputError(path, f"not an OpenKBP sparse CSV ({type(err).__name__}: {err})") from None
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        raise CTInputError(path, f"index out of the 128^3 grid (min {indices.min()}, max {indices.max()})")
    if dtype is bool or all(v == "" for v in values):
        out[indices] = 1
    else:
        try:
            out[indices] = np.asarray(values, dtype=np.float64).astype(dtype)
        except ValueError as err:
            raise CTInputError(path, f"non-numeric value ({err})") from None
    return out.reshape(GRID)


def read_openkbp_folder(folder: str | os.PathLike, split: str | None = None) -> OpenKBPPatient:
    """Read one patient in the challenge's layout (a ``pt_<id>/`` folder of sparse CSVs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CTInputError(folder, "no such folder")
    missing = [name for name in REQUIRED_CSV if name != "dose.csv" and not (folder / name).is_file()]
    if missing:
        raise CTInputError(folder, f"not an OpenKBP patient folder: missing {', '.join(missing)}")
    try:
        voxel_mm = np.loadtxt(folder / "voxel_dimensions.csv", dtype=np.float64)
    except ValueError as err:
        raise CTInputError(folder / "voxel_dimensions.csv", f"unreadable voxel size ({err})") from None
    _check_voxel_size(voxel_mm, folder / "voxel_dimensions.csv")
    ct = _read_sparse_csv(folder / "ct.csv", np.float64)
    _check_ct(ct, folder / "ct.csv")
    dose = None
    if (folder / "dose.csv").is_file():
        dose = _read_sparse_csv(folder / "dose.csv", np.float32)
        _check_dose(dose, folder / "dose.csv")
        dose = _to_zyx(dose)
    structures = {}
    for name in ROI_NAMES:
        if (folder / f"{name}.csv").is_file():
            mask = _read_sparse_csv(folder / f"{name}.csv", bool)
            if mask.any():
                structures[name] = _to_zyx(mask)
    return OpenKBPPatient(
        patient_id=folder.name,
        ct=_ct_volume(ct, voxel_mm, folder, folder.name),
        dose_gy=dose,
        possible_dose_mask=_to_zyx(_read_sparse_csv(folder / "possible_dose_mask.csv", bool)),
        structures=structures,
        split=split,
    )


def read_openkbp(path: str | os.PathLike) -> OpenKBPPatient:
    """Read an OpenKBP patient from a repacked ``.npz`` file or a challenge CSV folder."""
    path = Path(path)
    return read_openkbp_folder(path) if path.is_dir() else read_openkbp_npz(path)


def is_openkbp_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` looks like a challenge patient folder (has ct.csv and voxel_dimensions.csv)."""
    path = Path(path)
    return path.is_dir() and (path / "ct.csv").is_file() and (path / "voxel_dimensions.csv").is_file()
