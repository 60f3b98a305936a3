"""WarmupCosineBudget: the cosine runs on the larger of step and wall-time progress, restarts are not counted,
and the counted time survives LambdaLR's state dict."""

from __future__ import annotations

import math

import pytest
import torch

from ctlib.train import lr_schedules


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(lr_schedules.time, "monotonic", fake)
    return fake


def test_time_ends_the_cosine_before_the_steps_do(clock):
    schedule = lr_schedules.WarmupCosineBudget(warmup_steps=2, total_steps=1000, budget_s=100.0)
    assert schedule(0) == pytest.approx(0.5)  # warm-up
    clock.now += 50.0  # half the budget gone after 3 steps: progress by time 0.5, by steps ~0
    assert schedule(3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    clock.now += 60.0
    assert schedule(4) == pytest.approx(0.0)  # budget spent
    plain = lr_schedules.WarmupCosine(2, 1000)
    assert plain(4) > 0.99  # what a step-only schedule does at that point


def test_steps_end_the_cosine_on_a_fast_machine(clock):
    schedule = lr_schedules.WarmupCosineBudget(warmup_steps=0, total_steps=10, budget_s=1e6)
    values = []
    for step in range(11):
        clock.now += 1.0
        values.append(schedule(step))
    assert values[5] == pytest.approx(0.5) and values[10] == pytest.approx(0.0)


def test_a_restart_gap_is_not_counted_and_the_state_dict_keeps_the_time(clock):
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = lr_schedules.WarmupCosineBudget(0, 10_000, budget_s=100.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    for _ in range(5):
        clock.now += 10.0
        optimizer.step()
        scheduler.step()
    assert schedule.elapsed_s == pytest.approx(50.0)
    state = scheduler.state_dict()
    clock.now += 5000.0  # the run was killed and resumed much later
    fresh = lr_schedules.WarmupCosineBudget(0, 10_000, budget_s=100.0)
    resumed = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters(), lr=1.0), fresh)
    resumed.load_state_dict(state)
    clock.now += 10.0
    assert fresh(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)), abs=1e-6)  # 50 s counted, not 5 060
    clock.now += 1.0
    fresh(7)
    assert fresh.elapsed_s == pytest.approx(51.0)
