"""``ctlib sweep``: a grid of runs of one notebook (``sweep``), on this machine or a SLURM cluster.

    ctlib sweep NOTEBOOK [-p SET] [--grid NAME=V1,V2 ...] [--seeds N] [-P NAME=VALUE ...]
                [--executor local|slurm] [--max-parallel K] [--gpus auto|none|0,1]
                [--slurm-partition P] [--gpus-per-run G] [--time-min M] [--cpus-per-run C] [--mem-gb GB]
                [--no-wait]
    ctlib sweep --resume SWEEP_ID [executor options]   # reruns the failed, killed or missing members
    ctlib sweep --status SWEEP_ID                      # statuses and the table, nothing run

A parameter set may name the grid (``sweep: {grid: {...}, seeds: N}``); ``--grid`` adds to or replaces it.
Prints one JSON line (sweep id, counts per status, table path); exit status 0 when every member completed,
1 when one did not, 2 on bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_BAD_INPUT = 2


def add_subcommand(sub: Any) -> None:
    """Register ``ctlib sweep`` on the ``ctlib`` subparsers."""
    p = sub.add_parser("sweep", help="run a notebook over a grid of parameters (locally or on SLURM)")
    p.add_argument("notebook", nargs="?", help="path of the notebook (not with --resume / --status)")
    p.add_argument(
        "-p", "--parameter-set", help="papermill_params/<notebook stem>/<SET>.yaml (may name a grid)"
    )
    p.add_argument(
        "--grid", action="append", default=[], metavar="NAME=V1,V2", help="values of one parameter"
    )
    p.add_argument("--seeds", type=int, default=None, help="add seed = 0..N-1 to the grid")
    p.add_argument("-P", "--param", action="append", default=[], metavar="KEY=VALUE", help="override for all")
    p.add_argument("--resume", metavar="SWEEP_ID", help="rerun the failed, killed or missing members")
    p.add_argument("--status", metavar="SWEEP_ID", help="print the sweep's statuses and rewrite its table")
    p.add_argument("--executor", choices=["local", "slurm"], default="local")
    p.add_argument("--max-parallel", type=int, default=1, help="members at once (slurm: array parallelism)")
    p.add_argument("--gpus", default="auto", help="local: GPUs to spread over ('auto', 'none' or '0,1')")
    p.add_argument("--slurm-partition", help="slurm: partition")
    p.add_argument("--gpus-per-run", type=int, default=1, help="slurm: GPUs per member job")
    p.add_argument("--time-min", type=int, default=60, help="slurm: time limit per job (minutes)")
    p.add_argument("--cpus-per-run", type=int, help="slurm: CPUs per member job")
    p.add_argument("--mem-gb", type=float, help="slurm: memory per member job (GB)")
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], help=argparse.SUPPRESS)
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return (see --status)")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """The ``ctlib sweep`` command."""
    from ctlib.runs import params as run_params
    from ctlib.runs import sweep as sweeps
    from ctlib.runs import sweep_executors

    try:
        sweep, indices = _sweep_and_members(args, sweeps, run_params)
        if args.status:
            sweeps.write_table(sweep)
            print(json.dumps(sweeps.summary(sweep)))
            return 0
        gpus = _gpus(args.gpus, sweep_executors)
    except (FileNotFoundError, ValueError) as err:
        print(f"ctlib sweep: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    slurm = sweep_executors.SlurmOptions(
        partition=args.slurm_partition,
        gpus_per_run=args.gpus_per_run,
        time_min=args.time_min,
        cpus_per_run=args.cpus_per_run,
        mem_gb=args.mem_gb,
        cluster=args.cluster,
        wait=not args.no_wait,
    )
    print(
        f"sweep {sweep.sweep_id}: {len(indices)} member(s) with the {args.executor} executor", file=sys.stderr
    )
    sweep_executors.run_members(
        sweep, indices, executor=args.executor, max_parallel=args.max_parallel, gpus=gpus, slurm=slurm
    )
    summary = sweeps.summary(sweep)
    print(json.dumps(summary))
    from ctlib.runs import index as experiments_index

    print(f"  index of this machine's runs: {experiments_index.write_local_index()}", file=sys.stderr)
    if args.no_wait:
        return 0
    return 0 if summary["status"].get("completed", 0) == summary["members"] else 1


def _sweep_and_members(args: argparse.Namespace, sweeps: Any, run_params: Any) -> tuple[Any, list[int]]:
    """A new sweep from the arguments, or the one named by --resume / --status, and the members to run."""
    named = args.resume or args.status
    if named:
        if args.notebook or args.grid or args.param or args.parameter_set or args.seeds is not None:
            raise ValueError("--resume / --status take a sweep id only (the sweep record has the rest)")
        sweep = sweeps.load_sweep(named)
        if args.status:
            return sweep, []
        rerun = [m["index"] for m in sweep.members if sweep.status(m) in sweeps.RERUN_STATUSES]
        fresh = [
            m["index"] for m in sweep.members if sweep.status(m) == sweeps.MISSING and len(m["run_ids"]) == 1
        ]  # never started: keep the run id given at creation
        sweep.new_attempts([i for i in rerun if i not in fresh])
        return sweep, rerun
    if not args.notebook:
        raise ValueError("name a notebook, or --resume / --status SWEEP_ID")
    notebook = run_params.resolve_notebook_path(args.notebook)
    section = run_params.load_sweep_section(notebook, args.parameter_set) if args.parameter_set else {}
    grid = dict(section.get("grid", {}))
    grid.update(dict(sweeps.parse_grid_option(g) for g in args.grid))
    seeds = args.seeds if args.seeds is not None else int(section.get("seeds", 0))
    overrides = dict(run_params.parse_override(item) for item in args.param)
    if args.max_parallel < 1:
        raise ValueError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    sweep = sweeps.create_sweep(notebook, args.parameter_set, grid, seeds=seeds, overrides=overrides)
    return sweep, [m["index"] for m in sweep.members]


def _gpus(text: str, sweep_executors: Any) -> list[str]:
    if text == "auto":
        return sweep_executors.detect_gpus()
    if text == "none":
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus:
        raise ValueError(f"--gpus {text!r}: expected 'auto', 'none' or a list such as 0,1")
    return gpus
