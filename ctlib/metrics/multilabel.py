"""Multi-label classification F1 over ``(N, C)`` 0/1 label and prediction arrays: micro, macro, weighted and
per-class, as sklearn's ``f1_score`` with ``zero_division=0``.

F1 of a class is ``2 TP / (2 TP + FP + FN)`` (van Rijsbergen's F-measure with beta = 1, written without
precision and recall, so a class with TP = 0 but some FP or FN scores 0 without a division by zero).
Zero-division convention: a class that is neither present nor predicted (``2 TP + FP + FN = 0``) scores 0, and
it still counts in the macro mean (as sklearn's ``zero_division=0``; its default ``"warn"`` gives the same
numbers with a warning). Weighted F1 weights classes by support (positive labels), so such a class has weight
0 there; with no positive label at all the weighted F1 is 0. Micro F1 pools TP, FP and FN over all classes.
"""

from __future__ import annotations

import numpy as np


def _binary_matrix(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be (samples, classes), got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1 (threshold scores first)")
    return array.astype(bool)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def f1_scores(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float | np.ndarray]:
    """Multi-label F1 (micro, macro, support-weighted, per class) of 0/1 ``(N, C)`` predictions.

    Returns ``{"micro": float, "macro": float, "weighted": float, "per_class": (C,) array,
    "support": (C,) int array}``; zero-division convention in the module docstring.
    """
    y = _binary_matrix("labels", labels)
    p = _binary_matrix("predictions", predictions)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ")
    tp = (y & p).sum(0)
    fp = (~y & p).sum(0)
    fn = (y & ~p).sum(0)
    per_class = _f1(tp, fp, fn)
    support = y.sum(0)
    weighted = float((per_class * support).sum() / support.sum()) if support.sum() > 0 else 0.0
    return {
        "micro": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro": float(per_class.mean()) if per_class.size else 0.0,
        "weighted": weighted,
        "per_class": per_class,
        "support": support,
    }
