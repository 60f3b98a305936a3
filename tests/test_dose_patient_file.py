"""The per-patient dose file: round trip, refusals with CTInputError, listing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ctlib.errors import CTInputError
from ctlib.studies.dose import patient_file
from ctlib.studies.dose.patient_file import DosePatient


def _patient(patient_id: str = "pt_1", split: str = "train") -> DosePatient:
    rng = np.random.default_rng(0)
    grid = (4, 5, 6)
    pdm = np.zeros(grid, dtype=bool)
    pdm[1:3] = True
    masks = np.zeros((2, *grid), dtype=bool)
    masks[0, 1:3, 1:4, 2:5] = True
    sdf = np.full((2, *grid), patient_file.SDF_CLIP_MM, dtype=np.float32)
    sdf[0] = np.where(masks[0], -2.0, 3.0)
    return DosePatient(
        ct_hu=rng.normal(0, 100, grid).astype(np.float32),
        dose_gy=(rng.uniform(0, 70, grid) * pdm).astype(np.float32),
        possible_dose_mask=pdm,
        masks=masks,
        present=np.array([True, False]),
        sdf_mm=sdf,
        constraints=np.array([70.0, 0.0, 54.0], dtype=np.float32),
        constraint_names=np.array(["PTV70_prescription_gy", "PTV63_prescription_gy", "Brainstem_dmax_gy"]),
        spacing_mm=np.array([2.5, 3.9, 3.9]),
        roi_names=np.array(["PTV70", "Brainstem"]),
        patient_id=patient_id,
        split=split,
    )


def test_round_trip_keeps_every_field(tmp_path):
    original = _patient()
    path = patient_file.save_dose_patient(patient_file.patient_path(tmp_path, "train", "pt_1"), original)
    assert path == tmp_path / "patients" / "train" / "pt_1.npz"
    loaded = patient_file.load_dose_patient(path)
    for f in dataclasses.fields(DosePatient):
        a, b = getattr(original, f.name), getattr(loaded, f.name)
        assert np.array_equal(np.asarray(a), np.asarray(b)), f.name
    assert loaded.ct_hu.dtype == np.float32 and loaded.masks.dtype == bool
    assert loaded.patient_id == "pt_1" and loaded.split == "train" and loaded.shape == (4, 5, 6)
    assert np.array_equal(loaded.mask("PTV70"), original.masks[0])
    assert loaded.sdf("Brainstem").min() == patient_file.SDF_CLIP_MM
    with pytest.raises(KeyError, match="Larynx"):
        loaded.mask("Larynx")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["patients", "pt_1.npz", "train"]  # no temp left


def test_save_refuses_inconsistent_patient(tmp_path):
    bad = _patient()
    bad.dose_gy = bad.dose_gy.copy()
    bad.dose_gy[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        patient_file.save_dose_patient(tmp_path / "x.npz", bad)
    assert not (tmp_path / "x.npz").exists()
    bad = _patient()
    bad.masks = bad.masks[:, :3]
    with pytest.raises(ValueError, match="masks has shape"):
        patient_file.save_dose_patient(tmp_path / "x.npz", bad)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda a: a.pop("sdf_mm"), "missing keys"),
        (lambda a: a.__setitem__("dose_gy", a["dose_gy"][:2]), "dose_gy has shape"),
        (
            lambda a: a.__setitem__(
                "dose_gy", np.where(a["possible_dose_mask"], np.nan, 0).astype(np.float32)
            ),
            "NaN",
        ),
        (lambda a: a.__setitem__("dose_gy", np.ones_like(a["dose_gy"])), "outside possible_dose_mask"),
        (lambda a: a.__setitem__("masks", a["masks"].astype(np.uint8)), "masks must be bool"),
        (lambda a: a.__setitem__("present", np.array([False, False])), "flagged absent"),
    ],
)
def test_load_refuses_bad_file(tmp_path, change, problem):
    path = patient_file.save_dose_patient(tmp_path / "pt_1.npz", _patient())
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    np.savez_compressed(path, **arrays)
    with pytest.raises(CTInputError, match=problem) as info:
        patient_file.load_dose_patient(path)
    assert str(path) in str(info.value)


def test_load_refuses_missing_and_unreadable(tmp_path):
    with pytest.raises(CTInputError, match="no such"):
        patient_file.load_dose_patient(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CTInputError, match="not a readable"):
        patient_file.load_dose_patient(tmp_path / "junk.npz")


def test_list_dose_patients_natural_order(tmp_path):
    for pid in ("pt_10", "pt_2", "pt_1"):
        patient_file.save_dose_patient(
            patient_file.patient_path(tmp_path, "test", pid), _patient(pid, "test")
        )
    assert [p.stem for p in patient_file.list_dose_patients(tmp_path, "test")] == ["pt_1", "pt_2", "pt_10"]
    assert patient_file.list_dose_patients(tmp_path, "train") == []
    with pytest.raises(ValueError, match="split must be one of"):
        patient_file.list_dose_patients(tmp_path, "val")
