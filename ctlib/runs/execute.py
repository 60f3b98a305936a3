"""Run directories: execute a notebook with papermill into ``runs/<run_id>/`` and record the run.

A run directory holds the executed notebook, ``params.json`` (every resolved parameter, the set and
the overrides), ``run.json`` (status, error, git, versions, device, times) and whatever the notebook
writes: ``metrics.json`` through :func:`save_metrics`, checkpoints and figures under
:func:`current_run_dir`. A failed run keeps its executed notebook with the error and is recorded as
failed; a run directory is never overwritten. Downstream notebooks take an upstream ``<step>_run_id``
parameter and find its folder with :func:`run_dir_of`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ctlib import atomic, paths, provenance
from ctlib.runs.context import RUN_DIR_ENV_VAR, RUN_ID_ENV_VAR, current_run_dir, new_run_id, short_name
from ctlib.runs.params import (
    RUN_ID_PARAMETER,
    notebook_defaults,
    notebook_stem,
    resolve_notebook_path,
    resolve_parameters,
)
from ctlib.runs.record import HEARTBEAT_S, RECORD_FILE, RunRecord, Status, locked, update_record
from ctlib.runs.report import display_path

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunFailed(RuntimeError):
    """A notebook run failed; ``.result`` says where its executed notebook and record are."""

    def __init__(self, result: RunResult):
        self.result = result
        super().__init__(
            f"run {result.run_id} failed: {result.error}\n  executed notebook and run.json: {result.run_dir}"
        )


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Outcome of one notebook run."""

    run_id: str
    run_dir: Path
    status: Status
    duration_s: float
    error: str | None = None


# --------------------------------------------------------------------------------- execution
def run_notebook(
    notebook: str | Path,
    parameter_set: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    kernel_name: str | None = None,
    log_output: bool = False,
    *,
    params_root: Path | None = None,
    raise_on_failure: bool = True,
    execution_timeout_s: float | None = None,
) -> RunResult:
    """Execute a notebook with papermill into a new ``runs/<run_id>/`` and record the run.

    ``notebook`` is relative to the repository root or absolute; it runs with its own folder as
    working directory. Parameters are the notebook's defaults, then ``parameter_set`` (a YAML file
    in ``params_root/<notebook stem>/``, default ``<repo>/papermill_params``), then ``overrides``.
    The kernel sees ``$CTLIB_RUN_DIR`` / ``$CTLIB_RUN_ID``, and a notebook that declares a ``run_id``
    parameter receives its id. ``kernel_name=None`` runs this interpreter (``sys.executable``) as
    kernel whatever kernelspecs are installed. A failure raises :class:`RunFailed` (or, with
    ``raise_on_failure=False``, returns a failed result) after recording it.
    """
    import papermill

    path = resolve_notebook_path(notebook)
    stem = notebook_stem(path)
    resolved = resolve_parameters(path, parameter_set, overrides, params_root=params_root)
    run_id = run_id or new_run_id(stem)
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r}: expected letters, digits, '.', '_' or '-' (no separators)")
    run_dir = paths.runs_dir() / run_id
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()  # fails if it exists: an earlier run is never overwritten
    except FileExistsError:
        raise FileExistsError(f"run directory {run_dir} already exists: choose another run id") from None

    values, injected = dict(resolved.values), resolved.injected()
    if RUN_ID_PARAMETER in resolved.defaults:
        values[RUN_ID_PARAMETER] = injected[RUN_ID_PARAMETER] = run_id
    atomic.write_json(
        run_dir / "params.json",
        {
            "notebook": display_path(path),
            "parameter_set": parameter_set,
            "parameter_set_file": display_path(resolved.set_file) if resolved.set_file else None,
            "overrides": resolved.overrides,
            "parameters": values,
            "sources": {
                **resolved.sources,
                **({RUN_ID_PARAMETER: "run"} if RUN_ID_PARAMETER in values else {}),
            },
        },
    )
    output = run_dir / path.name
    record = RunRecord.started(
        run_id,
        notebook=display_path(path),
        notebook_stem=stem,
        output_notebook=output.name,
        parameter_set=parameter_set,
        kernel=kernel_name or f"{sys.executable} (ipykernel)",
    )
    t0 = time.perf_counter()
    record.to_file(run_dir)

    error: BaseException | None = None
    try:
        with _kernel_environment(run_dir, run_id), _Heartbeat(run_dir):
            papermill.execute_notebook(
                str(path),
                str(output),
                parameters=injected,
                kernel_name=kernel_name or "python3",
                log_output=log_output,
                progress_bar=False,
                cwd=str(path.parent),
                execution_timeout=execution_timeout_s,
                **(
                    {}
                    if kernel_name
                    else {"language": "python", "kernel_manager_class": _this_interpreter_kernel_manager()}
                ),
            )
    except BaseException as exc:  # KeyboardInterrupt too: record it, then re-raise below
        error = exc
    if error is not None and not output.exists():  # failed before papermill wrote anything
        with atomic.atomic_path(output) as tmp:
            shutil.copyfile(path, tmp)
    duration_s = round(time.perf_counter() - t0, 3)
    with locked(run_dir):  # keep what the kernel added to run.json meanwhile (e.g. resumed_from)
        on_disk = RunRecord.from_file(run_dir)
        record.resumed_from = on_disk.resumed_from or record.resumed_from
        record.extra = {**on_disk.extra, **record.extra}
        record.heartbeat_utc = on_disk.heartbeat_utc
        record.finish(duration_s, error)
        record.to_file(run_dir)

    result = RunResult(run_id, run_dir, record.status, duration_s, record.error)
    if error is not None and not isinstance(error, Exception):
        raise error
    if error is not None and raise_on_failure:
        raise RunFailed(result) from error
    return result


class _Heartbeat:
    """Refresh ``heartbeat_utc`` in ``run.json`` every ``HEARTBEAT_S`` from a daemon thread while the
    notebook runs, so that ``RunRecord.effective_status`` can tell a killed run from a running one."""

    def __init__(self, run_dir: Path, interval_s: float | None = None) -> None:
        self.run_dir = run_dir
        self.interval_s = HEARTBEAT_S if interval_s is None else interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {run_dir.name}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                update_record(self.run_dir, heartbeat_utc=provenance.iso(provenance.utc_now()))
            except (OSError, ValueError):  # a record being replaced or a full disk: try again next beat
                continue

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def _kernel_environment(run_dir: Path, run_id: str) -> Iterator[None]:
    """Environment the kernel inherits: its run directory and id, and ctlib importable."""
    root = str(paths.repo_root())
    python_path = os.environ.get("PYTHONPATH")
    new = {
        RUN_DIR_ENV_VAR: str(run_dir),
        RUN_ID_ENV_VAR: run_id,
        paths.RUNS_ENV_VAR: str(paths.runs_dir()),
        "PYTHONPATH": os.pathsep.join([root, python_path]) if python_path else root,
    }
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _this_interpreter_kernel_manager() -> type:
    """A kernel manager that always starts ipykernel on ``sys.executable``.

    A user-level ``python3`` kernelspec (common with conda) may point at another environment,
    which would run the notebook without this environment's packages.
    """
    from ipykernel import kernelspec as ipykernel_spec
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    class ThisInterpreterKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self) -> KernelSpec:
            if self._kernel_spec is None:
                self._kernel_spec = KernelSpec(
                    resource_dir=ipykernel_spec.RESOURCES, **ipykernel_spec.get_kernel_dict()
                )
            return self._kernel_spec

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            # The kernel's own log (e.g. ipykernel's warning about TCP without encryption) goes to
            # the run directory, not into the output of a notebook that started this run.
            run_dir = os.environ.get(RUN_DIR_ENV_VAR)
            if run_dir and "stderr" not in kw:
                kw["stderr"] = open(Path(run_dir) / "kernel.log", "ab")  # the kernel process owns it
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return ThisInterpreterKernelManager


# ------------------------------------------------------------------------------------ chains
ChainStep = str | Path | tuple


def run_chain(
    steps: Sequence[ChainStep],
    *,
    params_root: Path | None = None,
    kernel_name: str | None = None,
    log_output: bool = False,
) -> list[RunResult]:
    """Run notebooks in order, wiring each run id into the notebooks after it.

    A step is a notebook path or ``(notebook, parameter_set, overrides)``. A later notebook that
    declares ``<short name>_run_id`` (e.g. ``preprocess_run_id``) receives the id of the earlier step
    with that short name, and one that declares ``upstream_run_id`` receives the previous step's
    id; explicit overrides win. The first failure raises :class:`RunFailed`.
    """
    results: list[RunResult] = []
    done: dict[str, str] = {}
    for step in steps:
        notebook, parameter_set, overrides = (
            (*step, None, None)[:3] if isinstance(step, tuple) else (step, None, None)
        )
        declared = notebook_defaults(notebook)
        wired = {f"{name}_run_id": rid for name, rid in done.items() if f"{name}_run_id" in declared}
        if results and "upstream_run_id" in declared:
            wired["upstream_run_id"] = results[-1].run_id
        result = run_notebook(
            notebook,
            parameter_set,
            {**wired, **(overrides or {})},
            kernel_name=kernel_name,
            log_output=log_output,
            params_root=params_root,
        )
        results.append(result)
        done[short_name(notebook_stem(notebook))] = result.run_id
    return results


# ---------------------------------------------------------------------------- finding runs
def read_run(run_id: str) -> RunRecord:
    """The record (``run.json``) of a run, or ``FileNotFoundError`` naming the runs folder."""
    file = paths.runs_dir() / run_id / RECORD_FILE
    if not file.is_file():
        recent = [p.parent.name for p in sorted(paths.runs_dir().glob(f"*/{RECORD_FILE}"), reverse=True)[:5]]
        raise FileNotFoundError(f"run {run_id!r} not found: no {file}; most recent runs: {recent or 'none'}")
    return RunRecord.from_file(file)


def run_dir_of(run_id: str, *, require_completed: bool = True) -> Path:
    """Folder of an earlier run, refusing one that is missing or (by default) did not complete."""
    record = read_run(run_id)
    if require_completed and record.status != "completed":
        raise RuntimeError(
            f"run {run_id!r} has status {record.effective_status()!r}, expected 'completed'"
            + (f": {record.error}" if record.error else "")
        )
    return paths.runs_dir() / run_id


def latest_run(
    notebook_stem: str, status: str | None = "completed", where: dict[str, Any] | None = None
) -> str | None:
    """Id of the most recently started run of a notebook (stem or short name); ``status=None`` for any;
    ``where``: only runs whose resolved parameters (``params.json``) have these values."""
    candidates = []
    for file in paths.runs_dir().glob(f"*/{RECORD_FILE}"):
        try:
            record = RunRecord.from_file(file)
            stem = record.notebook_stem or ""
            if notebook_stem not in (stem, short_name(stem)) or status and record.status != status:
                continue
            if where:
                values = json.loads((file.parent / "params.json").read_text()).get("parameters", {})
                if any(values.get(k) != v for k, v in where.items()):
                    continue
        except (OSError, ValueError, TypeError):
            continue
        candidates.append((record.started_utc or "", file.parent.name))
    return max(candidates)[1] if candidates else None


# -------------------------------------------------------------------- inside the notebook
def load_metrics(run_id: str) -> dict[str, Any]:
    """The ``metrics.json`` of a run (empty if it saved none); ``FileNotFoundError`` if no such run."""
    run_dir = paths.runs_dir() / run_id
    if not run_dir.is_dir():
        read_run(run_id)  # raises with the list of recent runs
    file = run_dir / "metrics.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def upstream_run_dir(notebook: str | Path, run_id: str = "") -> Path:
    """Run directory of an upstream step, recorded in this run's ``upstream.json``.

    ``run_id`` names it; with ``""`` it is the newest completed run of ``notebook``, or, when there is
    none, a fresh run of ``notebook`` with its default parameters (so every notebook runs on its own).
    """
    stem = notebook_stem(notebook)
    if not run_id:
        run_id = latest_run(stem) or run_notebook(notebook).run_id
    run_dir = run_dir_of(run_id)
    record_file = current_run_dir() / "upstream.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    atomic.write_json(record_file, {**record, stem: run_id})
    return run_dir
