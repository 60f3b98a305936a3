"""OpenKBP cases: repacked ``.npz`` patients and challenge CSV folders on the 128^3 grid, broken one way each.

A patient holds a block of CT voxels (stored HU + 1024), a dose block, a possible-dose mask and two
structures; the files are a few hundred KB. ``ctlib info`` reads the CT; the dose, masks and voxel
size are checked on the way, so a refusal there is a refusal of the patient, naming the file.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from corpus.case import Case, Ctx, case, info, loads, refused

GRID = (128, 128, 128)
VOXEL_MM = [3.5, 3.5, 2.5]
ROIS = ["Brainstem", "PTV70"]


def patient(seed: int = 0) -> dict[str, np.ndarray]:
    """The fields of a repacked patient (``(i, j, k)`` arrays, k the slice axis); a fresh copy."""
    return {key: value.copy() for key, value in _patient(seed).items()}


@functools.cache
def _patient(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ct = np.zeros(GRID, np.int16)
    ct[40:80, 50:70, 30:90] = rng.integers(900, 1300, size=(40, 20, 60))
    ct[60, 60, 60] = 3000  # bone
    dose = np.zeros(GRID, np.float32)
    dose[50:60, 55:65, 40:60] = 70.0
    masks = np.zeros((len(ROIS), *GRID), bool)
    masks[0, 60:62, 60:62, 35:40] = True
    masks[1, 50:60, 55:65, 40:60] = True
    return {
        "ct": ct,
        "dose_gy": dose,
        "possible_dose_mask": ct > 0,
        "structure_masks": masks,
        "roi_names": np.asarray(ROIS),
        "voxel_size_mm": np.asarray(VOXEL_MM, np.float32),
    }


def expected_hu(ct: np.ndarray) -> np.ndarray:
    """The ``Volume`` array (z, y, x) = (k, i, j): stored values clipped to [0, 4095], minus 1024."""
    return np.moveaxis(np.clip(ct.astype(np.float32), 0, 4095) - 1024, 2, 0)


def facts(hu: np.ndarray) -> dict:
    """``ctlib info`` facts: spacing (dz, dy, dx) = (voxel k, voxel i, voxel j), origin 0."""
    return {
        "format": "openkbp",
        "shape": list(GRID),
        "spacing_mm": [VOXEL_MM[2], VOXEL_MM[0], VOXEL_MM[1]],
        "origin_lps_mm": [0.0, 0.0, 0.0],
        "hu_min": float(hu.min()),
        "hu_max": float(hu.max()),
    }


def write_npz(c: Ctx, file: str = "pt_1.npz", **changes: object) -> Path:
    """A repacked patient with ``changes`` applied (``None`` drops a field)."""
    fields = patient()
    for key, value in changes.items():
        if value is None:
            fields.pop(key)
        else:
            fields[key] = value
    path = c.dir / file
    np.savez_compressed(path, **fields)
    return path


def write_sparse(path: Path, dense: np.ndarray, with_values: bool = True) -> None:
    """An OpenKBP sparse CSV: header ``,data``, then ``index,value`` (masks: ``index,``)."""
    flat = dense.reshape(-1)
    rows = [f"{i},{flat[i]:g}" if with_values else f"{i}," for i in np.flatnonzero(flat)]
    path.write_text(",data\n" + "\n".join(rows) + "\n")


def write_folder(c: Ctx, skip: tuple[str, ...] = ()) -> tuple[Path, np.ndarray]:
    """A challenge-layout patient folder ``pt_2/``; returns it and the stored CT."""
    folder = c.dir / "pt_2"
    folder.mkdir()
    fields = patient(1)
    files = {
        "ct.csv": (fields["ct"], True),
        "dose.csv": (fields["dose_gy"], True),
        "possible_dose_mask.csv": (fields["possible_dose_mask"], False),
        "Brainstem.csv": (fields["structure_masks"][0], False),
        "PTV70.csv": (fields["structure_masks"][1], False),
    }
    for file, (dense, with_values) in files.items():
        if file not in skip:
            write_sparse(folder / file, dense, with_values)
    if "voxel_dimensions.csv" not in skip:
        np.savetxt(folder / "voxel_dimensions.csv", VOXEL_MM)
    return folder, fields["ct"]


def refused_at(c: Ctx, path: Path, keywords: list[str], note: str, names: list[str] | None = None) -> Case:
    """``ctlib info`` refuses ``path``, naming ``names`` (default: the file itself)."""
    return refused(info(c.rel(path)), names or [path.name], keywords, note)


# --- loads -----------------------------------------------------------------------------------------------


@case("openkbp")
def case_valid_npz(c: Ctx) -> Case:
    path = write_npz(c)
    hu = expected_hu(patient()["ct"])
    return loads(
        info(c.rel(path)),
        facts(hu),
        "a clean repacked patient",
        array=c.expect_array(hu),
        array_read=[c.rel(path), None],
    )


@case("openkbp")
def case_npz_without_dose(c: Ctx) -> Case:
    path = write_npz(c, dose_gy=None)
    hu = expected_hu(patient()["ct"])
    return loads(
        info(c.rel(path)),
        facts(hu),
        "a patient without dose (test split)",
        array=c.expect_array(hu),
        array_read=[c.rel(path), None],
    )


@case("openkbp")
def case_valid_csv_folder(c: Ctx) -> Case:
    folder, ct = write_folder(c)
    hu = expected_hu(ct)
    return loads(
        info(c.rel(folder)),
        facts(hu),
        "a clean challenge CSV folder",
        array=c.expect_array(hu),
        array_read=[c.rel(folder), None],
    )


# --- refused: .npz ---------------------------------------------------------------------------------------


@case("openkbp")
def case_mask_wrong_shape(c: Ctx) -> Case:
    path = write_npz(c, structure_masks=np.ones((len(ROIS), 64, 64, 64), bool))
    return refused_at(c, path, ["structure_masks", "shape"], "structure masks on a 64^3 grid")


@case("openkbp")
def case_masks_and_names_differ(c: Ctx) -> Case:
    path = write_npz(c, roi_names=np.asarray(ROIS[:1]))
    return refused_at(c, path, ["roi_names", "structure"], "two masks, one ROI name")


@case("openkbp")
def case_dose_mask_wrong_shape(c: Ctx) -> Case:
    path = write_npz(c, possible_dose_mask=np.ones((128, 128, 64), bool))
    return refused_at(c, path, ["possible_dose_mask"], "possible-dose mask 128 x 128 x 64")


@case("openkbp")
def case_ct_wrong_shape(c: Ctx) -> Case:
    path = write_npz(c, ct=np.zeros((128, 128, 64), np.int16))
    return refused_at(c, path, ["shape"], "CT 128 x 128 x 64")


@case("openkbp")
def case_nan_ct(c: Ctx) -> Case:
    ct = patient()["ct"].astype(np.float32)
    ct[60, 60, 50] = np.nan
    path = write_npz(c, ct=ct)
    return refused_at(c, path, ["NaN"], "one NaN CT voxel (ctlib info must not print NaN)")


@case("openkbp")
def case_negative_dose(c: Ctx) -> Case:
    dose = patient()["dose_gy"]
    dose[55, 60, 50] = -3.0
    return refused_at(c, write_npz(c, dose_gy=dose), ["negative"], "one voxel of -3 Gy")


@case("openkbp")
def case_nan_dose(c: Ctx) -> Case:
    dose = patient()["dose_gy"]
    dose[55, 60, 50] = np.nan
    return refused_at(c, write_npz(c, dose_gy=dose), ["NaN"], "one NaN dose voxel")


@case("openkbp")
def case_voxel_size_zero(c: Ctx) -> Case:
    path = write_npz(c, voxel_size_mm=np.asarray([3.5, 0.0, 2.5], np.float32))
    return refused_at(c, path, ["voxel size"], "voxel size 3.5 x 0 x 2.5")


@case("openkbp")
def case_voxel_size_negative(c: Ctx) -> Case:
    path = write_npz(c, voxel_size_mm=np.asarray([3.5, 3.5, -2.5], np.float32))
    return refused_at(c, path, ["voxel size"], "negative slice thickness")


@case("openkbp")
def case_voxel_size_nan(c: Ctx) -> Case:
    path = write_npz(c, voxel_size_mm=np.asarray([np.nan, 3.5, 2.5], np.float32))
    return refused_at(c, path, ["voxel size"], "voxel size NaN")


@case("openkbp")
def case_voxel_size_two_numbers(c: Ctx) -> Case:
    path = write_npz(c, voxel_size_mm=np.asarray([3.5, 2.5], np.float32))
    return refused_at(c, path, ["voxel size"], "two numbers for the voxel size")


@case("openkbp")
def case_missing_key(c: Ctx) -> Case:
    return refused_at(c, write_npz(c, structure_masks=None), ["missing"], "no structure_masks array")


@case("openkbp")
def case_pickled_object_array(c: Ctx) -> Case:
    path = write_npz(c, roi_names=np.asarray([{"name": "Brainstem"}, {"name": "PTV70"}], dtype=object))
    return refused_at(c, path, ["pickle", "object"], "ROI names stored as a pickled object array")


@case("openkbp")
def case_garbage_npz(c: Ctx) -> Case:
    path = c.dir / "pt_3.npz"
    path.write_bytes(np.random.default_rng(5).bytes(3000))
    return refused_at(c, path, ["npz", "zip"], "random bytes named .npz")


@case("openkbp")
def case_empty_npz(c: Ctx) -> Case:
    path = c.dir / "pt_4.npz"
    path.write_bytes(b"")
    return refused_at(c, path, ["npz", "empty"], "a zero-byte .npz")


# --- refused: CSV folders --------------------------------------------------------------------------------


@case("openkbp")
def case_csv_missing_dose_mask(c: Ctx) -> Case:
    folder, _ = write_folder(c, skip=("possible_dose_mask.csv",))
    return refused_at(c, folder, ["missing"], "no possible_dose_mask.csv", names=["possible_dose_mask.csv"])


@case("openkbp")
def case_csv_missing_voxel_dimensions(c: Ctx) -> Case:
    folder, _ = write_folder(c, skip=("voxel_dimensions.csv",))
    return refused_at(
        c, folder, ["voxel_dimensions.csv", "no DICOM"], "no voxel_dimensions.csv", names=[folder.name]
    )


@case("openkbp")
def case_csv_index_out_of_grid(c: Ctx) -> Case:
    folder, _ = write_folder(c)
    (folder / "ct.csv").write_text(",data\n5,1000\n99999999,1000\n")
    return refused_at(c, folder, ["index", "grid"], "CT index beyond 128^3", names=["ct.csv"])


@case("openkbp")
def case_csv_negative_index(c: Ctx) -> Case:
    folder, _ = write_folder(c)
    (folder / "ct.csv").write_text(",data\n-5,1000\n")
    return refused_at(c, folder, ["index", "grid"], "negative CT index", names=["ct.csv"])


@case("openkbp")
def case_csv_fractional_index(c: Ctx) -> Case:
    folder, _ = write_folder(c)
    (folder / "ct.csv").write_text(",data\n1.5,1000\n")
    return refused_at(c, folder, ["index", "OpenKBP"], "index 1.5", names=["ct.csv"])


@case("openkbp")
def case_csv_non_numeric_value(c: Ctx) -> Case:
    folder, _ = write_folder(c)
    (folder / "ct.csv").write_text(",data\n5,bone\n")
    return refused_at(c, folder, ["non-numeric", "value"], "value 'bone'", names=["ct.csv"])


@case("openkbp")
def case_csv_negative_dose(c: Ctx) -> Case:
    folder, _ = write_folder(c)
    (folder / "dose.csv").write_text(",data\n5,-1.5\n")
    return refused_at(c, folder, ["negative"], "dose -1.5 Gy", names=["dose.csv"])


@case("openkbp")
def case_csv_voxel_dimensions_garbage(c: Ctx) -> Case:
    folder, _ = write_folder(c)
    (folder / "voxel_dimensions.csv").write_text("three point five\n")
    return refused_at(
        c, folder, ["voxel"], "voxel_dimensions.csv holds words", names=["voxel_dimensions.csv"]
    )


@case("openkbp")
def case_csv_voxel_dimensions_negative(c: Ctx) -> Case:
    folder, _ = write_folder(c)
    np.savetxt(folder / "voxel_dimensions.csv", [3.5, -3.5, 2.5])
    return refused_at(c, folder, ["voxel size"], "a negative voxel dimension", names=["voxel_dimensions.csv"])
