"""Running a sweep's members, with existing engines only: processes on this machine, or a SLURM job array.

- ``local``: each member is a ``ctlib run`` process (its own papermill kernel); at most ``max_parallel`` run
  at a time (a thread pool waits on them), and with GPUs each member holds one (``CUDA_VISIBLE_DEVICES``) from
  a pool until it ends. A member's output goes to ``runs/sweeps/<sweep_id>/logs/<run_id>.log``.
- ``slurm``: submitit (``AutoExecutor``) submits the members as one job array (per-job partition, GPUs, time,
  CPUs and memory; ``slurm_array_parallelism`` = ``max_parallel``); submitit's logs go to
  ``runs/sweeps/<sweep_id>/slurm/<job id>/`` and each run folder gets ``slurm.json`` naming its job and log
  files. A preempted or timed-out job is requeued by submitit (``Checkpointable``) as a new attempt of its
  member, which resumes the interrupted run's checkpoint when the notebook declares ``resume_run_id``
  (``ctlib.train.resume``). ``cluster="local"`` (submitit's local executor) or ``"debug"`` runs the same
  path without a cluster: the tests use it.

A member that fails is recorded as failed by its own run; the others go on. The sweep table is rewritten
after every member that ends.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ctlib import paths, provenance
from ctlib.runs import record as run_record
from ctlib.runs import sweep as sweeps
from ctlib.runs.context import has_checkpoint

EXECUTORS = ("local", "slurm")


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """Per-job resources of the slurm executor (submitit's generic names, ``slurm_partition`` prefixed)."""

    partition: str | None = None
    gpus_per_run: int = 1
    time_min: int = 60
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    cluster: str | None = None  # None: SLURM when `srun` is there, else submitit's local executor
    wait: bool = True


def member_overrides(sweep: sweeps.Sweep, member: dict[str, Any]) -> dict[str, Any]:
    """The base overrides, the member's grid values, and for a later attempt ``resume_run_id`` = the attempt
    before when that run left a checkpoint and the notebook declares the parameter."""
    values = {**sweep.data.get("overrides", {}), **member["params"]}
    if len(member["run_ids"]) > 1 and sweep.data.get("declares_resume_run_id"):
        earlier = member["run_ids"][-2]
        if has_checkpoint(earlier):
            values["resume_run_id"] = earlier
    return values


def member_command(sweep: sweeps.Sweep, member: dict[str, Any]) -> list[str]:
    """The ``ctlib run`` command line of a member's latest attempt (values as JSON, which YAML reads back)."""
    command = [sys.executable, "-m", "ctlib.cli", "run", sweep.data["notebook"]]
    if sweep.data.get("parameter_set"):
        command += ["-p", sweep.data["parameter_set"]]
    for key, value in member_overrides(sweep, member).items():
        command += ["-P", f"{key}={json.dumps(value)}"]
    return command + ["--run-id", sweep.run_id(member)]


def run_members(
    sweep: sweeps.Sweep,
    indices: Sequence[int],
    *,
    executor: str = "local",
    max_parallel: int = 1,
    gpus: Sequence[str] = (),
    slurm: SlurmOptions | None = None,
) -> list[str]:
    """Run the members ``indices`` (their latest attempts); returns their statuses (``submitted`` for slurm
    jobs not waited for) and rewrites the sweep table."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r}: expected one of {list(EXECUTORS)}")
    if max_parallel < 1:
        raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
    members = [sweep.members[i] for i in indices]
    execution = {
        "executor": executor,
        "members": list(indices),
        "started_utc": provenance.iso(provenance.utc_now()),
        "max_parallel": max_parallel,
    }
    if executor == "local":
        execution["gpus"] = list(gpus)
        _record_execution(sweep, execution)
        _run_local(sweep, members, max_parallel, list(gpus))
    else:
        from ctlib.runs import sweep_slurm

        options = slurm or SlurmOptions()
        cluster, jobs = sweep_slurm.submit(sweep, list(indices), options, max_parallel)
        execution.update(
            cluster=cluster, job_ids=[str(j.job_id) for j in jobs], options=dataclasses.asdict(options)
        )
        _record_execution(sweep, execution)
        if not options.wait:
            sweeps.write_table(sweep)
            return ["submitted"] * len(members)
        for job in jobs:
            try:
                job.result()
            except Exception:  # noqa: BLE001 - the member's own run.json says what failed
                pass
    sweeps.write_table(sweep)
    return [sweep.status(m) for m in members]


def _record_execution(sweep: sweeps.Sweep, execution: dict[str, Any]) -> None:
    with run_record.locked(sweep.folder):
        fresh = sweeps.load_sweep(sweep.sweep_id, sweep.folder.parent.parent)
        fresh.data.setdefault("executions", []).append(execution)
        fresh.save()
        sweep.data = fresh.data


def _run_local(
    sweep: sweeps.Sweep, members: list[dict[str, Any]], max_parallel: int, gpus: list[str]
) -> None:
    """``ctlib run`` processes, at most ``max_parallel`` at once, one GPU each from ``gpus`` when given."""
    free: queue.Queue[str] = queue.Queue()
    for gpu in gpus:
        free.put(gpu)
    logs = sweep.folder / "logs"
    logs.mkdir(exist_ok=True)
    table_lock = threading.Lock()

    def one(member: dict[str, Any]) -> int:
        gpu = free.get() if gpus else None
        try:
            env = dict(os.environ, **{paths.RUNS_ENV_VAR: str(paths.runs_dir())})
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            with open(logs / f"{sweep.run_id(member)}.log", "wb") as out:
                code = subprocess.run(
                    member_command(sweep, member),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=paths.repo_root(),
                    check=False,
                ).returncode
        finally:
            if gpu is not None:
                free.put(gpu)
        with table_lock:
            sweeps.write_table(sweep)
        return code

    workers = min(max_parallel, len(gpus)) if gpus else max_parallel
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, members))


def detect_gpus() -> list[str]:
    """The GPUs a local sweep spreads over: ``$CUDA_VISIBLE_DEVICES`` when set, else every CUDA device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []
