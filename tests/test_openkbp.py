"""OpenKBP reader: repacked .npz and the challenge's CSV folders, orientation, refusals, real patients."""

from __future__ import annotations

import numpy as np
import pytest

from ctlib.errors import CTInputError
from ctlib.io import openkbp


def _write_sparse(path, dense, with_values=True):
    flat = dense.reshape(-1)
    index = np.flatnonzero(flat)
    with open(path, "w") as handle:
        handle.write(",data\n")
        for i in index:
            handle.write(f"{i},{flat[i]:.3f}\n" if with_values else f"{i},\n")


def _fake_patient(tmp_path, *, dose=True, rng=None):
    """A challenge-layout patient folder on the 128^3 grid with a few non-zero voxels."""
    rng = rng or np.random.default_rng(0)
    folder = tmp_path / "pt_7"
    folder.mkdir()
    ct = np.zeros(openkbp.GRID, np.int32)
    ct[40:80, 50:70, 10:100] = rng.integers(900, 1200, size=(40, 20, 90))
    _write_sparse(folder / "ct.csv", ct)
    if dose:
        dose_gy = np.zeros(openkbp.GRID, np.float32)
        dose_gy[50:60, 55:65, 40:60] = 70.0
        _write_sparse(folder / "dose.csv", dose_gy)
    pdm = ct > 0
    _write_sparse(folder / "possible_dose_mask.csv", pdm, with_values=False)
    brainstem = np.zeros(openkbp.GRID, bool)
    brainstem[60:62, 60:62, 20:25] = True
    _write_sparse(folder / "Brainstem.csv", brainstem, with_values=False)
    np.savetxt(folder / "voxel_dimensions.csv", [3.906, 3.906, 2.5])
    return folder, ct, pdm, brainstem


def test_csv_folder_layout(tmp_path):
    folder, ct, pdm, brainstem = _fake_patient(tmp_path)
    patient = openkbp.read_openkbp(folder)
    assert patient.patient_id == "pt_7"
    assert patient.ct.shape == (128, 128, 128)
    assert patient.ct.spacing == pytest.approx((2.5, 3.906, 3.906))
    # Volume (z, y, x) = OpenKBP (k, i, j); stored value - 1024 = HU.
    assert patient.ct.array[15, 45, 55] == ct[45, 55, 15] - 1024
    assert patient.ct.array[0, 0, 0] == -1024
    assert patient.dose_gy[50, 55, 55] == pytest.approx(70.0)
    np.testing.assert_array_equal(patient.possible_dose_mask, np.moveaxis(pdm, 2, 0))
    np.testing.assert_array_equal(patient.structures["Brainstem"], np.moveaxis(brainstem, 2, 0))
    assert "Esophagus" in patient.missing_structures


def test_csv_folder_without_dose(tmp_path):
    folder, *_ = _fake_patient(tmp_path, dose=False)
    assert openkbp.read_openkbp(folder).dose_gy is None


def test_csv_refusals(tmp_path):
    folder, *_ = _fake_patient(tmp_path)
    (folder / "dose.csv").write_text(",data\n5,nan\n")
    with pytest.raises(CTInputError, match=r"dose.csv: dose holds 1 NaN"):
        openkbp.read_openkbp(folder)
    (folder / "dose.csv").write_text(",data\n99999999,1.0\n")
    with pytest.raises(CTInputError, match="out of the 128"):
        openkbp.read_openkbp(folder)
    (folder / "voxel_dimensions.csv").unlink()
    with pytest.raises(CTInputError, match="missing voxel_dimensions.csv"):
        openkbp.read_openkbp(folder)


def test_npz_refusals(tmp_path):
    np.savez(tmp_path / "x.npz", ct=np.zeros((4, 4, 4), np.int16))
    with pytest.raises(CTInputError, match="missing keys"):
        openkbp.read_openkbp(tmp_path / "x.npz")
    fields = dict(
        ct=np.zeros((128, 128, 64), np.int16),
        possible_dose_mask=np.zeros((128, 128, 64), bool),
        structure_masks=np.zeros((10, 128, 128, 64), bool),
        roi_names=np.asarray(openkbp.ROI_NAMES),
        voxel_size_mm=np.array([4.0, 4.0, 2.5], np.float32),
    )
    np.savez(tmp_path / "y.npz", **fields)
    with pytest.raises(CTInputError, match=r"y.npz: ct has shape \(128, 128, 64\)"):
        openkbp.read_openkbp(tmp_path / "y.npz")
    (tmp_path / "z.npz").write_bytes(b"garbage")
    with pytest.raises(CTInputError, match="not a readable .npz"):
        openkbp.read_openkbp(tmp_path / "z.npz")


@pytest.mark.realdata
def test_shared_patient_shapes_hu_and_orientation(data_root):
    patient = openkbp.read_openkbp(data_root / "openkbp/train/pt_2.npz")
    raw = np.load(data_root / "openkbp/train/pt_2.npz")
    assert patient.split == "train" and patient.patient_id == "pt_2"
    assert patient.ct.shape == (128, 128, 128) and patient.dose_gy.shape == (128, 128, 128)
    assert patient.ct.spacing == pytest.approx((3.0, 4.625, 4.625))
    np.testing.assert_array_equal(
        patient.ct.array, np.moveaxis(np.clip(raw["ct"].astype(np.int32), 0, 4095) - 1024, 2, 0)
    )
    # Soft tissue near 0-60 HU inside the body.
    body = patient.ct.array > -500
    assert -50 < np.median(patient.ct.array[body]) < 80
    assert patient.dose_gy.max() == pytest.approx(72.783, abs=1e-3)
    assert np.all(patient.dose_gy[~patient.possible_dose_mask] == 0)
    assert set(patient.missing_structures) == {"Larynx"}

    # Geometry: the brainstem lies superior (+z in LPS) of the oesophagus, the mandible anterior (-y) of the
    # cord.
    def centre_lps(name):
        k, j, i = np.argwhere(patient.structures[name]).mean(axis=0)
        return patient.ct.index_to_lps() @ np.array([i, j, k, 1.0])

    assert centre_lps("Brainstem")[2] > centre_lps("Esophagus")[2] + 50
    assert centre_lps("Mandible")[1] < centre_lps("SpinalCord")[1]
    assert centre_lps("LeftParotid")[0] > centre_lps("RightParotid")[0]


@pytest.mark.realdata
def test_shared_npz_equals_csv_layout(data_root, tmp_path):
    """The two layouts give the same patient: write pt_1 back as sparse CSVs and read both."""
    raw = np.load(data_root / "openkbp/train/pt_1.npz")
    folder = tmp_path / "pt_1"
    folder.mkdir()
    _write_sparse(folder / "ct.csv", raw["ct"].astype(np.int32))
    _write_sparse(folder / "dose.csv", raw["dose_gy"])
    _write_sparse(folder / "possible_dose_mask.csv", raw["possible_dose_mask"], with_values=False)
    for name, mask, present in zip(raw["roi_names"], raw["structure_masks"], raw["roi_present"], strict=True):
        if present:
            _write_sparse(folder / f"{name}.csv", mask, with_values=False)
    np.savetxt(folder / "voxel_dimensions.csv", raw["voxel_size_mm"])
    from_npz, from_csv = (
        openkbp.read_openkbp(data_root / "openkbp/train/pt_1.npz"),
        openkbp.read_openkbp(folder),
    )
    np.testing.assert_array_equal(from_npz.ct.array, from_csv.ct.array)
    np.testing.assert_allclose(from_npz.dose_gy, from_csv.dose_gy, atol=1e-3)
    assert sorted(from_npz.structures) == sorted(from_csv.structures)


def _npz_fields(**changes):
    fields = dict(
        ct=np.full(openkbp.GRID, 1000, np.int16),
        possible_dose_mask=np.ones(openkbp.GRID, bool),
        structure_masks=np.zeros((10, *openkbp.GRID), bool),
        roi_names=np.asarray(openkbp.ROI_NAMES),
        voxel_size_mm=np.array([4.0, 4.0, 2.5], np.float32),
    )
    return {**fields, **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"structure_masks": np.zeros((10, 128, 128, 64), bool)},
            r"structure_masks has shape \(10, 128, 128, 64\)",
        ),
        ({"structure_masks": np.zeros((9, *openkbp.GRID), bool)}, r"structure_masks has shape \(9, 128"),
        ({"roi_present": np.ones(3, bool)}, r"roi_present has shape \(3,\)"),
        (
            {"ct": np.where(np.eye(128, dtype=bool)[..., None], np.nan, np.ones(openkbp.GRID))},
            r"ct holds 16384 NaN",
        ),
        ({"ct": np.full(openkbp.GRID, np.inf, np.float32)}, r"ct holds 2097152 NaN or infinite"),
    ],
)
def test_npz_wrong_mask_shape_and_nan_ct_are_refused(tmp_path, changes, message):
    """Before: masks of the wrong shape loaded (or failed deep inside zip), a NaN CT loaded as NaN HU."""
    np.savez(tmp_path / "p.npz", **_npz_fields(**changes))
    with pytest.raises(CTInputError, match=rf"p\.npz: {message}"):
        openkbp.read_openkbp(tmp_path / "p.npz")


def test_csv_nan_ct_is_refused(tmp_path):
    """Before: the CSV CT was parsed as int32, and 'nan' became -2147483648 clipped to -1024 HU."""
    folder, *_ = _fake_patient(tmp_path)
    (folder / "ct.csv").write_text(",data\n5,nan\n6,1000\n")
    with pytest.raises(CTInputError, match=r"ct\.csv: ct holds 1 NaN"):
        openkbp.read_openkbp(folder)
