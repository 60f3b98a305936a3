"""Classification metrics: AUROC against sklearn, a patient bootstrap that really resamples, thresholds
that cannot be fitted on the scored split, and both F1s named apart."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from ctlib.metrics import classification as cls


def _data(n=200, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    s = y * 0.8 + rng.normal(size=n)
    if ties:
        s = np.round(s, 1)
    return y, s


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn(ties):
    y, s = _data(ties=ties)
    assert cls.auroc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_auroc_closed_forms():
    y = np.array([0, 0, 1, 1.0])
    assert cls.auroc(y, np.array([1, 2, 3, 4.0])) == 1.0
    assert cls.auroc(y, np.array([4, 3, 2, 1.0])) == 0.0
    assert cls.auroc(y, np.ones(4)) == 0.5
    assert cls.auroc(y, np.array([1, 3, 2, 4.0])) == 0.75
    assert np.isnan(cls.auroc(np.ones(4), np.arange(4.0)))


def test_weights_are_multiplicities():
    y, s = _data(n=50, seed=3, ties=True)
    w = np.random.default_rng(1).integers(0, 4, size=50)
    repeated = np.repeat(np.arange(50), w)
    assert cls.weighted_auroc(y, s, w) == pytest.approx(sk.roc_auc_score(y[repeated], s[repeated]), abs=1e-12)


def test_bootstrap_resamples_patients_and_is_seeded():
    y, s = _data(n=120, seed=1)
    patients = [f"p{i // 3}" for i in range(120)]  # three volumes per patient
    counts, _ = cls.patient_resample_counts(patients, 50, seed=4)
    assert (counts[:, 0::3] == counts[:, 1::3]).all() and (counts[:, 0::3] == counts[:, 2::3]).all()
    assert counts.sum(1) == pytest.approx(np.full(50, 120.0))  # as many patients drawn as there are
    a = cls.bootstrap_auroc(y, s, patients, n_replicates=300, seed=7)
    b = cls.bootstrap_auroc(y, s, patients, n_replicates=300, seed=7)
    np.testing.assert_array_equal(a.replicates, b.replicates)
    assert a.replicates.std() > 0.01  # replicates differ: the resampling happens
    assert a.low < a.estimate < a.high
    assert a.estimate == pytest.approx(sk.roc_auc_score(y, s))


def test_patient_bootstrap_is_wider_than_a_volume_bootstrap_of_duplicated_volumes():
    y, s = _data(n=60, seed=5)
    dup_y, dup_s = np.repeat(y, 4), np.repeat(s, 4)
    patients, volumes = [f"p{i // 4}" for i in range(240)], [f"v{i}" for i in range(240)]
    by_patient = cls.bootstrap_auroc(dup_y, dup_s, patients, n_replicates=400, seed=0)
    by_volume = cls.bootstrap_auroc(dup_y, dup_s, volumes, n_replicates=400, seed=0)
    assert (by_patient.high - by_patient.low) > 1.5 * (by_volume.high - by_volume.low)


def test_degenerate_bootstrap_is_caught(monkeypatch):
    """The released CT-CLIP bootstrap had its resampling line commented out: every replicate identical."""
    y, s = _data(n=40)

    def no_resampling(patient_ids, n_replicates, seed):
        return np.ones((n_replicates, len(patient_ids))), None

    monkeypatch.setattr(cls, "patient_resample_counts", no_resampling)
    with pytest.raises(RuntimeError, match="degenerate bootstrap"):
        cls.bootstrap_auroc(y, s, [str(i) for i in range(40)], n_replicates=20)


def test_one_patient_cannot_be_bootstrapped():
    y, s = _data(n=30)
    with pytest.raises(ValueError, match="at least 2 patients"):
        cls.bootstrap_auroc(y, s, ["p"] * 30)


def test_single_class_replicates_are_counted_not_nan():
    y = np.zeros(20)
    y[0] = 1
    s = np.arange(20.0)
    result = cls.bootstrap_auroc(y, s, [str(i) for i in range(20)], n_replicates=200, seed=0)
    assert result.n_single_class > 0
    assert np.isfinite(result.replicates).all() and len(result.replicates) == 200 - result.n_single_class


def test_threshold_fitted_on_validation_is_refused_on_its_own_split_and_volumes():
    """A test-set threshold (the released code's closest-to-(0, 1) point on the evaluation set) is caught."""
    y, s = _data(n=80)
    ids = [f"v{i}" for i in range(80)]
    threshold = cls.fit_threshold(y, s, ids, split="validation")
    with pytest.raises(ValueError, match="fitted on the 'validation' split"):
        cls.binary_metrics(y, s, threshold, ids, split="validation")
    with pytest.raises(ValueError, match="fitted on 80 of the scored volumes"):
        cls.binary_metrics(y, s, threshold, ids, split="test")
    other = [f"t{i}" for i in range(80)]
    assert cls.binary_metrics(y, s, threshold, other, split="test")["n"] == 80


def test_youden_and_f1_thresholds_closed_form():
    negatives = [*np.linspace(0.0, 0.09, 30), 0.3, 0.4, 0.5]
    s = np.array([*negatives, 0.1, 0.9])
    y = np.array([0.0] * 33 + [1.0, 1.0])
    ids = [str(i) for i in range(35)]
    # At 0.095: TPR 1, FPR 3/33 -> J = 0.91, F1 = 4/7; at 0.7: TPR 1/2, FPR 0 -> J = 0.5, F1 = 2/3.
    assert cls.fit_threshold(y, s, ids, "val").value == pytest.approx(0.095)
    assert cls.fit_threshold(y, s, ids, "val", rule="f1").value == pytest.approx(0.7)
    with pytest.raises(ValueError, match="one class only"):
        cls.fit_threshold(np.ones(35), s, ids, "val")


def test_binary_metrics_match_sklearn_and_name_both_f1s():
    y, s = _data(n=150, seed=2)
    threshold = cls.Threshold(0.3, "given", "validation", frozenset())
    m = cls.binary_metrics(y, s, threshold, [str(i) for i in range(150)], split="test")
    p = (s >= 0.3).astype(int)
    assert m["precision"] == pytest.approx(sk.precision_score(y, p))
    assert m["recall"] == pytest.approx(sk.recall_score(y, p))
    assert m["f1_positive"] == pytest.approx(sk.f1_score(y, p))
    assert m["f1_weighted"] == pytest.approx(sk.f1_score(y, p, average="weighted"))
    assert m["f1_weighted"] != pytest.approx(m["f1_positive"], abs=0.02)  # the released code's mix-up
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, p))
    assert m["specificity"] == pytest.approx(sk.recall_score(1 - y, 1 - p))


def test_roc_curve_matches_sklearn_and_integrates_to_the_auroc():
    y, s = _data(n=120, seed=4, ties=True)
    fpr, tpr = cls.roc_curve(y, s)
    ref_fpr, ref_tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(cls.auroc(y, s))
