"""Continuing a killed training run in a new run: its last checkpoint becomes this run's starting point.

``ctlib.train.loop.train`` resumes from whatever checkpoint it finds at its ``checkpoint_path`` (model,
optimizer, scheduler, EMA, RNG and data position), so continuing an earlier run is copying its
checkpoint there first. The earlier run need not have completed (that is the point).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ctlib import atomic, runs
from ctlib.errors import CTInputError
from ctlib.runs import record


def resume_from(resume_run_id: str, checkpoint_path: Path) -> Path | None:
    """Copy ``<earlier run>/checkpoints/<name>`` to ``checkpoint_path`` (same name); None for ``""``.

    Returns the copied file. A missing run or a run without that checkpoint raises ``CTInputError``.
    When ``checkpoint_path`` lies in a run folder (``<run>/checkpoints/``), that run's ``run.json``
    gets ``resumed_from``: the earlier run's id and checkpoint, shown by the index.
    """
    if not resume_run_id:
        return None
    try:
        earlier = runs.run_dir_of(resume_run_id, require_completed=False)
    except FileNotFoundError as err:
        raise CTInputError(None, f"resume run {resume_run_id!r}: {err}") from None
    source = earlier / checkpoint_path.parent.name / checkpoint_path.name
    if not source.is_file():
        raise CTInputError(source, f"run {resume_run_id!r} has no checkpoint to resume from")
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(checkpoint_path) as tmp:
        shutil.copyfile(source, tmp)
    this_run = checkpoint_path.parent.parent
    if record.has_record(this_run):  # the new run names the run it continues
        resumed = {"run_id": resume_run_id, "checkpoint": f"{source.parent.name}/{source.name}"}
        record.update_record(this_run, resumed_from=resumed)
    return checkpoint_path
