"""Interleaved timing for the benchmarks: every contender runs once per round, and the order flips
each round, so load from other processes and warm caches hit all of them alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def interleaved_times(
    runners: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """One warm-up call each (its results are returned), then ``repeats`` timed rounds in seconds."""
    warm = {who: run() for who, run in runners.items()}  # imports, page cache, allocator, kernels
    times: dict[str, list[float]] = {who: [] for who in runners}
    order = list(runners)
    for _ in range(repeats):
        for who in order:
            start = time.perf_counter()
            runners[who]()
            times[who].append(time.perf_counter() - start)
        order.reverse()  # neither always runs after the other
    return warm, times
