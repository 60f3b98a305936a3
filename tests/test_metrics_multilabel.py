"""Multi-label F1 against sklearn's f1_score (micro, macro, weighted, per class) and hand-counted cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import exceptions as sk_exceptions
from sklearn import metrics as sk

from ctlib.metrics import multilabel


def _sklearn(labels: np.ndarray, predictions: np.ndarray, zero_division: float | str = 0) -> dict:
    return {
        average or "per_class": sk.f1_score(labels, predictions, average=average, zero_division=zero_division)
        for average in ("micro", "macro", "weighted", None)
    }


def _assert_matches(ours: dict, theirs: dict) -> None:
    for key in ("micro", "macro", "weighted"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    np.testing.assert_allclose(ours["per_class"], theirs["per_class"], atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((30, 6)) < rng.uniform(0.05, 0.6, size=6)).astype(int)
    predictions = np.where(rng.random((30, 6)) < 0.7, labels, 1 - labels)
    labels[:, 0] = predictions[:, 0] = 0  # one class neither present nor predicted (zero division)
    labels[:, 1] = 0  # one predicted but never present (F1 0, weight 0)
    _assert_matches(multilabel.f1_scores(labels, predictions), _sklearn(labels, predictions))


def test_hand_counted_case_and_zero_division():
    # class 0: TP 1, FP 1, FN 1 -> 2/4; class 1: TP 0, FP 1 -> 0; class 2: nothing -> 0 (zero division).
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0]])
    predictions = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0]])
    ours = multilabel.f1_scores(labels, predictions)
    np.testing.assert_allclose(ours["per_class"], [0.5, 0.0, 0.0])
    np.testing.assert_array_equal(ours["support"], [2, 0, 0])
    assert ours["macro"] == pytest.approx(0.5 / 3)  # the zero-division class counts as 0 in the mean
    assert ours["weighted"] == pytest.approx(0.5)  # only class 0 has support
    assert ours["micro"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    _assert_matches(ours, _sklearn(labels, predictions))
    # sklearn's default zero_division="warn" gives the same numbers (and warns); zero_division=1 does not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sk_exceptions.UndefinedMetricWarning)
        _assert_matches(ours, _sklearn(labels, predictions, zero_division="warn"))
    assert _sklearn(labels, predictions, zero_division=1)["macro"] == pytest.approx(1.5 / 3)


def test_all_negative_is_zero():
    zeros = np.zeros((4, 3), dtype=bool)
    ours = multilabel.f1_scores(zeros, zeros)
    assert ours["micro"] == ours["macro"] == ours["weighted"] == 0.0
    _assert_matches(ours, _sklearn(zeros, zeros))


def test_perfect_predictions_score_one():
    labels = np.array([[1, 0], [0, 1], [1, 1]])
    ours = multilabel.f1_scores(labels, labels)
    assert ours["micro"] == ours["macro"] == ours["weighted"] == 1.0


@pytest.mark.parametrize(
    ("labels", "predictions", "match"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "differ"),
        (np.zeros(3), np.zeros(3), "samples, classes"),
        (np.zeros((3, 2)), np.full((3, 2), 0.7), "only 0 and 1"),
        (np.full((3, 2), np.nan), np.zeros((3, 2)), "only 0 and 1"),
    ],
)
def test_bad_input_is_refused(labels, predictions, match):
    with pytest.raises(ValueError, match=match):
        multilabel.f1_scores(labels, predictions)
