"""Dose preprocessing: phantom patients, files + manifest, refusals recorded and not fatal,
real OpenKBP files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ctlib.io.openkbp import ROI_NAMES
from ctlib.studies.dose import patient_file, preprocess

SMALL = {"shape": (16, 32, 32), "spacing_mm": (5.0, 8.0, 8.0)}


@pytest.fixture(scope="module")
def phantoms():
    return preprocess.phantom_patients(5, seed=3, **SMALL)


def test_phantom_patients_are_deterministic_split_and_varied(phantoms):
    again = preprocess.phantom_patients(5, seed=3, **SMALL)
    assert [p.patient_id for p in phantoms] == [f"phantom_{i:03d}" for i in range(5)]
    assert sorted(p.split for p in phantoms) == ["test", "train", "train", "train", "validation"]
    assert [p.split for p in phantoms] == [p.split for p in again]
    for a, b in zip(phantoms, again, strict=True):
        np.testing.assert_array_equal(a.dose_gy, b.dose_gy)
    assert all(set(p.structures) == {"PTV70", "Brainstem"} for p in phantoms)
    assert phantoms[0].ct.shape == SMALL["shape"] and phantoms[0].ct.spacing == SMALL["spacing_mm"]
    # Odd patients are mirrored: the PTV sits on the other side of the midline.
    centre_x = [np.argwhere(p.structures["PTV70"])[:, 2].mean() for p in phantoms[:2]]
    assert centre_x[0] < 16 < centre_x[1]
    assert not np.array_equal(phantoms[0].dose_gy, phantoms[2].dose_gy)
    assert all(
        np.all(p.dose_gy[~p.possible_dose_mask] == 0) and p.possible_dose_mask.mean() > 0.1 for p in phantoms
    )
    assert preprocess.phantom_patients(5, seed=4, **SMALL)[0].split is not None
    with pytest.raises(ValueError, match="at least 1"):
        preprocess.phantom_patients(0)


def test_preprocess_writes_files_and_records_refusals(phantoms, tmp_path):
    broken = dataclasses.replace(phantoms[1], patient_id="broken", dose_gy=phantoms[1].dose_gy[:, :, :-1])
    nan = dataclasses.replace(
        phantoms[2],
        patient_id="nan_dose",
        dose_gy=np.where(phantoms[2].structures["PTV70"], np.nan, phantoms[2].dose_gy),
    )
    empty = dataclasses.replace(
        phantoms[3],
        patient_id="empty_larynx",
        structures={**phantoms[3].structures, "Larynx": np.zeros(SMALL["shape"], bool)},
    )
    sources = [phantoms[0], broken, nan, empty, tmp_path / "missing" / "pt_9.npz"]
    manifest = preprocess.preprocess_patients(sources, tmp_path, sdf_clip_mm=20.0)
    assert manifest["id"].tolist() == ["phantom_000", "broken", "nan_dose", "empty_larynx", "pt_9"]
    assert manifest["status"].tolist() == ["ok", "refused", "refused", "ok", "refused"]
    reasons = manifest.set_index("id")["refused_reason"]
    assert "does not match the CT grid" in reasons["broken"] and "NaN" in reasons["nan_dose"]
    assert "no such file" in reasons["pt_9"]
    assert "Larynx" in manifest.set_index("id").loc["empty_larynx", "warnings"]
    assert (tmp_path / preprocess.MANIFEST).is_file()

    ok = manifest[manifest["status"] == "ok"]
    assert ok["present"].tolist() == ["Brainstem;PTV70"] * 2 and ok["n_present"].tolist() == [2, 2]
    for _, row in ok.iterrows():
        loaded = patient_file.load_dose_patient(tmp_path / row["path"])
        assert loaded.split == row["split"] and loaded.patient_id == row["id"]
        assert loaded.sdf_mm.max() == 20.0 and loaded.sdf("PTV70").min() < 0
        assert row["max_dose_gy"] == pytest.approx(float(loaded.dose_gy.max()), abs=1e-3)
        assert 65 < row["max_dose_gy"] < 72
        assert row["spacing_dz_mm"] == 5.0
    first = patient_file.list_dose_patients(tmp_path, phantoms[0].split)
    assert [p.stem for p in first] == ["phantom_000"]

    metrics = preprocess.summary_metrics(manifest)
    assert metrics["n_patients"] == 2 and metrics["n_refused"] == 3
    assert metrics["present_fraction_PTV70"] == 1.0 and metrics["present_fraction_Larynx"] == 0.0
    assert sum(metrics[f"n_{s}"] for s in patient_file.SPLITS) == 2


def test_preprocess_in_worker_processes_matches_serial(phantoms, tmp_path):
    broken = dataclasses.replace(phantoms[1], patient_id="broken", dose_gy=phantoms[1].dose_gy[:, :, :-1])
    sources = [phantoms[0], broken, phantoms[2]]
    serial = preprocess.preprocess_patients(sources, tmp_path / "serial")
    pooled = preprocess.preprocess_patients(sources, tmp_path / "pooled", workers=2)
    columns = [c for c in serial.columns if c != "seconds"]
    pd.testing.assert_frame_equal(serial[columns], pooled[columns])
    assert pooled["status"].tolist() == ["ok", "refused", "ok"]
    for rel in serial.loc[serial["status"] == "ok", "path"]:
        a, b = (patient_file.load_dose_patient(tmp_path / d / rel) for d in ("serial", "pooled"))
        assert np.array_equal(a.sdf_mm, b.sdf_mm) and np.array_equal(a.dose_gy, b.dose_gy)


def test_select_patients(phantoms):
    picked = preprocess.select_patients(phantoms, ["train", "test"], max_per_split=2)
    assert sorted(p.split for p in picked) == ["test", "train", "train"]
    order = [phantoms.index(p) for p in picked]
    assert order == sorted(order)  # input order is kept
    assert [p for p in picked if p.split == "train"] == [p for p in phantoms if p.split == "train"][:2]
    assert preprocess.select_patients(phantoms, ["validation"]) == [
        p for p in phantoms if p.split == "validation"
    ]
    assert len(preprocess.select_patients(phantoms)) == 5


def test_openkbp_paths_refuses_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="splits must be among"):
        preprocess.openkbp_paths(tmp_path, ["val"])


@pytest.mark.realdata
def test_real_openkbp_patients(data_root, tmp_path):
    paths = preprocess.openkbp_paths(data_root, ["validation", "test"], max_per_split=1)
    assert [p.stem for p in paths] == ["pt_201", "pt_242"]
    manifest = preprocess.preprocess_patients(paths, tmp_path)
    assert manifest["status"].tolist() == ["ok", "ok"]
    assert manifest["split"].tolist() == ["validation", "test"]
    loaded = patient_file.load_dose_patient(tmp_path / manifest.loc[1, "path"])
    assert loaded.shape == (128, 128, 128) and loaded.present.any()
    assert set(manifest.loc[1, "present"].split(";")) == {n for n, p in zip(ROI_NAMES, loaded.present,
                                                                            strict=True) if p}
    assert 60 < manifest["max_dose_gy"].min() and manifest["max_dose_gy"].max() < 90
