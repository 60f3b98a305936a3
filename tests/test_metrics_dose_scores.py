"""OpenKBP dose scores, DVH metrics, DVH curves and the constraint table
against closed forms on tiny arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctlib.metrics import dose_scores

SPACING = (2.0, 5.0, 5.0)  # 50 mm^3 voxels: 0.1 cc = 2 voxels


def _ramp_mask(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A (1, 1, n) dose ramp 0, 1, ..., n-1 Gy and a full mask."""
    dose = np.arange(n, dtype=np.float32).reshape(1, 1, n)
    return dose, np.ones_like(dose, dtype=bool)


def test_dose_score_is_mae_inside_the_possible_dose_mask():
    true = np.zeros((2, 3, 4), np.float32)
    pred = true.copy()
    pred[0] = 2.0  # 12 voxels off by 2 Gy
    pred[1, 0, 0] = 100.0  # outside the mask: not scored
    mask = np.zeros_like(true, bool)
    mask[0] = True
    mask[1, 1:] = True  # 12 + 8 voxels, 12 of them off by 2
    assert dose_scores.dose_score(pred, true, mask) == pytest.approx(12 * 2 / 20)
    assert dose_scores.dose_score(true, true, mask) == 0.0


def test_uniform_dose_gives_the_value_for_every_metric():
    dose = np.full((4, 5, 6), 61.5, np.float32)
    mask = np.zeros(dose.shape, bool)
    mask[1:3, 1:4, 1:5] = True
    metrics = dose_scores.dvh_metrics(dose, {"PTV63": mask, "Brainstem": mask}, SPACING)
    for key in [
        ("PTV63", "D_99"),
        ("PTV63", "D_95"),
        ("PTV63", "D_1"),
        ("Brainstem", "D_0.1_cc"),
        ("Brainstem", "mean"),
    ]:
        assert metrics.values[key] == pytest.approx(61.5)
    assert metrics.skipped["SpinalCord"] == "missing"
    assert "PTV70" in metrics.skipped


def test_linear_ramp_percentiles_and_d_tenth_cc():
    dose, mask = _ramp_mask(101)  # 0..100 Gy: numpy's linear percentile p is exactly p Gy
    metrics = dose_scores.dvh_metrics(dose, {"PTV70": mask, "Larynx": mask}, SPACING)
    assert metrics.values[("PTV70", "D_99")] == pytest.approx(1.0)
    assert metrics.values[("PTV70", "D_95")] == pytest.approx(5.0)
    assert metrics.values[("PTV70", "D_1")] == pytest.approx(99.0)
    assert metrics.values[("Larynx", "mean")] == pytest.approx(50.0)
    # 0.1 cc / 50 mm^3 = 2 voxels of 101: percentile p = 100 - 2/101*100, which is p Gy on this ramp
    assert metrics.values[("Larynx", "D_0.1_cc")] == pytest.approx(100 - 200 / 101)
    # 1 mm^3 voxels: 100 voxels in 0.1 cc, percentile 100 - 100/101*100
    fine = dose_scores.dvh_metrics(dose, {"Larynx": mask}, (1.0, 1.0, 1.0))
    assert fine.values[("Larynx", "D_0.1_cc")] == pytest.approx(100 - 10000 / 101)
    # a structure smaller than 0.1 cc gives its minimum dose (percentile clipped at 0)
    assert dose_scores.d_tenth_cc(np.array([3.0, 7.0]), voxel_mm3=1.0) == pytest.approx(3.0)
    # one voxel at least when a voxel is more than 0.1 cc: percentile 100 - 1/11*100 of 0..10 Gy
    assert dose_scores.d_tenth_cc(np.arange(11.0), voxel_mm3=500.0) == pytest.approx(10 - 10 / 11)


def test_dvh_score_zero_for_identical_and_mean_abs_difference_otherwise():
    dose, mask = _ramp_mask(101)
    masks = {"PTV70": mask, "Larynx": mask, "Mandible": np.zeros_like(mask)}
    true = dose_scores.dvh_metrics(dose, masks, SPACING)
    assert true.skipped["Mandible"] == "empty mask"
    assert dose_scores.dvh_score(true, true) == 0.0
    pred = dose_scores.dvh_metrics(dose + 2.0, masks, SPACING)  # every metric moves by exactly 2 Gy
    assert len(true.values) == 5
    assert dose_scores.dvh_score(true, pred) == pytest.approx(2.0)
    np.testing.assert_allclose(list(dose_scores.dvh_differences(true, pred).values()), 2.0, rtol=1e-6)
    other = dose_scores.dvh_metrics(dose, {"PTV70": mask}, SPACING)
    with pytest.raises(ValueError, match="different pairs"):
        dose_scores.dvh_score(true, other)
    nothing = dose_scores.dvh_metrics(dose, {}, SPACING)
    with pytest.raises(ValueError, match="every structure was skipped"):
        dose_scores.dvh_score(nothing, nothing)


def test_bad_input_raises_naming_the_array():
    dose = np.ones((2, 3, 4), np.float32)
    mask = np.ones_like(dose, bool)
    bad = dose.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"pred_dose_gy \(shape \(2, 3, 4\)\) holds 1 NaN"):
        dose_scores.dose_score(bad, dose, mask)
    with pytest.raises(ValueError, match=r"pred_dose_gy has shape \(2, 3, 5\)"):
        dose_scores.dose_score(np.ones((2, 3, 5)), dose, mask)
    with pytest.raises(ValueError, match="possible_dose_mask has shape"):
        dose_scores.dose_score(dose, dose, mask[:1])
    with pytest.raises(ValueError, match="possible_dose_mask is empty"):
        dose_scores.dose_score(dose, dose, ~mask)
    with pytest.raises(ValueError, match="dose_gy .* holds 1 NaN"):
        dose_scores.dvh_metrics(bad, {"PTV70": mask}, SPACING)
    with pytest.raises(ValueError, match="mask of PTV70 has shape"):
        dose_scores.dvh_metrics(dose, {"PTV70": mask[:1]}, SPACING)
    with pytest.raises(ValueError, match="spacing_mm"):
        dose_scores.dvh_metrics(dose, {"PTV70": mask}, (2.0, 0.0, 5.0))


def test_dvh_curves_cumulative_on_a_ramp():
    dose, mask = _ramp_mask(10)  # 0..9 Gy
    curves = dose_scores.dvh_curves(
        dose, {"Larynx": mask, "Esophagus": np.zeros_like(mask)}, bin_width_gy=1.0
    )
    np.testing.assert_allclose(curves.dose_gy, np.arange(10.0))
    np.testing.assert_allclose(curves.volume_percent["Larynx"], 100.0 - 10.0 * np.arange(10))
    assert curves.skipped == {"Esophagus": "empty mask"}
    wider = dose_scores.dvh_curves(dose, {"Larynx": mask}, bin_width_gy=0.5, max_dose_gy=12.0)
    assert wider.dose_gy[-1] == pytest.approx(12.0)
    assert wider.volume_percent["Larynx"][-1] == 0.0
    assert np.all(np.diff(wider.volume_percent["Larynx"]) <= 0)  # cumulative: never increases


def test_constraint_table_checks_limits_and_reports_missing_structures():
    dose, mask = _ramp_mask(101)
    constraints = [
        dose_scores.Constraint("Larynx", "mean", 45.0),  # 50 > 45: fails
        dose_scores.Constraint("Larynx", "D_0.1_cc", 99.0),  # 98.02 <= 99: passes
        dose_scores.Constraint("PTV70", "D_95", 4.0, sense="min"),  # 5 >= 4: passes
        dose_scores.Constraint("PTV70", "V_90", 10.0),  # 11 % of voxels >= 90 Gy: fails
        dose_scores.Constraint("Brainstem", "max", 54.0),  # missing
    ]
    table = dose_scores.constraint_table(dose, {"Larynx": mask, "PTV70": mask}, SPACING, constraints)
    assert list(table.columns) == ["structure", "metric", "sense", "limit", "value", "pass", "note"]
    np.testing.assert_allclose(table["value"][:4], [50.0, 100 - 200 / 101, 5.0, 100 * 11 / 101])
    assert table["pass"][:4].tolist() == [False, True, True, False]
    assert np.isnan(table["value"][4]) and table["pass"][4] is pd.NA and table["note"][4] == "missing"
    with pytest.raises(ValueError, match="unknown metric"):
        dose_scores.constraint_table(dose, {}, SPACING, [dose_scores.Constraint("Larynx", "Dmedian", 1.0)])
    with pytest.raises(ValueError, match="sense"):
        dose_scores.constraint_table(
            dose, {}, SPACING, [dose_scores.Constraint("Larynx", "mean", 1.0, "below")]
        )


def test_head_neck_constraints_from_limit_tables():
    limits = {"Brainstem": ("Dmax", 54.0, "RTOG"), "LeftParotid": ("Dmean", 26.0, "QUANTEC")}
    constraints = dose_scores.head_neck_constraints(limits, {"PTV70": 70.0})
    assert [(c.structure, c.metric, c.limit, c.sense) for c in constraints] == [
        ("Brainstem", "D_0.1_cc", 54.0, "max"),
        ("LeftParotid", "mean", 26.0, "max"),
        ("PTV70", "D_95", 70.0, "min"),
    ]
    with pytest.raises(ValueError, match="metric must be one of"):
        dose_scores.head_neck_constraints({"Larynx": ("V50", 30.0, "")}, {})


@pytest.mark.realdata
def test_openkbp_patient_scores_are_consistent(data_root):
    from ctlib.io import openkbp

    patient = openkbp.read_openkbp_npz(data_root / "openkbp" / "test" / "pt_242.npz")
    dose = patient.dose_gy
    metrics = dose_scores.dvh_metrics(dose, patient.structures, patient.ct.spacing)
    assert set(metrics.skipped) == set(patient.missing_structures)
    for target in (t for t in openkbp.TARGETS if t in patient.structures):
        d99, d95, d1 = (metrics.values[(target, m)] for m in ("D_99", "D_95", "D_1"))
        assert d99 <= d95 <= d1
        assert 0.8 * float(target[3:]) < d95 < 1.2 * float(target[3:])  # near the prescription
    scaled = dose_scores.dvh_metrics(dose * 1.1, patient.structures, patient.ct.spacing)
    expected = np.mean([0.1 * v for v in metrics.values.values()])  # every metric is linear in the dose
    assert dose_scores.dvh_score(metrics, scaled) == pytest.approx(expected, rel=1e-5)
    assert dose_scores.dose_score(dose * 1.1, dose, patient.possible_dose_mask) == pytest.approx(
        0.1 * dose[patient.possible_dose_mask].mean(), rel=1e-5)
