"""The CT-retrieval GPU campaign (issue 15): the whole chain under wall-clock budgets, results in one folder.

Steps (each a recorded run of its notebook, each training loop bounded by ``max_minutes``):

1. ``preprocess``: ``retrieval/01_preprocess`` (``gpu``: 64 x 128 x 128, the real CT of $CTLIB_DATA_DIR and
   the generated CT-report set on the shared chest CTs).
2. ``models``: ``02_train`` in both modes at the same time (``gpu`` and ``gpu-micro-f1``, two
   processes on one GPU; they share no state).
3. ``evaluate``: ``03_evaluate`` of the two runs on the test split; ``figures``: ``04_figures`` of it
   (the run's folder only); ``quality``: ``bench/retrieval_quality.py`` on the evaluation run.

What comes back in ``--out`` (at most 8 files of 16 MiB): ``campaign.json`` (run ids, status, seconds, trained
steps and budgets), ``quality.json``, ``runs.tar.gz`` (the light archive of the runs: records, parameters,
metrics, figures, tables; no checkpoints) and each mode's validation-selected embedder
(``<mode>.safetensors`` with its ``.json`` sidecar; the gpu sets' 1024-d embedder with global pooling, 3.8 M
parameters, is 14.5 MiB in float32).

The device needs the real CT beside the tree: with ``bench/device_pack.py`` data under ``.campaign_data/`` run
(timeout_s 600, about 12 minutes of device time with the start)::

    export CTLIB_DATA_DIR=$PWD/.campaign_data CTLIB_RUNS_DIR=/tmp/ret_runs PYTHONUNBUFFERED=1 && \
python3 bench/retrieval_gpu_campaign.py --out $OUT --minutes 4

CPU check of the same code path (the notebooks' tiny defaults on embedded data; 83 s on 2 cores, 7 files)::

    OMP_NUM_THREADS=1 CTLIB_RUNS_DIR=$(mktemp -d) python bench/retrieval_gpu_campaign.py \
--out /tmp/ret_campaign --parameter-set "" --minutes 0.3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_campaign import bench_script, record_run  # noqa: E402

from ctlib import atomic, paths  # noqa: E402
from ctlib.runs import archive, execute  # noqa: E402

NOTEBOOKS = {
    "preprocess": "notebooks/retrieval/2026-12-04_01_retrieval_preprocess.ipynb",
    "train": "notebooks/retrieval/2026-12-04_02_retrieval_train.ipynb",
    "evaluate": "notebooks/retrieval/2026-12-04_03_retrieval_evaluate.ipynb",
    "figures": "notebooks/retrieval/2026-12-04_04_retrieval_figures.ipynb",
}
MODES = {"triplet": "gpu", "micro_f1": "gpu-micro-f1"}  # mode -> training parameter set
CHECKPOINT = "checkpoints/retrieval_model.pt"  # ctlib.studies.retrieval.run_kind.RetrievalRun
BEST = "checkpoints/best_model.safetensors"


def _set(name: str, args: argparse.Namespace) -> str:
    return args.parameter_set and (MODES[name] if name in MODES else args.parameter_set)


def _check(step: str, record: dict[str, Any]) -> None:
    if record["status"] != "completed":
        raise SystemExit(
            f"retrieval_gpu_campaign: {step} run {record['run_id']} {record['status']}: {record['error']}"
        )


def _train(mode: str, args: argparse.Namespace, preprocess_id: str) -> dict[str, Any]:
    overrides = {"mode": mode, "preprocess_run_id": preprocess_id}
    if args.minutes is not None:
        overrides["max_minutes"] = args.minutes
    record = record_run(NOTEBOOKS["train"], _set(mode, args), overrides, CHECKPOINT)
    record["budget"] = {"max_minutes": args.minutes, "parameter_set": _set(mode, args)}
    return record


def run_chain(state: dict[str, Any], args: argparse.Namespace) -> None:
    """Every step in order, recorded in ``state`` (written into ``--out`` after each)."""
    for step in ("preprocess", "models", "evaluate", "figures", "quality"):
        started = time.perf_counter()
        if step == "preprocess":
            state["preprocess"] = record_run(NOTEBOOKS["preprocess"], _set("preprocess", args), {})
            _check(step, state["preprocess"])
        elif step == "models":
            with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
                futures = {m: pool.submit(_train, m, args, state["preprocess"]["run_id"]) for m in MODES}
                for mode, future in futures.items():
                    state[mode] = future.result()
                    _check(mode, state[mode])
        elif step == "evaluate":
            overrides = {f"{m}_run_id": state[m]["run_id"] for m in MODES}
            state["evaluate"] = record_run(NOTEBOOKS["evaluate"], _set("evaluate", args), overrides)
            _check(step, state["evaluate"])
        elif step == "figures":
            overrides = {"evaluate_run_id": state["evaluate"]["run_id"], "publish_figures": False}
            state["figures"] = record_run(NOTEBOOKS["figures"], _set("figures", args), overrides)
            _check(step, state["figures"])
        else:
            bench_script("retrieval_quality.py", args.out / "quality.json", "--evaluate-run",
                         state["evaluate"]["run_id"])  # fmt: skip
        state.setdefault("seconds", {})[step] = round(time.perf_counter() - started, 1)
        atomic.write_json(args.out / "campaign.json", state)
        print(f"retrieval_gpu_campaign: {step} done in {state['seconds'][step]:.0f} s", flush=True)


def collect(state: dict[str, Any], out: Path) -> list[str]:
    """``runs.tar.gz`` (light archive of the completed runs) and each mode's selected embedder in ``out``."""
    staging, copied = out / "runs_archive", []
    for name in ("preprocess", *MODES, "evaluate", "figures"):
        if state.get(name, {}).get("status") == "completed":
            archive.archive_run(state[name]["run_id"], archive_root=staging)
            copied.append(state[name]["run_id"])
    if copied:
        with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
            tar.add(staging, arcname="experiments")
    shutil.rmtree(staging, ignore_errors=True)
    for mode in MODES:
        if state.get(mode, {}).get("status") == "completed":
            best = execute.run_dir_of(state[mode]["run_id"]) / BEST
            if best.is_file():
                shutil.copyfile(best, out / f"{mode}.safetensors")
                shutil.copyfile(f"{best}.json", out / f"{mode}.safetensors.json")
    atomic.write_json(out / "campaign.json", state)
    return sorted(p.name for p in out.iterdir())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the folder that comes back (at most 8 files)"
    )
    parser.add_argument("--parameter-set", default="gpu", help="'' runs the notebooks' defaults")
    parser.add_argument("--minutes", type=float, default=None,
                        help="max_minutes of both training loops (default: the parameter sets')")  # fmt: skip
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.iterdir()):
        raise SystemExit(f"retrieval_gpu_campaign: {args.out} is not empty: the files of one call go there")
    state: dict[str, Any] = {
        "parameter_set": args.parameter_set,
        "minutes": args.minutes,
        "runs_dir": str(paths.runs_dir()),
    }
    started = time.perf_counter()
    try:
        run_chain(state, args)
    finally:
        state["total_seconds"] = round(time.perf_counter() - started, 1)
        print(f"retrieval_gpu_campaign: {args.out}: {collect(state, args.out)}")
    return state


if __name__ == "__main__":
    main()
