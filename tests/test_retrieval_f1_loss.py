"""Soft (sigmoidF1) and hard micro-F1 against sklearn, closed forms and gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from ctlib.studies.retrieval import f1_loss


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_soft_equals_sklearn_at_saturated_logits(seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random((12, 5)) < 0.3).astype(np.float64)
    predictions = (rng.random((12, 5)) < 0.4).astype(np.float64)
    logits = torch.tensor(np.where(predictions == 1, 30.0, -30.0))
    expected = f1_score(targets, predictions, average="micro")
    assert 0 < expected < 1
    soft = f1_loss.soft_micro_f1(logits, torch.tensor(targets)).item()
    assert soft == pytest.approx(expected, abs=1e-6)
    assert f1_loss.micro_f1_loss(logits, torch.tensor(targets)).item() == pytest.approx(
        1 - expected, abs=1e-6
    )
    assert f1_loss.hard_micro_f1(torch.tensor(predictions), torch.tensor(targets)) == pytest.approx(expected)


def test_graded_targets_closed_form():
    # p = 0.5 everywhere, y = 0.5 everywhere: TP = FP = FN = n / 4, F1 = 2TP / (2TP + FP + FN) = 1/2.
    assert f1_loss.soft_micro_f1(torch.zeros(3, 4), torch.full((3, 4), 0.5)).item() == pytest.approx(0.5)
    # One entry, p = sigmoid(1), y = 0.25.
    p, y = torch.sigmoid(torch.tensor(1.0)).item(), 0.25
    expected = 2 * p * y / (2 * p * y + p * (1 - y) + (1 - p) * y)
    got = f1_loss.soft_micro_f1(torch.ones(1, 1), torch.full((1, 1), y)).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.rand(3, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: f1_loss.soft_micro_f1(z, targets), (logits,))
    assert torch.autograd.gradcheck(lambda z: f1_loss.micro_f1_loss(z, targets.round()), (logits,))


@pytest.mark.parametrize("seed", range(5))
def test_soft_lies_in_unit_interval(seed):
    g = torch.Generator().manual_seed(seed)
    logits = 10 * torch.randn(8, 6, generator=g)
    targets = torch.rand(8, 6, generator=g)
    value = f1_loss.soft_micro_f1(logits, targets).item()
    assert 0 <= value <= 1
    assert f1_loss.soft_micro_f1(torch.full((8, 6), 30.0), torch.ones(8, 6)).item() == pytest.approx(1.0)


def test_all_zero_targets_give_zero_without_nan():
    logits = torch.randn(4, 3, requires_grad=True)
    value = f1_loss.soft_micro_f1(logits, torch.zeros(4, 3))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(logits.grad).all()
    saturated = f1_loss.soft_micro_f1(torch.full((4, 3), -30.0), torch.zeros(4, 3))
    assert saturated.item() == 0.0 and not torch.isnan(saturated)
    zeros = torch.zeros(4, 3)
    reference = f1_score(zeros.numpy(), zeros.numpy(), average="micro", zero_division=0.0)
    assert f1_loss.hard_micro_f1(zeros, zeros) == 0.0 == reference


def test_refuses_bad_inputs():
    with pytest.raises(ValueError, match=r"must both be \(B, C\)"):
        f1_loss.soft_micro_f1(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        f1_loss.soft_micro_f1(torch.zeros(2, 3), torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="predictions must be 0/1"):
        f1_loss.hard_micro_f1(torch.full((2, 3), 0.7), torch.zeros(2, 3))


def test_loss_trains_a_linear_head():
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    targets = (x[:, :4] > 0.3).float()  # 4 labels readable from the input
    head = torch.nn.Linear(10, 4)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    start = f1_loss.micro_f1_loss(head(x), targets).item()
    start_hard = f1_loss.hard_micro_f1((head(x) > 0).float(), targets)
    for _ in range(60):
        loss = f1_loss.micro_f1_loss(head(x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * start
    assert f1_loss.hard_micro_f1((head(x) > 0).float(), targets) > max(0.75, start_hard + 0.3)  # 0.41 -> 0.83
