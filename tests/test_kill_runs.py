"""Notebook runs killed with SIGKILL at random points (seeded): the run folder holds a whole run.json,
and the index shows the run as killed, not as running for ever (issue 11).

Each run executes a tiny notebook that sleeps, through ``ctlib run`` in its own process group, which is
killed (driver and kernel together) at a seeded random time after run.json appears. Before issue 11 the
record had no pid, host or heartbeat, so the index said ``running`` for ever.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from ctlib.runs import index as experiments_index
from ctlib.runs import record as record_io

KILLS = 3
pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups and SIGKILL are POSIX")


def _sleeping_notebook(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("seconds = 30.0  # how long to sleep")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import time\ntime.sleep(seconds)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "2026-01-01_sleep.ipynb"
    nbformat.write(nb, path)
    return path


def test_killed_runs_are_shown_as_killed(tmp_path):
    notebook = _sleeping_notebook(tmp_path)
    runs_dir = tmp_path / "runs"
    env = {**os.environ, "CTLIB_RUNS_DIR": str(runs_dir)}
    rng = random.Random(11)
    killed = []
    for _ in range(KILLS):
        before = set(runs_dir.iterdir()) if runs_dir.exists() else set()
        driver = subprocess.Popen(
            [sys.executable, "-m", "ctlib.cli", "run", str(notebook)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        new = set()
        while not new and time.monotonic() < deadline:
            time.sleep(0.05)
            new = {p for p in (set(runs_dir.iterdir()) if runs_dir.exists() else set()) - before
                   if (p / record_io.RECORD_FILE).is_file()}
        assert new, "the run never wrote its run.json"
        time.sleep(rng.uniform(0.0, 3.0))  # before, while or after the kernel starts
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        (run_dir,) = new
        killed.append(run_dir.name)
        record = json.loads((run_dir / record_io.RECORD_FILE).read_text())  # whole JSON, never half
        assert record["status"] == "running" and record["pid"] == driver.pid
        assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporary left
    entries = {e["run_id"]: e for e in experiments_index.build_index(runs_dir, tmp_path / "no_archive")}
    assert {run_id: entries[run_id]["status"] for run_id in killed} == dict.fromkeys(killed, "killed")
    text = experiments_index.write_index(tmp_path / "INDEX.md", runs_dir, tmp_path / "no_archive").read_text()
    assert f"0 running, {KILLS} killed" in text
