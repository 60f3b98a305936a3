"""Parameter sweeps: a grid of runs of one notebook, each a normal recorded run (``ctlib sweep``).

A sweep expands a grid (parameter name -> values; ``seeds`` N adds ``seed`` = 0 .. N-1) into members, the
Cartesian product in the order given, and gives every member its run id before anything starts. Its record,
``runs/sweeps/<sweep_id>/sweep.json``, holds the notebook, the parameter set, the grid, the base overrides
and per member the parameters and the run ids of its attempts (a member rerun by ``--resume`` gets a new
run: a run directory is never overwritten). A member's status is always read from its latest run's own
record (``run.json``), so the sweep record cannot go stale: ``completed``, ``failed``, ``running``,
``killed`` or ``missing`` (no run folder yet: not started, or lost with its node).

The sweep table (``sweep_table.csv`` beside the record, :func:`write_table`; :func:`read_table` for
notebooks) has one row per member: index, run id, status, the grid values and the scalar metrics of the
run's ``metrics.json``. ``ctlib index`` lists the sweeps. The executors are in ``sweep_executors``.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ctlib import atomic, paths, provenance
from ctlib.runs import archive
from ctlib.runs import record as run_record
from ctlib.runs.context import new_run_id, short_name
from ctlib.runs.params import (
    notebook_defaults,
    notebook_stem,
    resolve_notebook_path,
    resolve_parameters,
    yaml_float,
)
from ctlib.runs.report import display_path

SWEEPS_FOLDER = "sweeps"
SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep_table.csv"
SEED_PARAMETER = "seed"
MISSING = "missing"
RERUN_STATUSES = ("failed", "killed", MISSING, "unreadable", run_record.LEGACY_RUNNING)
_SWEEP_ID = re.compile(r"^\d{8}-\d{6}_sweep_[A-Za-z0-9_-]+$")


def sweeps_dir(runs_dir: Path | None = None) -> Path:
    """``<runs>/sweeps``: one folder per sweep (``ctlib index`` skips it when listing runs)."""
    return Path(runs_dir or paths.runs_dir()) / SWEEPS_FOLDER


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """``"loss=mae,dvh"`` -> ``("loss", ["mae", "dvh"])``: the values are read as one YAML flow list, so
    ``"steps_list=[5],[10]"`` gives two lists and ``"lr=1e-4,3e-4"`` two floats."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise ValueError(f"--grid {text!r}: expected name=value1,value2,...")
    try:
        values = yaml.safe_load(f"[{raw}]")
    except yaml.YAMLError as err:
        raise ValueError(
            f"--grid {text!r}: the values are not a YAML list ({' '.join(str(err).split())})"
        ) from None
    return key.strip(), [yaml_float(v) if isinstance(v, str) else v for v in values]


def expand_grid(grid: Mapping[str, Sequence[Any]], seeds: int = 0) -> list[dict[str, Any]]:
    """The members' parameters: the Cartesian product of ``grid`` (first name varies slowest), each with
    ``seed`` = 0 .. ``seeds`` - 1 when ``seeds`` > 0."""
    grid = {k: list(v) for k, v in grid.items()}
    if seeds:
        if SEED_PARAMETER in grid:
            raise ValueError(f"the grid names {SEED_PARAMETER!r} and --seeds is given: use one of them")
        grid[SEED_PARAMETER] = list(range(int(seeds)))
    empty = [k for k, v in grid.items() if not v]
    if not grid or empty:
        raise ValueError(f"a sweep needs at least one value per grid parameter (empty: {empty or 'no grid'})")
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


@dataclasses.dataclass
class Sweep:
    """A sweep record (``sweep.json``) and where it lives."""

    folder: Path
    data: dict[str, Any]

    @property
    def sweep_id(self) -> str:
        return str(self.data["sweep_id"])

    @property
    def members(self) -> list[dict[str, Any]]:
        return self.data["members"]

    def run_id(self, member: Mapping[str, Any]) -> str:
        """The member's latest attempt."""
        return str(member["run_ids"][-1])

    def run_folder(self, member: Mapping[str, Any]) -> Path | None:
        """The latest attempt's folder: in the runs folder, else in the archive; None when neither has it."""
        for root in (self.folder.parent.parent, archive.archive_dir()):
            if run_record.has_record(root / self.run_id(member)):
                return root / self.run_id(member)
        return None

    def status(self, member: Mapping[str, Any]) -> str:
        """From the latest attempt's ``run.json``; ``missing`` without one."""
        folder = self.run_folder(member)
        if folder is None:
            return MISSING
        try:
            return run_record.read_record(folder).effective_status()
        except (OSError, ValueError, TypeError):
            return "unreadable"

    def statuses(self) -> list[str]:
        return [self.status(m) for m in self.members]

    def save(self) -> Path:
        return atomic.write_json(self.folder / SWEEP_FILE, self.data)

    def new_attempts(self, indices: Sequence[int]) -> None:
        """A fresh run id for each member named (their earlier runs stay as they are); saved."""
        stem = notebook_stem(self.data["notebook"])
        taken = {rid for m in self.members for rid in m["run_ids"]}
        for i in indices:
            self.members[i]["run_ids"].append(_fresh_run_id(stem, taken))
        self.save()


def _fresh_run_id(stem: str, taken: set[str]) -> str:
    while True:
        run_id = new_run_id(stem)
        if run_id not in taken:
            taken.add(run_id)
            return run_id


def create_sweep(
    notebook: str | Path,
    parameter_set: str | None,
    grid: Mapping[str, Sequence[Any]],
    *,
    seeds: int = 0,
    overrides: Mapping[str, Any] | None = None,
    params_root: Path | None = None,
) -> Sweep:
    """Expand the grid, check every member's parameters as ``ctlib run`` would (nothing starts when one is
    refused), give each member a run id and write the sweep record."""
    path = resolve_notebook_path(notebook)
    members = expand_grid(grid, seeds)
    for params in members:
        resolve_parameters(path, parameter_set, {**(overrides or {}), **params}, params_root=params_root)
    stem = notebook_stem(path)
    folder = sweeps_dir()
    folder.mkdir(parents=True, exist_ok=True)
    sweep_id = new_run_id(f"sweep_{short_name(stem)}")
    (folder / sweep_id).mkdir()
    taken: set[str] = set()
    data = {
        "sweep_id": sweep_id,
        "notebook": display_path(path),
        "parameter_set": parameter_set,
        "grid": {k: list(v) for k, v in grid.items()},
        "seeds": int(seeds),
        "overrides": dict(overrides or {}),
        "created_utc": provenance.iso(provenance.utc_now()),
        "declares_resume_run_id": "resume_run_id" in notebook_defaults(path),
        "members": [
            {"index": i, "params": p, "run_ids": [_fresh_run_id(stem, taken)]} for i, p in enumerate(members)
        ],
        "executions": [],
    }
    sweep = Sweep(folder / sweep_id, data)
    sweep.save()
    return sweep


def _sweep_roots(runs_dir: Path | None) -> tuple[Path, Path]:
    """Where sweep records are: the runs folder's ``sweeps/``, then the archive's."""
    return sweeps_dir(runs_dir), archive.archive_dir() / SWEEPS_FOLDER


def load_sweep(sweep_id: str, runs_dir: Path | None = None) -> Sweep:
    """The sweep record of ``runs/sweeps/<sweep_id>/`` (else of the archive), or a one-line error."""
    for root in _sweep_roots(runs_dir):
        file = root / sweep_id / SWEEP_FILE
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except ValueError as err:
                raise ValueError(f"{file}: not a readable sweep record ({err})") from None
            return Sweep(file.parent, data)
    known = sorted(p.name for p in sweeps_dir(runs_dir).glob("*") if (p / SWEEP_FILE).is_file())[-5:]
    raise FileNotFoundError(
        f"sweep {sweep_id!r} not found in {sweeps_dir(runs_dir)}; most recent sweeps: {known or 'none'}"
    )


def list_sweeps(runs_dir: Path | None = None) -> list[Sweep]:
    """Every readable sweep of the runs folder and the archive (the runs folder's first), newest first."""
    found: dict[str, Sweep] = {}
    for root in _sweep_roots(runs_dir):
        for file in sorted(root.glob(f"*/{SWEEP_FILE}")) if root.is_dir() else []:
            try:
                found.setdefault(file.parent.name, Sweep(file.parent, json.loads(file.read_text())))
            except (OSError, ValueError):
                continue
    return sorted(found.values(), key=lambda s: s.sweep_id, reverse=True)


# ------------------------------------------------------------------------------------------ the table
def table_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per member: index, run id, attempts, status, the grid values, the scalar metrics."""
    rows = []
    for member in sweep.members:
        folder = sweep.run_folder(member)
        metrics = run_record.read_json_object(folder / "metrics.json") if folder else {}
        scalars = {
            k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        }
        params = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in member["params"].items()}
        rows.append(
            {
                "member": member["index"],
                "run_id": sweep.run_id(member),
                "attempts": len(member["run_ids"]),
                "status": sweep.status(member),
                **params,
                **scalars,
            }
        )
    return rows


def write_table(sweep: Sweep, rows: list[dict[str, Any]] | None = None) -> Path:
    """``sweep_table.csv`` beside the record (columns: member, run_id, attempts, status, grid, metrics), of
    ``rows`` when given (``table_rows``), else read now."""
    rows = table_rows(sweep) if rows is None else rows
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic.atomic_path(sweep.folder / TABLE_FILE) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return sweep.folder / TABLE_FILE


def read_table(sweep_id: str, *, completed_only: bool = False) -> Any:
    """The sweep table as a pandas DataFrame, refreshed from the members' records first (for notebooks that
    summarize a sweep); ``completed_only`` keeps the completed members."""
    import pandas as pd

    sweep = load_sweep(sweep_id)
    rows = table_rows(sweep)
    if sweep.folder.parent.parent == paths.runs_dir():
        write_table(sweep, rows)
    table = pd.DataFrame(rows)
    return table[table["status"] == "completed"].reset_index(drop=True) if completed_only else table


def completed_run_ids(sweep_id: str) -> list[str]:
    """The run ids of the completed members, in member order (e.g. the training runs a notebook scores)."""
    sweep = load_sweep(sweep_id)
    return [sweep.run_id(m) for m in sweep.members if sweep.status(m) == "completed"]


def summary(sweep: Sweep) -> dict[str, Any]:
    """Counts per status and where the table is: what ``ctlib sweep`` prints and the index shows."""
    statuses = sweep.statuses()
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return {
        "sweep_id": sweep.sweep_id,
        "notebook": sweep.data["notebook"],
        "parameter_set": sweep.data.get("parameter_set"),
        "grid": sweep.data["grid"],
        "seeds": sweep.data.get("seeds", 0),
        "members": len(statuses),
        "status": counts,
        "table": str(sweep.folder / TABLE_FILE),
        "record": str(sweep.folder / SWEEP_FILE),
    }


def is_sweep_id(text: str) -> bool:
    """Whether ``text`` names a sweep: the form ``<UTC time>_sweep_<notebook>_<hex>`` and a record in the runs
    folder (a run of a notebook whose name starts with ``sweep`` has that form too)."""
    return bool(_SWEEP_ID.match(text)) and (sweeps_dir() / text / SWEEP_FILE).is_file()


def archive_sweep(
    sweep_id: str, *, force: bool = False, max_file_bytes: int = archive.MAX_FILE_BYTES
) -> Path:
    """``ctlib archive SWEEP_ID``: its completed members' runs (``archive.archive_run``; members already
    archived are kept as they are unless ``force``), then its record and table in
    ``experiments/sweeps/<id>/``. Refused (``ArchiveRefused``, one line) while a member has not
    completed: resume it first."""
    sweep = load_sweep(sweep_id)
    pending = [f"{m['index']} ({sweep.status(m)})" for m in sweep.members if sweep.status(m) != "completed"]
    if pending:
        raise archive.ArchiveRefused(
            f"sweep {sweep_id}: members {', '.join(pending)} have not completed; "
            f"`ctlib sweep --resume {sweep_id}` first"
        )
    for member in sweep.members:
        run_id = sweep.run_id(member)
        if force or not (archive.archive_dir() / run_id).exists():
            archive.archive_run(run_id, force=force, max_file_bytes=max_file_bytes)
    write_table(sweep)
    target = archive.archive_dir() / SWEEPS_FOLDER / sweep_id
    if target.exists() and not force:
        raise archive.ArchiveRefused(f"{target} already exists: pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(target) as tmp:
        tmp.mkdir()
        for name in (SWEEP_FILE, TABLE_FILE):
            (tmp / name).write_bytes((sweep.folder / name).read_bytes())
    return target
