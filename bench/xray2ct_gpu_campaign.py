"""The X-ray-to-CT GPU campaign (issue 14): the whole chain under wall-clock budgets, results in one folder.

Steps (each a recorded run of its notebook, each training loop bounded by ``max_minutes``):

1. ``preprocess``: ``xray2ct/02_preprocess`` (``gpu``: 128^3 pairs of 2 mm from $CTLIB_DATA_DIR).
2. ``models``: the deterministic baseline (``03_baseline``) and the diffusion model (``04_diffusion``)
   trained at the same time, in two processes (one GPU holds both; they share no state).
3. ``evaluate``: ``05_evaluate`` on the test split (K DDIM samples per case, with and without SIRT).
4. ``figures``: ``06_figures`` of that evaluation, ``publish_figures`` False (the run's folder only).
5. ``quality``: ``bench/xray2ct_quality.py`` on the evaluation run.

Everything a later session needs comes back in ``--out`` (at most 8 files, 64 MiB, 16 MiB each):
``campaign.json`` (run ids, status, seconds, trained steps and budgets per step, the weights' records),
``quality.json``, ``runs.tar.gz`` (the light archive of the runs: records, parameters, metrics, figures,
manifest.csv, case_scores.csv; reconstructions.npz only up to 4 MiB; no checkpoints) and the two trained
models as float16 safetensors in parts of 10 MiB (``bench/xray2ct_campaign_weights.py``: with the gpu
sets 18.6 + 86.5 MiB, 11 parts). The steps run in separate calls of a device that stays warm;
``<runs>/xray2ct_campaign.json`` carries the run ids and which parts came back. Each call carries the
staged parts not yet delivered that fit (the first ones right after training, so a call cut short still
brings them back; about 6 in the first call, 5 in the second); ``--steps`` with no step only delivers
(a third call, when ``left_out`` in campaign.json names parts still missing). ``campaign.json`` is
written into ``--out`` after every step.

GPU (one H200, parameter sets ``gpu``). First, here: ``python bench/device_pack.py --subset xray2ct``
(the wheels without their test data, 6.3 MiB; the real-CT subset of bench/xray2ct_subset.py filled up to
63 MiB with the tree: 6.7 MiB, 9 train / 1 validation / 4 test cases on 2026-12-04), and ``--check``
again right before the calls (the tree grows with every commit). Then two calls with carry [".whl",
".campaign_data"], the second within the 30 s the machine stays warm (/tmp keeps the site packages, the
runs and the staged weights); expected about 5 and 3-5 minutes, 10-12 minutes of device time with the
start, of the 15 a session has::

    { [ -d /tmp/site/monai ] || python3 -m pip install -q --no-index --no-deps --no-compile \
--no-cache-dir --upgrade --target /tmp/site .whl/*.whl; } && export PYTHONPATH=/tmp/site:$PWD \
CTLIB_DATA_DIR=$PWD/.campaign_data CTLIB_RUNS_DIR=/tmp/x2ct_runs PYTHONUNBUFFERED=1 && python3 \
bench/xray2ct_gpu_campaign.py --out $OUT --steps preprocess models --minutes 3      (timeout_s 480)
    (the same command ending in) --steps evaluate figures quality      (timeout_s 420)

CPU check of the same code path (the notebooks' tiny defaults on embedded data; 1.5 minutes on 2 cores)::

    OMP_NUM_THREADS=1 CTLIB_RUNS_DIR=$(mktemp -d) python bench/xray2ct_gpu_campaign.py \
--out /tmp/x2ct_campaign --parameter-set "" --minutes 0.3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xray2ct_campaign_weights as weights  # noqa: E402  (bench/, beside this file)
from gpu_campaign import bench_script, record_run  # noqa: E402

from ctlib import atomic, paths  # noqa: E402
from ctlib.runs import archive, execute, params  # noqa: E402

NOTEBOOKS = {
    "preprocess": "notebooks/xray2ct/2026-12-04_02_xray2ct_preprocess.ipynb",
    "baseline": "notebooks/xray2ct/2026-12-04_03_xray2ct_baseline.ipynb",
    "diffusion": "notebooks/xray2ct/2026-12-04_04_xray2ct_diffusion.ipynb",
    "evaluate": "notebooks/xray2ct/2026-12-04_05_xray2ct_evaluate.ipynb",
    "figures": "notebooks/xray2ct/2026-12-04_06_xray2ct_figures.ipynb",
}
STEPS = ("preprocess", "models", "evaluate", "figures", "quality")
TRAINED = ("baseline", "diffusion")
CHECKPOINT = "checkpoints/x2ct_model.pt"  # ctlib.studies.xray2ct.run_kind.X2CTRun
STATE = "xray2ct_campaign.json"  # in the runs folder
QUALITY = "xray2ct_quality.json"  # in the runs folder; copied into --out as quality.json
MAX_FILES, MAX_OUT_BYTES = 8, 64 * 2**20  # what one device call brings back
RESERVE_BYTES = 2**20  # for campaign.json, written after the weight parts
ARCHIVE_RESERVE_BYTES = 8 * 2**20  # for runs.tar.gz and quality.json when parts go out before them
RECONSTRUCTIONS_MAX_BYTES = 4 * 2**20  # reconstructions.npz joins runs.tar.gz when not larger


def _record(name: str, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    checkpoint_file = CHECKPOINT if name in TRAINED else None
    record = record_run(NOTEBOOKS[name], args.parameter_set, overrides, checkpoint_file)
    if name in TRAINED:
        resolved = params.resolve_parameters(NOTEBOOKS[name], args.parameter_set or None, overrides)
        record["budget"] = {k: resolved.values[k] for k in ("max_minutes", "steps", "batch_size", "amp")}
    return record


def _check(step: str, record: dict[str, Any]) -> None:
    if record["status"] != "completed":
        raise SystemExit(f"xray2ct_gpu_campaign: {step} run {record['run_id']} {record['status']}: "
                         f"{record['error']}")


def _train_both(args: argparse.Namespace, upstream: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The baseline and the diffusion model trained at the same time, each in its own process."""
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=2)
    try:
        futures = {name: pool.submit(_record, name, args, upstream) for name in TRAINED}
        return {name: future.result() for name, future in futures.items()}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def run_steps(steps: list[str], state: dict[str, Any], args: argparse.Namespace) -> None:
    """Run ``steps`` in order, recording each in ``state`` (saved after every step)."""
    budget = {} if args.minutes is None else {"max_minutes": args.minutes}
    for step in steps:
        started = time.perf_counter()
        if step == "preprocess":
            state["preprocess"] = _record("preprocess", args, {})
            _check(step, state["preprocess"])
        elif step == "models":
            state.update(_train_both(args, {"preprocess_run_id": state["preprocess"]["run_id"], **budget}))
            for name in TRAINED:
                _check(name, state[name])
            stage_weights(state)
            state["delivered_now"] += weights.deliver(  # now: a call cut short still brings them back
                state.get("weights", {}), paths.runs_dir() / weights.STAGING, args.out,
                max_files=MAX_FILES - 3, max_bytes=MAX_OUT_BYTES - RESERVE_BYTES - ARCHIVE_RESERVE_BYTES,
            )  # fmt: skip
        elif step == "evaluate":
            upstream = {f"{name}_run_id": state[name]["run_id"] for name in ("preprocess", *TRAINED)}
            cases = {"max_cases": args.max_cases} if args.max_cases else {}
            state["evaluate"] = _record("evaluate", args, {**upstream, **cases})
            _check(step, state["evaluate"])
        elif step == "figures":
            overrides = {"evaluate_run_id": state["evaluate"]["run_id"], "publish_figures": False}
            state["figures"] = _record("figures", args, overrides)
            _check(step, state["figures"])
        elif step == "quality":
            bench_script("xray2ct_quality.py", paths.runs_dir() / QUALITY,
                         "--evaluate-run", state["evaluate"]["run_id"])
        state.setdefault("seconds", {})[step] = round(time.perf_counter() - started, 1)
        atomic.write_json(paths.runs_dir() / STATE, state)
        atomic.write_json(args.out / "campaign.json", state)
        print(f"xray2ct_gpu_campaign: {step} done in {state['seconds'][step]:.0f} s", flush=True)


def stage_weights(state: dict[str, Any]) -> None:
    """Stage the trained models' float16 parts in the runs folder (``xray2ct_campaign_weights.stage``)."""
    staged = state.setdefault("weights", {})
    for name, step in weights.EXPORTS.items():
        run_id = state.get(step, {}).get("run_id")
        if state.get(step, {}).get("status") != "completed" or staged.get(name, {}).get("run_id") == run_id:
            continue
        try:
            staged[name] = weights.stage(execute.run_dir_of(run_id), name, paths.runs_dir() / weights.STAGING)
        except Exception as err:  # the campaign's other results still come back
            state.setdefault("staging_errors", {})[name] = f"{type(err).__name__}: {err}"


def archive_runs(state: dict[str, Any], out: Path) -> list[str]:
    """``runs.tar.gz`` in ``out``: the light archive (``ctlib.runs.archive``) of the completed runs, with the
    evaluation's reconstructions.npz when it is small; what was left out."""
    staging, left_out = out / "runs_archive", []
    copied = []
    for name in ("preprocess", *TRAINED, "evaluate", "figures"):
        if state.get(name, {}).get("status") == "completed":
            archive.archive_run(state[name]["run_id"], archive_root=staging)
            copied.append(state[name]["run_id"])
    if "evaluate" in state and state["evaluate"]["run_id"] in copied:
        npz = execute.run_dir_of(state["evaluate"]["run_id"]) / "reconstructions.npz"
        if npz.is_file() and npz.stat().st_size <= RECONSTRUCTIONS_MAX_BYTES:
            shutil.copyfile(npz, staging / state["evaluate"]["run_id"] / npz.name)
        elif npz.is_file():
            left_out.append(f"reconstructions.npz: {npz.stat().st_size / 2**20:.0f} MiB, over "
                            f"{RECONSTRUCTIONS_MAX_BYTES / 2**20:.0f} MiB")
    if copied:
        with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
            tar.add(staging, arcname="experiments")
    shutil.rmtree(staging, ignore_errors=True)
    return left_out


def collect(state: dict[str, Any], out: Path) -> list[str]:
    """Write ``runs.tar.gz``, ``quality.json``, the weight parts that fit and ``campaign.json`` in ``out``."""
    state["left_out"] = [f"{n}: staging failed: {e}" for n, e in state.get("staging_errors", {}).items()]
    state["left_out"] += archive_runs(state, out)
    if (paths.runs_dir() / QUALITY).is_file():
        shutil.copyfile(paths.runs_dir() / QUALITY, out / "quality.json")
    staged = state.get("weights", {})
    atomic.write_json(out / "campaign.json", state)  # counted below; rewritten at the end
    state["delivered_now"] += weights.deliver(
        staged, paths.runs_dir() / weights.STAGING, out,
        max_files=MAX_FILES, max_bytes=MAX_OUT_BYTES - RESERVE_BYTES,
    )  # fmt: skip
    state["left_out"] += [f"{name}: {len(r['parts']) - len(r['delivered'])} of {len(r['parts'])} parts not "
                          "delivered yet (call again with --steps and no step)" for name, r in staged.items()
                          if len(r["delivered"]) < len(r["parts"])]
    atomic.write_json(paths.runs_dir() / STATE, state)
    atomic.write_json(out / "campaign.json", state)
    return sorted(p.name for p in out.iterdir())


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(f"xray2ct_gpu_campaign: signal {signum}: collecting what is there")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the folder that comes back (at most 8 files)"
    )
    parser.add_argument("--steps", nargs="*", choices=STEPS, default=list(STEPS),
                        help="steps to run (none: only deliver staged weight parts)")
    parser.add_argument("--parameter-set", default="gpu", help="'' runs the notebooks' defaults")
    parser.add_argument("--minutes", type=float, default=None,
                        help="max_minutes of both training loops (default: the parameter set's)")
    parser.add_argument("--max-cases", type=int, default=0, help="evaluate at most this many test cases")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.iterdir()):
        raise SystemExit(f"xray2ct_gpu_campaign: {args.out} is not empty: the files of one call go there")
    state_file = paths.runs_dir() / STATE
    resume = state_file.is_file() and (not args.steps or args.steps[0] != "preprocess")
    state = json.loads(state_file.read_text()) if resume else {}
    state.update({"parameter_set": args.parameter_set, "minutes": args.minutes, "steps_now": args.steps,
                  "delivered_now": []})
    signal.signal(signal.SIGTERM, _stop)
    started = time.perf_counter()
    try:
        run_steps(args.steps, state, args)
    finally:
        state["total_seconds_now"] = round(time.perf_counter() - started, 1)
        files = collect(state, args.out)
        print(f"xray2ct_gpu_campaign: {args.out}: {files}")
    return state


if __name__ == "__main__":
    main()
