"""Thread guards for the gamma index: computing it (or importing it) leaves torch's thread count alone, its
worker threads change nothing in the result, and the benchmark's pymedphys helper puts back the torch thread
count that numba's OpenMP start-up resets in the same process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from ctlib.metrics import gamma, gamma_search

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gamma_speed.py"
SPACING = (2.5, 3.5, 4.0)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """A smooth dose and a shifted, scaled copy: a few hundred evaluated voxels, some failing."""
    rng = np.random.default_rng(3)
    dose = (ndimage.gaussian_filter(rng.random((10, 12, 12)), 2.0) * 400).astype(np.float32)
    evaluated = (ndimage.shift(dose, (0.6, -0.4, 0.7), order=1, mode="nearest") * 1.03).astype(np.float32)
    return dose, evaluated


@pytest.mark.parametrize("caller_threads", [1, 2, 3])
def test_gamma_index_leaves_torch_thread_count_alone(caller_threads):
    torch.set_num_threads(caller_threads)
    dose, evaluated = _pair()
    gamma.gamma_index(dose, evaluated, SPACING)
    assert torch.get_num_threads() == caller_threads
    gamma.gamma_index(dose, evaluated, SPACING, threads=2)
    assert torch.get_num_threads() == caller_threads
    with pytest.raises(ValueError, match="max_gamma"):  # raised inside the one-thread block
        gamma.gamma_index(dose, evaluated, SPACING, max_gamma=0.5)
    assert torch.get_num_threads() == caller_threads


def test_importing_gamma_leaves_torch_thread_count_alone():
    code = ("import torch; torch.set_num_threads(1); torch.ones(2).sum()\n"
            "import ctlib.metrics.gamma, ctlib.metrics.gamma_search; print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1"]


def test_worker_threads_give_the_same_gamma_on_one_intra_op_thread_each(monkeypatch):
    dose, evaluated = _pair()
    single = gamma.gamma_index(dose, evaluated, SPACING, threads=1)
    monkeypatch.setattr(gamma_search, "MIN_VOXELS_PER_THREAD", 1)  # split even this small grid
    seen = []
    search = gamma_search._search

    def spy(*args):
        seen.append(torch.get_num_threads())
        return search(*args)

    monkeypatch.setattr(gamma_search, "_search", spy)
    for threads in (2, 3):
        seen.clear()
        split = gamma.gamma_index(dose, evaluated, SPACING, threads=threads)
        assert seen == [1] * threads  # one part per worker, each on one intra-op thread
        np.testing.assert_allclose(split.gamma, single.gamma, atol=1e-6)
        assert split.pass_rate_percent == single.pass_rate_percent
    assert 0.0 < single.pass_rate_percent < 100.0


def test_bench_pymedphys_helper_restores_the_torch_threads_numba_resets():
    """In a fresh process with numba's default threads: torch on one thread, then pymedphys.gamma through the
    bench's helper. numba's OpenMP start-up sets torch to the core count; the helper must put 1 back."""
    pytest.importorskip("pymedphys")
    code = (
        "import importlib.util, json, sys, numpy as np, torch\n"
        "spec = importlib.util.spec_from_file_location('bench_gamma_speed', sys.argv[1])\n"
        "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)\n"
        "torch.set_num_threads(1); torch.ones(2).sum()\n"
        "dose = np.random.default_rng(0).random((10, 10, 10)) * 10\n"
        "result, threads = bench.pymedphys_gamma(dose, dose * 1.02, (2.0, 3.0, 3.0))\n"
        "threads['after_return'] = torch.get_num_threads()\n"
        "threads['finite'] = int(np.isfinite(result).sum())\n"
        "print(json.dumps(threads))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, env=env,
                         check=True)
    threads = json.loads(out.stdout.strip().splitlines()[-1])
    assert threads["torch_threads_before"] == 1 and threads["finite"] > 0
    assert threads["torch_threads_now"] == 1 and threads["after_return"] == 1, threads
    if threads["torch_threads_after_pymedphys"] == 1:
        pytest.skip("numba did not reset torch's thread count on this machine: the restore was not exercised")


def test_bench_probe_reports_the_reset_and_the_restore():
    spec = importlib.util.spec_from_file_location("bench_gamma_speed", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pytest.importorskip("pymedphys")
    probe = bench.probe_torch_thread_reset()
    assert probe["torch_threads_before"] == 1 and probe["torch_threads_now"] == 1
    assert probe["numba_threads"] >= 1
