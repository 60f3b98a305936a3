"""Micro-F1 for multi-label CT classification: the differentiable (graded) loss and the hard metric.

The soft version is the sigmoid relaxation of the confusion counts ("sigmoidF1", Bénédict et al. 2021,
"sigmoidF1: A Smooth F1 Score Surrogate Loss for Multilabel Classification"), pooled over all
``(B, C)`` entries (micro average). Targets may be graded in [0, 1] (e.g. grade / max grade): the counts
are then the fuzzy-set ones, and at 0/1 targets and saturated logits the value is sklearn's
``f1_score(average="micro")``.

All-zero targets: TP = FN = 0, so F1 = 0 (loss 1) whatever the predictions, as sklearn's default
``zero_division`` gives; its gradient is then zero, so such a batch does not push false positives down.
"""

from __future__ import annotations

import torch


def _check(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"retrieval.f1_loss: {names[0]} and {names[1]} must both be (B, C), got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def soft_micro_f1(logits: torch.Tensor, targets: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """sigmoidF1 (Bénédict et al. 2021), micro-averaged: ``2TP / (2TP + FP + FN + eps)`` with p = sigmoid.

    ``logits`` ``(B, C)``, ``targets`` ``(B, C)`` in [0, 1]; returns a scalar in [0, 1].
    """
    _check(logits, targets, ("logits", "targets"))
    y = targets.to(logits.dtype)
    if bool(((y < 0) | (y > 1)).any()):
        raise ValueError("retrieval.f1_loss: targets must lie in [0, 1] (graded labels: grade / max grade)")
    p = torch.sigmoid(logits)
    tp = (p * y).sum()
    fp = (p * (1 - y)).sum()
    fn = ((1 - p) * y).sum()
    return 2 * tp / (2 * tp + fp + fn + eps)


def micro_f1_loss(logits: torch.Tensor, targets: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """sigmoidF1 loss (Bénédict et al. 2021): ``1 - soft_micro_f1``."""
    return 1 - soft_micro_f1(logits, targets, eps=eps)


def hard_micro_f1(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Micro-averaged F1 of 0/1 ``(B, C)`` predictions; 0 when there is no positive at all (as sklearn)."""
    _check(predictions, targets, ("predictions", "targets"))
    for name, value in (("predictions", predictions), ("targets", targets)):
        if bool(((value != 0) & (value != 1)).any()):
            raise ValueError(f"retrieval.f1_loss: {name} must be 0/1 (threshold the scores first)")
    pred, y = predictions.bool(), targets.bool()
    tp = int((pred & y).sum())
    denominator = 2 * tp + int((pred & ~y).sum()) + int((~pred & y).sum())
    return 2 * tp / denominator if denominator else 0.0
