"""The slurm executor of a sweep: submitit job arrays, requeued on preemption (see ``sweep_executors``).

Each array task runs :class:`MemberJob` with the sweep id and a member index: it reads the member's latest
attempt from the sweep record and runs it in its own process (``run_notebook`` with that run id). On
preemption or timeout submitit calls :meth:`MemberJob.checkpoint`, which adds a new attempt to the sweep
record (under a lock: tasks of one array can be preempted together) and requeues the task; the new attempt
resumes the interrupted run's checkpoint (``sweep_executors.member_overrides``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import submitit

from ctlib import atomic, paths
from ctlib.runs import execute, sweep_executors
from ctlib.runs import record as run_record
from ctlib.runs import sweep as sweeps


class MemberJob(submitit.helpers.Checkpointable):
    """One member of a sweep as a submitit job (picklable: it holds no state)."""

    def __call__(self, runs_dir: str, sweep_id: str, index: int) -> str:
        os.environ[paths.RUNS_ENV_VAR] = runs_dir  # the job's notebooks record into the sweep's runs folder
        sweep = sweeps.load_sweep(sweep_id, Path(runs_dir))
        member = sweep.members[index]
        run_id = sweep.run_id(member)
        result = execute.run_notebook(
            sweep.data["notebook"],
            sweep.data.get("parameter_set"),
            sweep_executors.member_overrides(sweep, member),
            run_id=run_id,
            raise_on_failure=False,
        )
        if (Path(runs_dir) / run_id).is_dir():  # which job ran it and where submitit wrote its logs
            atomic.write_json(Path(runs_dir) / run_id / "slurm.json", _job_note())
        with run_record.locked(sweep.folder):
            sweeps.write_table(sweeps.load_sweep(sweep_id, Path(runs_dir)))
        if result.status != "completed":
            raise RuntimeError(
                f"sweep {sweep_id} member {index}: run {run_id} {result.status}: {result.error}"
            )
        return result.status

    def checkpoint(self, runs_dir: str, sweep_id: str, index: int) -> submitit.helpers.DelayedSubmission:
        """Preempted or timed out: a new attempt of the member, requeued."""
        folder = sweeps.sweeps_dir(Path(runs_dir)) / sweep_id
        with run_record.locked(folder):
            sweeps.load_sweep(sweep_id, Path(runs_dir)).new_attempts([index])
        return submitit.helpers.DelayedSubmission(MemberJob(), runs_dir, sweep_id, index)


def _job_note() -> dict[str, Any]:
    try:
        env = submitit.JobEnvironment()
        return {
            "job_id": env.job_id,
            "hostname": env.hostname,
            "stdout": str(env.paths.stdout),
            "stderr": str(env.paths.stderr),
        }
    except RuntimeError:  # not inside a submitit job (called directly)
        return {}


def submit(
    sweep: sweeps.Sweep, indices: list[int], options: sweep_executors.SlurmOptions, max_parallel: int
) -> tuple[str, list[Any]]:
    """Submit the members as one job array; returns the cluster submitit chose and the jobs."""
    executor = submitit.AutoExecutor(folder=sweep.folder / "slurm" / "%j", cluster=options.cluster)
    resources: dict[str, Any] = {
        "name": sweep.sweep_id,
        "timeout_min": int(options.time_min),
        "slurm_array_parallelism": int(max_parallel),
    }
    if options.gpus_per_run:
        resources["gpus_per_node"] = int(options.gpus_per_run)
    if options.cpus_per_run:
        resources["cpus_per_task"] = int(options.cpus_per_run)
    if options.mem_gb:
        resources["mem_gb"] = float(options.mem_gb)
    if options.partition:
        resources["slurm_partition"] = options.partition
    if executor.cluster != "slurm":  # the local and debug executors take no GPU count
        resources.pop("gpus_per_node", None)
    executor.update_parameters(**resources)
    runs_dir = str(paths.runs_dir())
    jobs = executor.map_array(
        MemberJob(), [runs_dir] * len(indices), [sweep.sweep_id] * len(indices), indices
    )
    return executor.cluster, jobs
