"""Learning-rate multipliers ``step -> factor`` for ``torch.optim.lr_scheduler.LambdaLR``.

They are small dataclasses, not closures, so ``LambdaLR.state_dict()`` stores their fields (plain
numbers) and a resumed run gets the same schedule back.
"""

from __future__ import annotations

import dataclasses
import math
import time


@dataclasses.dataclass
class WarmupCosine:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``
    (Loshchilov & Hutter 2017)."""

    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass
class Constant:
    """Constant learning rate after a linear warm-up over ``warmup_steps``."""

    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0


@dataclasses.dataclass
class WarmupCosineBudget:
    """``WarmupCosine`` for a wall-clock budget: linear warm-up over ``warmup_steps``, then cosine decay whose
    progress is the larger of ``step / total_steps`` and ``elapsed_s / budget_s``, so the rate reaches
    ``min_ratio`` when either runs out (a run stopped by ``TrainConfig.max_minutes`` still ends annealed).

    ``elapsed_s`` counts the wall time between calls (one per optimizer step) and is kept in the scheduler's
    state dict, so a resumed run continues the budget; a gap over ``max_gap_s`` (a restart) is not counted.
    Unlike ``WarmupCosine`` the rate depends on the machine's speed: runs are reproducible only up to that.
    """

    warmup_steps: int
    total_steps: int
    budget_s: float
    min_ratio: float = 0.0
    max_gap_s: float = 600.0
    elapsed_s: float = 0.0
    last_call: float | None = None  # time.monotonic() of the previous call in this process

    def __call__(self, step: int) -> float:
        now = time.monotonic()
        if self.last_call is not None and 0.0 <= now - self.last_call <= self.max_gap_s:
            self.elapsed_s += now - self.last_call
        self.last_call = now
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        by_steps = (step - self.warmup_steps) / span
        by_time = self.elapsed_s / self.budget_s if self.budget_s > 0 else 0.0
        progress = min(1.0, max(by_steps, by_time))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
