"""Learning-rate multipliers ``step -> factor`` for ``torch.optim.lr_scheduler.LambdaLR``.

They are small dataclasses, not closures, so ``LambdaLR.state_dict()`` stores their fields (plain
numbers) and a resumed run gets the same schedule back.
"""

from __future__ import annotations

import dataclasses
import math


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
