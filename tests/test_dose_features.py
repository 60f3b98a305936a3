"""Dose features: SDF against brute force, the constraint vector,
OpenKBP -> DosePatient and its bad-input rules."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from scipy import ndimage

from ctlib.errors import CTInputError
from ctlib.io import openkbp
from ctlib.io.openkbp import ROI_NAMES, OpenKBPPatient
from ctlib.io.volume import Volume
from ctlib.studies.dose import features, patient_file

SPACING = (2.5, 3.0, 1.5)


def _brute_force_sdf(mask: np.ndarray, spacing) -> np.ndarray:
    coords = np.stack(
        np.meshgrid(*[np.arange(n) * s for n, s in zip(mask.shape, spacing, strict=True)], indexing="ij"), -1
    )
    inside, outside = coords[mask], coords[~mask]
    flat = coords.reshape(-1, 3)
    d_in = np.linalg.norm(flat[:, None] - inside[None], axis=-1).min(1).reshape(mask.shape)
    d_out = np.linalg.norm(flat[:, None] - outside[None], axis=-1).min(1).reshape(mask.shape)
    return np.where(mask, -d_out, d_in)


@pytest.mark.parametrize("clip_mm", [4.0, 50.0])
def test_signed_distance_matches_brute_force(clip_mm):
    rng = np.random.default_rng(1)
    mask = np.zeros((9, 10, 11), dtype=bool)
    mask[2:6, 3:8, 2:9] = True
    mask &= rng.random(mask.shape) > 0.15  # ragged surface, interior holes
    sdf = features.signed_distance_mm(mask, SPACING, clip_mm)
    expected = np.clip(_brute_force_sdf(mask, SPACING), -clip_mm, clip_mm)
    np.testing.assert_allclose(sdf, expected, atol=1e-5)
    assert sdf.dtype == np.float32 and np.all(sdf[mask] < 0) and np.all(sdf[~mask] > 0)


def test_signed_distance_crop_is_exact_on_a_larger_volume():
    mask = np.zeros((40, 40, 40), dtype=bool)
    mask[18:22, 15:20, 20:23] = True
    sdf = features.signed_distance_mm(mask, (1.0, 1.0, 1.0), clip_mm=6.0)

    full = ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)
    np.testing.assert_allclose(sdf, np.clip(full, -6.0, 6.0), atol=1e-5)
    assert sdf[0, 0, 0] == 6.0 and sdf[20, 17, 21] == -2.0  # 2 voxels from the nearest outside voxel


def test_signed_distance_empty_and_bad_clip():
    assert np.all(features.signed_distance_mm(np.zeros((3, 4, 5), bool), SPACING, 7.0) == 7.0)
    with pytest.raises(ValueError, match="clip_mm"):
        features.signed_distance_mm(np.ones((2, 2, 2), bool), SPACING, 0.0)


def test_constraint_vector_names_and_values():
    names = features.constraint_names()
    assert len(names) == len(set(names)) == 3 + 7 + 10
    present = {"PTV70": True, "PTV56": True, "Brainstem": True, "SpinalCord": False}
    vector = dict(zip(names, features.constraint_vector(present).tolist(), strict=True))
    assert vector["PTV70_prescription_gy"] == 70 and vector["PTV56_prescription_gy"] == 56
    assert vector["PTV63_prescription_gy"] == 0 and vector["SpinalCord_Dmax_gy"] == 0
    assert (
        vector["Brainstem_Dmax_gy"] == 54
        and vector["Brainstem_present"] == 1
        and vector["Larynx_present"] == 0
    )
    sources = features.constraint_sources()
    assert list(sources) == names and all(sources.values())
    assert (
        "RTOG 0615" in sources["SpinalCord_Dmax_gy"] and "70 / 63 / 56 Gy" in sources["PTV63_prescription_gy"]
    )


def _patient(shape=(6, 8, 10)) -> OpenKBPPatient:
    rng = np.random.default_rng(0)
    pdm = np.zeros(shape, dtype=bool)
    pdm[1:5, 1:7, 1:9] = True
    ptv = np.zeros(shape, dtype=bool)
    ptv[2:4, 3:5, 3:7] = True
    cord = np.zeros(shape, dtype=bool)
    cord[:, 6, 8] = True
    dose = rng.uniform(0, 70, shape).astype(np.float32)
    return OpenKBPPatient(
        patient_id="pt_7", ct=Volume(rng.normal(0, 50, shape), SPACING, meta={"source": "pt_7.npz"}),
        dose_gy=dose, possible_dose_mask=pdm, structures={"PTV70": ptv, "SpinalCord": cord}, split="train",
    )


def test_dose_patient_from_openkbp_fields():
    source = _patient()
    p = features.dose_patient_from_openkbp(source)
    assert p.split == "train" and p.patient_id == "pt_7" and p.shape == (6, 8, 10)
    assert p.present.tolist() == [name in ("PTV70", "SpinalCord") for name in ROI_NAMES]
    assert np.array_equal(p.mask("PTV70"), source.structures["PTV70"]) and not p.mask("Larynx").any()
    assert np.all(p.sdf("Larynx") == patient_file.SDF_CLIP_MM) and p.sdf("PTV70").min() < 0
    assert np.all(p.dose_gy[~p.possible_dose_mask] == 0)
    np.testing.assert_array_equal(p.dose_gy[p.possible_dose_mask], source.dose_gy[source.possible_dose_mask])
    constraints = dict(zip(p.constraint_names.tolist(), p.constraints.tolist(), strict=True))
    assert constraints["PTV70_prescription_gy"] == 70 and constraints["SpinalCord_Dmax_gy"] == 45
    assert constraints["Brainstem_Dmax_gy"] == 0
    assert np.array_equal(p.spacing_mm, SPACING)
    assert features.dose_patient_from_openkbp(source, "test", sdf_clip_mm=5.0).sdf("Larynx").max() == 5.0


def test_empty_mask_is_missing_with_a_warning(tmp_path):
    source = _patient()
    source.structures["Larynx"] = np.zeros(source.ct.shape, dtype=bool)
    with pytest.warns(features.DoseInputWarning, match="Larynx.*empty"):
        p = features.dose_patient_from_openkbp(source)
    assert not p.present[ROI_NAMES.index("Larynx")]
    patient_file.save_dose_patient(tmp_path / "p.npz", p)  # a consistent file


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda s: setattr(s, "dose_gy", s.dose_gy[:, :, :9]), r"dose_gy grid \(6, 8, 9\) does not match"),
        (lambda s: setattr(s, "dose_gy", None), "dose_gy is missing"),
        (lambda s: s.dose_gy.__setitem__((0, 0, 0), np.nan), "1 NaN"),
        (lambda s: s.dose_gy.__setitem__((0, 0, 0), -1.0), "negative"),
        (lambda s: setattr(s, "possible_dose_mask", s.possible_dose_mask[1:]), "possible_dose_mask grid"),
        (lambda s: s.structures.__setitem__("PTV70", s.structures["PTV70"][1:]), "mask of PTV70 grid"),
        (lambda s: s.structures.__setitem__("Parotid_L", s.structures["PTV70"]), "not canonical"),
    ],
)
def test_bad_input_is_refused(change, problem):
    source = _patient()
    change(source)
    with pytest.raises(CTInputError, match=problem) as info:
        features.dose_patient_from_openkbp(source)
    assert "pt_7.npz" in str(info.value)


def test_needs_a_split():
    source = dataclasses.replace(_patient(), split=None)
    with pytest.raises(ValueError, match="no split"):
        features.dose_patient_from_openkbp(source)


@pytest.mark.realdata
def test_real_openkbp_patient(data_root, tmp_path):
    path = data_root / "openkbp" / "validation" / "pt_201.npz"
    source = openkbp.read_openkbp_npz(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = features.dose_patient_from_openkbp(source)
    assert p.split == "validation" and p.shape == (128, 128, 128)
    assert p.present.tolist() == [name in source.structures for name in ROI_NAMES]
    for name, mask in source.structures.items():
        sdf = p.sdf(name)
        assert np.all(sdf[mask] < 0) and np.all(sdf[~mask] > 0) and sdf.min() >= -patient_file.SDF_CLIP_MM
    ptv = next(name for name in ("PTV70", "PTV63", "PTV56") if name in source.structures)
    assert np.median(p.dose_gy[p.mask(ptv)]) > 0.9 * features.PRESCRIPTION_GY[ptv]
    loaded = patient_file.load_dose_patient(patient_file.save_dose_patient(tmp_path / "p.npz", p))
    np.testing.assert_array_equal(loaded.sdf_mm, p.sdf_mm)
