"""What a notebook calls from inside its run: its run directory, parameters, metrics, figure provenance.

Under ``ctlib run`` (papermill) the run directory comes from ``$CTLIB_RUN_DIR``; a notebook run by
hand in JupyterLab (or by nbval) gets a fresh interactive run directory of its own.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from ctlib import atomic, paths, provenance
from ctlib.runs.record import RunRecord, has_record

RUN_DIR_ENV_VAR = "CTLIB_RUN_DIR"
RUN_ID_ENV_VAR = "CTLIB_RUN_ID"


def short_name(stem: str) -> str:
    """``2026-11-23_01_preprocess`` -> ``preprocess``: the notebook stem without date and order number."""
    name = re.sub(r"^\d{4}-?\d{2}-?\d{2}[_-]", "", stem)
    name = re.sub(r"^\d+[_-]", "", name)
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")
    return name[:32] or "notebook"


def new_run_id(notebook_stem: str) -> str:
    """``20261123-141503_preprocess_3f9a``: UTC time, short notebook name, 4 random hex digits."""
    stamp = provenance.utc_now().strftime("%Y%m%d-%H%M%S")
    while True:
        run_id = f"{stamp}_{short_name(notebook_stem)}_{secrets.token_hex(2)}"
        if not (paths.runs_dir() / run_id).exists():
            return run_id


def current_run_dir() -> Path:
    """This notebook's run directory: ``$CTLIB_RUN_DIR`` under papermill, else a new interactive one.

    Run by hand in JupyterLab, the first call creates ``runs/<id>_interactive`` with a ``run.json``
    of status ``interactive``; later calls in the same kernel return the same folder.
    """
    env = os.environ.get(RUN_DIR_ENV_VAR)
    if env:
        path = Path(env)
        path.mkdir(parents=True, exist_ok=True)
        return path
    run_id = new_run_id("interactive")
    path = paths.runs_dir() / run_id
    path.mkdir(parents=True)
    RunRecord.started(run_id, notebook=None, notebook_stem="interactive", status="interactive").to_file(path)
    os.environ[RUN_DIR_ENV_VAR], os.environ[RUN_ID_ENV_VAR] = str(path), run_id
    return path


def current_run_id() -> str:
    """Id of this notebook's run (see :func:`current_run_dir`)."""
    return current_run_dir().name


def save_metrics(metrics: dict[str, Any], run_dir: Path | None = None) -> Path:
    """Merge ``metrics`` into ``<run_dir>/metrics.json`` atomically (default: the current run)."""
    file = Path(run_dir or current_run_dir()) / "metrics.json"
    merged = json.loads(file.read_text()) if file.is_file() else {}
    merged.update(metrics)
    atomic.write_json(file, merged)
    return file


_LITERAL_TYPES = (bool, int, float, str, list, tuple, dict, type(None))
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}


def snapshot_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The notebook's parameters (plain literals in ``namespace``, e.g. ``globals()`` right after the
    parameters cell); written to ``params.json`` of an interactive run, which papermill runs already have."""
    params = {
        name: value for name, value in namespace.items()
        if not name.startswith("_") and name not in _IPYTHON_NAMES and isinstance(value, _LITERAL_TYPES)
    }
    file = current_run_dir() / "params.json"
    if not file.is_file():
        atomic.write_json(file, {"parameters": params, "parameter_set": None, "overrides": {}})
    return params


def figure_provenance(parameters: dict[str, Any]) -> dict[str, Any]:
    """The sidecar of a figure saved by this run: run id, notebook, git commit and the parameters."""
    run_dir = current_run_dir()
    record = RunRecord.from_file(run_dir) if has_record(run_dir) else None
    git = (record.git if record else None) or provenance.git_state()
    return {
        "run_id": current_run_id(),
        "notebook": record.notebook if record else None,
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "parameters": parameters,
    }


CHECKPOINT_FOLDER = "checkpoints"  # = ctlib.checkpoint.CHECKPOINT_FOLDER (that module imports torch)


def has_checkpoint(run_id: str) -> bool:
    """Whether a run left a checkpoint (``<run>/checkpoints/*``) that a later run can resume from."""
    folder = paths.runs_dir() / run_id / CHECKPOINT_FOLDER
    return folder.is_dir() and any(folder.iterdir())
