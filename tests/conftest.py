"""Shared fixtures. Real-data tests use ``data_root``: in CI (CI=true) a missing
$CTLIB_DATA_DIR fails the test; on a researcher's laptop without the data it skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctlib import paths


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real-data folder ($CTLIB_DATA_DIR)."""
    root = paths.data_dir(required=False)
    if root is None:
        message = f"${paths.DATA_ENV_VAR} is not set or missing: real-data tests need ../shared/data"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: on a shared 2-core CPU, threads waiting on each other made the
    many small operations of the dose and gamma tests up to 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_runs_dir(tmp_path_factory, monkeypatch):
    """Every test writes run directories into its own temporary folder, never into runs/."""
    monkeypatch.setenv(paths.RUNS_ENV_VAR, str(tmp_path_factory.mktemp("runs")))
