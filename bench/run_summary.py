"""What a benchmark record states about a run it summarizes: its id, parameter set, duration, device,
commit, parameters and metrics (read from the run folder's run.json, params.json and metrics.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctlib.runs.record import RunRecord


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object at ``path``, or ``{}`` when the file does not exist."""
    return json.loads(path.read_text()) if path.is_file() else {}


def run_summary(run_dir: Path) -> dict[str, Any]:
    """``{run_id, parameter_set, duration_s, device, git, parameters, metrics}`` of one run folder."""
    record = RunRecord.from_file(run_dir)
    return {
        "run_id": run_dir.name,
        "parameter_set": record.parameter_set,
        "duration_s": record.duration_s,
        "device": record.device,
        "git": record.git.get("commit"),
        "parameters": read_json(run_dir / "params.json").get("parameters", {}),
        "metrics": read_json(run_dir / "metrics.json"),
    }
