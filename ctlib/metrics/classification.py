"""Zero-shot classification metrics done right: rank AUROC, a patient bootstrap that resamples, thresholds
fitted on validation only, and positive-class and weighted F1 named apart.

Three faults of the released CT-CLIP evaluation are made impossible here: a bootstrap whose resampling
line is commented out (``bootstrap_auroc`` refuses replicates that are all the same sample), thresholds
picked on the evaluation set (a ``Threshold`` remembers the split and volumes it was fitted on, and
``binary_metrics`` refuses to score those), and an "F1" that is the support-weighted mean over both
classes shown next to a positive-class precision (both F1s are returned, each named).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

ThresholdRule = Literal["youden", "f1"]


def _binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """AUROC as the Mann-Whitney probability P(score_pos > score_neg) + P(tie) / 2, with sample weights.

    Weights are multiplicities (a bootstrap's counts). NaN when either class has zero weight.
    """
    y, s = _binary(labels, scores)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    _, group = np.unique(s, return_inverse=True)
    pos = np.bincount(group, weights=w * y)
    neg = np.bincount(group, weights=w * (1.0 - y))
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (total_pos * total_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` from (0, 0) to (1, 1), one point per distinct score (ties move diagonally)."""
    y, s = _binary(labels, scores)
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(y)[last_of_tie], np.cumsum(1.0 - y)[last_of_tie]
    return np.r_[0.0, fp / max(fp[-1], 1.0)], np.r_[0.0, tp / max(tp[-1], 1.0)]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (rank form, ties counted half); NaN for a single-class sample."""
    return weighted_auroc(labels, scores)


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """A point estimate, its percentile CI and what the replicates were."""

    estimate: float
    low: float
    high: float
    replicates: np.ndarray  # (n_valid,) AUROC of the replicates with both classes
    n_single_class: int  # replicates left out because they drew one class only
    confidence: float


def patient_resample_counts(
    patient_ids: Sequence[str], n_replicates: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-replicate multiplicity of every sample when PATIENTS are drawn with replacement.

    Returns ``(counts (n_replicates, n_samples), patient_draws (n_replicates, n_patients))``: every
    sample of a patient drawn ``c`` times counts ``c`` times.
    """
    patients, index = np.unique(np.asarray(patient_ids, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(patients), size=(n_replicates, len(patients)))
    per_patient = np.stack([np.bincount(d, minlength=len(patients)) for d in draws])
    return per_patient[:, index].astype(np.float64), draws


def check_not_degenerate(counts: np.ndarray) -> None:
    """Refuse a bootstrap whose replicates are all the same sample (resampling switched off)."""
    if counts.shape[0] > 1 and counts.shape[1] > 1 and (counts == counts[:1]).all():
        raise RuntimeError(
            "degenerate bootstrap: every replicate is the same sample (is the resampling step skipped?)"
        )


def bootstrap_auroc(
    labels: np.ndarray,
    scores: np.ndarray,
    patient_ids: Sequence[str],
    *,
    n_replicates: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """AUROC with a percentile CI from a patient-level bootstrap (Efron & Tibshirani 1993, ch. 13).

    Patients, not volumes, are resampled with replacement (a patient's volumes are not independent).
    Replicates that draw one class only are left out and counted (``n_single_class``); a CI from
    fewer than half the replicates is NaN.
    """
    y, s = _binary(labels, scores)
    if len(patient_ids) != len(y):
        raise ValueError(f"{len(patient_ids)} patient ids for {len(y)} samples")
    if len(set(patient_ids)) < 2:
        raise ValueError("a patient-level bootstrap needs at least 2 patients; these samples have one")
    counts, _ = patient_resample_counts(patient_ids, n_replicates, seed)
    check_not_degenerate(counts)
    values = np.array([weighted_auroc(y, s, c) for c in counts])
    valid = values[np.isfinite(values)]
    alpha = (1.0 - confidence) / 2.0
    if len(valid) < max(2, n_replicates // 2):
        low = high = float("nan")
    else:
        low, high = (float(v) for v in np.quantile(valid, [alpha, 1.0 - alpha]))
    return BootstrapResult(
        estimate=auroc(y, s),
        low=low,
        high=high,
        replicates=valid,
        n_single_class=int(len(values) - len(valid)),
        confidence=confidence,
    )


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A decision threshold and the data it was fitted on (which it must never be scored on)."""

    value: float
    rule: str
    fitted_on_split: str
    fitted_on_ids: frozenset[str]


def fit_threshold(
    labels: np.ndarray, scores: np.ndarray, ids: Sequence[str], split: str, rule: ThresholdRule = "youden"
) -> Threshold:
    """Threshold maximising Youden's J (TPR - FPR) or the positive-class F1 on a validation split.

    Candidates are midpoints between consecutive distinct scores (and the extremes); ties go to the
    lowest threshold.
    """
    y, s = _binary(labels, scores)
    if rule not in ("youden", "f1"):
        raise ValueError(f"rule must be 'youden' or 'f1', got {rule!r}")
    if len(ids) != len(y):
        raise ValueError(f"{len(ids)} ids for {len(y)} samples")
    if y.min() == y.max():
        raise ValueError(f"the {split} split has one class only: no threshold can be fitted")
    distinct = np.unique(s)
    candidates = np.concatenate(
        [[distinct[0] - 1.0], (distinct[1:] + distinct[:-1]) / 2, [distinct[-1] + 1.0]]
    )
    predicted = s[None, :] >= candidates[:, None]
    tp = (predicted & (y == 1)).sum(1)
    fp = (predicted & (y == 0)).sum(1)
    positives, negatives = (y == 1).sum(), (y == 0).sum()
    if rule == "youden":
        objective = tp / positives - fp / negatives
    else:
        objective = 2 * tp / np.maximum(2 * tp + fp + (positives - tp), 1)
    best = int(np.argmax(objective))
    return Threshold(float(candidates[best]), rule, str(split), frozenset(str(i) for i in ids))


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: Threshold, ids: Sequence[str], split: str
) -> dict[str, float]:
    """Precision, recall, specificity, accuracy, positive-class F1 and support-weighted F1 at a threshold.

    Refuses (``ValueError``) to score the split or any volume the threshold was fitted on.
    ``f1_weighted`` is sklearn's ``average="weighted"``: the F1 of each class weighted by its support.
    """
    if str(split) == threshold.fitted_on_split:
        raise ValueError(f"threshold was fitted on the {split!r} split; score it on another split")
    leaked = threshold.fitted_on_ids.intersection(str(i) for i in ids)
    if leaked:
        raise ValueError(
            f"threshold was fitted on {len(leaked)} of the scored volumes, e.g. {sorted(leaked)[0]!r}"
        )
    y, s = _binary(labels, scores)
    p = s >= threshold.value
    tp, fp = float((p & (y == 1)).sum()), float((p & (y == 0)).sum())
    fn, tn = float((~p & (y == 1)).sum()), float((~p & (y == 0)).sum())

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else 0.0

    f1_pos = ratio(2 * tp, 2 * tp + fp + fn)
    f1_neg = ratio(2 * tn, 2 * tn + fn + fp)
    n_pos, n_neg = tp + fn, tn + fp
    return {
        "threshold": threshold.value,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, len(y)),
        "f1_positive": f1_pos,
        "f1_weighted": ratio(f1_pos * n_pos + f1_neg * n_neg, n_pos + n_neg),
        "n_positive": n_pos,
        "n": float(len(y)),
    }
