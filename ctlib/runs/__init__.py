"""Runs: one notebook execution = one run directory ``runs/<run_id>/`` (layer: below every study and shared
layer).

- ``execute``: papermill execution of a notebook or a chain into a run directory, and run lookups.
- ``context``: what a notebook asks about the run it is in (its directory, id, metrics, provenance).
- ``params``: a notebook's ``parameters`` cell, parameter sets and overrides, resolved and type-checked.
- ``record``: ``run.json``, the record of a run (``RunRecord``), written and read there only.
- ``index``: ``EXPERIMENTS_INDEX.md`` built from the run directories and the archive.
- ``archive``: light copies of the runs behind reported numbers in ``experiments/<run_id>/`` (in git).
- ``report``: where a run's outputs are, the last lines of ``ctlib run`` and ``ctlib demo``.
- ``sweep``: a grid of runs of one notebook (``ctlib sweep``): the sweep record, member statuses, the
  sweep table; ``sweep_executors`` (local processes, one GPU each) and ``sweep_slurm`` (submitit job
  arrays) run the members, ``sweep_cli`` is the command.
- ``torchrun_ids``: the run ids of one ``ctlib run`` per rank under ``torchrun`` (DDP, several GPUs or
  nodes).

Notebooks use the flat names re-exported here (``runs.current_run_dir()``, ``runs.run_dir_of(...)``).
"""

from ctlib.runs.context import (
    RUN_DIR_ENV_VAR,
    RUN_ID_ENV_VAR,
    current_run_dir,
    current_run_id,
    figure_provenance,
    new_run_id,
    save_metrics,
    short_name,
    snapshot_parameters,
)
from ctlib.runs.execute import (
    RunFailed,
    RunResult,
    latest_run,
    load_metrics,
    read_run,
    run_chain,
    run_dir_of,
    run_notebook,
    upstream_run_dir,
)
from ctlib.runs.record import RunRecord

__all__ = [
    "RUN_DIR_ENV_VAR",
    "RUN_ID_ENV_VAR",
    "RunFailed",
    "RunRecord",
    "RunResult",
    "current_run_dir",
    "current_run_id",
    "figure_provenance",
    "latest_run",
    "load_metrics",
    "new_run_id",
    "read_run",
    "run_chain",
    "run_dir_of",
    "run_notebook",
    "save_metrics",
    "short_name",
    "snapshot_parameters",
    "upstream_run_dir",
]
