"""The dose GPU campaign (issue 16, part 7): the dose U-Net trained under a wall-clock budget on one GPU,
scored on the 40 OpenKBP test patients, released; results in one folder.

Steps (``preprocess`` and ``train`` are recorded runs of their notebooks):

1. ``unpack``: the packed OpenKBP patients (``--pack``, ``bench/dose_subset.py``) rebuilt as the standard
   ``openkbp/<split>/pt_*.npz`` files under a temporary data root (dose within 0.005 Gy of the shared files,
   everything else equal). Without ``--pack`` the notebooks read what their parameter set says.
2. ``preprocess``: ``dose/01_preprocess`` (``gpu``: every patient of the data root, 16 worker processes).
3. ``train``: ``dose/02_train`` (``gpu``: the FiLM U-Net on whole patients at CT resolution, bf16, lr schedule
   over the wall-clock budget) with ``max_minutes`` = ``--minutes``; by default what is left of ``--budget-s``
   after the steps before, less ``--reserve-s`` for the notebook's loading and validation and the steps after.
4. ``evaluate``: ``bench/dose_openkbp.py --tta`` on the test split (dose score, DVH score, gamma 3 %/3 mm;
   plain and with mirror test-time augmentation) into ``--out/dose_openkbp_gpu.json``.
5. ``export``: the release (``ctlib.studies.dose.release_model.export_dose_release``: float16 when it moves
   the dose of one test window by at most 0.1 Gy, model card with the test scores) tarred into ``--out`` as
   ``<name>.tar.part0`` ... (16 MB each; ``cat NAME.tar.part* > NAME.tar`` rebuilds the folder for weights/).

``--out`` also gets ``campaign.json`` (run ids, status, seconds, trained steps, budgets, device) after every
step and ``runs.tar.gz`` (the light archive of the runs: records, parameters, metrics, figures, tables; no
checkpoints, no patient arrays): at most 5 files of the 8 that come back.

Device (nvidia-h200; one command, timeout_s 600, about 12 minutes of device time with the start). First,
here: ``python bench/device_pack.py --subset dose`` (the slim wheels in .whl/, 6.3 MiB; all 140 patients in
.campaign_data/openkbp_pack/, 51.5 MiB; then its budget lines). The whole tree (65 MiB on 2026-12-04)
cannot travel beside the pack, so for that one call the index is slimmed, nothing committed (4.5 MiB
left; ``git reset -q`` and removing the exclude file restore it after the call)::

    git rm -r -q --cached experiments figures weights $(git ls-files notebooks | grep -v ^notebooks/dose/)
    { printf '/experiments/\n/figures/\n/weights/\n'; \
git ls-files -o --exclude-standard notebooks | sed 's|^|/|'; } >> .git/info/exclude
    python bench/device_pack.py --subset dose --slim-wheels --dose-patients train=80 validation=1 test=40

Ran so on one H200 on 2026-12-04 (503 s: unpack 3, preprocess 29, train 374, evaluate 83, export 14; 3,000
steps; dose score 3.60 Gy, DVH score 2.00 Gy with mirror TTA; ``bench/results/dose_openkbp_gpu_h200.json``).
Expected seconds before that run: install 20-30, unpack 5, preprocess 25, training notebook
``max_minutes`` x 60 + 60 (loading 80 patients, validating 20), evaluation 60-90 (40 patients twice,
gamma on the GPU), export and archive 15; ``--budget-s`` 560 and ``--reserve-s`` 200 give ``max_minutes``
of about 5.4. Then, with carry [".whl", ".campaign_data"]::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
.whl/*.whl && export PYTHONPATH=/tmp/site:$PWD CTLIB_RUNS_DIR=/tmp/dose_runs PYTHONUNBUFFERED=1 && \
python3 bench/dose_gpu_campaign.py --out $OUT --pack .campaign_data --workers 16 --budget-s 540 --release-tta

CPU check of the same code path (the notebooks' tiny defaults on the embedded phantoms, no pack; 1.0-1.7
minutes on 2 cores shared with a training run; 4 files: campaign.json, dose_openkbp_gpu.json,
dose_unet.tar.part0, runs.tar.gz)::

    OMP_NUM_THREADS=1 CTLIB_RUNS_DIR=$(mktemp -d) python bench/dose_gpu_campaign.py \
--out /tmp/dose_campaign --parameter-set "" --minutes 0.3

and with the unpack step on real patients (``python bench/dose_subset.py --out /tmp/dose_pack --patients
train=1 validation=1 test=1`` first, 5 s): add ``--pack /tmp/dose_pack`` (1.5-1.9 minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dose_subset  # noqa: E402  (bench/, beside this file)
from gpu_campaign import bench_script, record_run, split_file  # noqa: E402

from ctlib import atomic, paths  # noqa: E402
from ctlib.runs import archive, execute, params  # noqa: E402

NOTEBOOKS = {
    "preprocess": "notebooks/dose/2026-11-23_01_dose_preprocess.ipynb",
    "train": "notebooks/dose/2026-11-23_02_dose_train.ipynb",
}
STEPS = ("unpack", "preprocess", "train", "evaluate", "export")
CHECKPOINT = "checkpoints/dose_model.pt"  # ctlib.studies.dose.run_kind.DoseRun
BUDGET_KEYS = (
    "max_minutes",
    "steps",
    "batch_size",
    "grad_accum_steps",
    "amp",
    "train_on",
    "resolution_factor",
    "channels",
    "num_res_units",
    "loss",
    "lr",
    "lr_schedule",
)
SCORES = "dose_openkbp_gpu.json"


def _check(step: str, record: dict[str, Any]) -> None:
    if record["status"] != "completed":
        raise SystemExit(
            f"dose_gpu_campaign: {step} run {record['run_id']} {record['status']}: {record['error']}"
        )


def training_minutes(args: argparse.Namespace, elapsed_s: float) -> float:
    """``--minutes``, else what ``--budget-s`` leaves after ``elapsed_s`` and ``--reserve-s`` (>= 0.5)."""
    if args.minutes is not None:
        return float(args.minutes)
    return round(max(0.5, (args.budget_s - elapsed_s - args.reserve_s) / 60.0), 2)


def device_name() -> str:
    """The GPU's name, or the CPU's core count."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU, {os.cpu_count()} cores"


def run_steps(state: dict[str, Any], args: argparse.Namespace, started: float) -> None:
    """Every step in order, recorded in ``state`` (``campaign.json`` in ``--out`` after each)."""
    for step in STEPS:
        t0 = time.perf_counter()
        if step == "unpack":
            if args.pack is None:
                state["unpack"] = {"status": "skipped", "reason": "no --pack: the parameter set's data"}
            else:
                data_root = Path(tempfile.mkdtemp(prefix="dose_campaign_data_"))
                os.environ["CTLIB_DATA_DIR"] = str(data_root)  # the kernels and scripts started below
                state["unpack"] = {
                    "status": "completed",
                    "data_root": str(data_root),
                    "patients": dose_subset.unpack(args.pack, data_root, args.workers),
                }
        elif step == "preprocess":
            overrides: dict[str, Any] = {}
            if state["unpack"]["status"] == "completed":
                overrides = {"source": "openkbp", "data_root": state["unpack"]["data_root"]}
                if args.workers:
                    overrides["workers"] = args.workers
            state["preprocess"] = record_run(NOTEBOOKS["preprocess"], args.parameter_set, overrides)
            _check(step, state["preprocess"])
        elif step == "train":
            minutes = training_minutes(args, time.perf_counter() - started)
            overrides = {"preprocess_run_id": state["preprocess"]["run_id"], "max_minutes": minutes}
            record = record_run(NOTEBOOKS["train"], args.parameter_set, overrides, CHECKPOINT)
            resolved = params.resolve_parameters(NOTEBOOKS["train"], args.parameter_set or None, overrides)
            record["budget"] = {k: resolved.values[k] for k in BUDGET_KEYS if k in resolved.values}
            state["train"] = record
            _check(step, record)
        elif step == "evaluate":
            bench_script(
                "dose_openkbp.py", args.out / SCORES, "--train-runs", state["train"]["run_id"], "--tta"
            )
            state["evaluate"] = {"status": "completed", "scores": scores_of(args.out / SCORES)}
        elif step == "export":
            try:
                state["export"] = export_release(state, args)
            except Exception as err:  # the scores and runs still come back
                state["export"] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        state.setdefault("seconds", {})[step] = round(time.perf_counter() - t0, 1)
        atomic.write_json(args.out / "campaign.json", state)
        print(f"dose_gpu_campaign: {step} done in {state['seconds'][step]:.0f} s", flush=True)


def scores_of(report_file: Path) -> dict[str, dict[str, float]]:
    """``{evaluation: {patients, dose_score_gy, dvh_score_gy, gamma_pass_percent}}`` of a dose_openkbp.py
    report."""
    import json

    report = json.loads(report_file.read_text())
    keys = ("patients", "dose_score_gy", "dvh_score_gy", "gamma_pass_percent")
    return {v["evaluation"]: {k: v[k] for k in keys} for v in report["variants"]}


def card(state: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """What the model card states beyond the run records: data, split, test scores and protocol."""
    preprocess = state["preprocess"]
    counts = {k: v for k, v in preprocess.get("metrics", {}).items() if k.startswith("n_")}
    scores = state.get("evaluate", {}).get("scores", {})
    packed = (
        "; the shared OpenKBP patients packed by bench/dose_subset.py, dose within 0.005 Gy"
        if state.get("unpack", {}).get("status") == "completed"
        else ""
    )
    metrics = {
        f"{evaluation} {name} ({unit})": round(float(values[key]), 3)
        for evaluation, values in scores.items()
        for key, name, unit in (
            ("dose_score_gy", "dose score", "Gy"),
            ("dvh_score_gy", "DVH score", "Gy"),
            ("gamma_pass_percent", "gamma 3%/3mm pass", "%"),
        )
    }
    return {
        "training_data": f"train split of preprocessing run {preprocess['run_id']} (parameter set "
        f"{args.parameter_set or 'defaults'}{packed}): {counts}",
        "split": "the OpenKBP challenge's own patient-wise splits (shared data: train 80, validation 20, "
        "test 40)"
        if packed
        else "the preprocessing run's patient-wise splits (its manifest.csv)",
        "limitations": f"trained for at most {state['train']['budget'].get('max_minutes')} minutes of wall "
        "time; scored on the test patients of the shared data (40 of the challenge's 100)",
        "metrics": metrics,
        "protocol": "bench/dose_openkbp.py on the test split: dose score = MAE (Gy) in the possible-dose "
        "mask, DVH score = mean |error| of D99/D95/D1 (PTVs) and D0.1cc/Dmean (OARs) pooled over (patient, "
        "structure, metric), gamma 3 %/3 mm global, 10 % cutoff; plain and with mirror TTA",
        "device": state.get("device", ""),
        "notes": "GPU campaign (bench/dose_gpu_campaign.py), max_minutes "
        f"{state['train']['budget'].get('max_minutes')}; release with mirror TTA: {args.release_tta}",
    }


def export_release(state: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The trained run as a release, tarred into ``--out`` in parts of at most 16 MB; its size report."""
    import torch

    from ctlib.studies.dose import release_model
    from ctlib.studies.dose.patient_file import list_dose_patients

    preprocess_dir = execute.run_dir_of(state["preprocess"]["run_id"])
    tests = list_dose_patients(preprocess_dir, "test")
    staging = Path(tempfile.mkdtemp(prefix="dose_release_"))
    try:
        report = release_model.export_dose_release(
            execute.run_dir_of(state["train"]["run_id"]),
            name=args.release_name,
            card=card(state, args),
            weights_dir=staging,
            budget_mb=1000.0,
            precision=args.precision,
            training_spacing_mm=release_model.training_spacing_from(preprocess_dir / "patients" / "train"),
            test_patient=tests[0] if tests else None,
            tta=args.release_tta,
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
        archive_path = args.out / f"{args.release_name}.tar"
        with tarfile.open(archive_path, "w") as tar:
            tar.add(staging / args.release_name, arcname=args.release_name)
        report["tar_bytes"] = archive_path.stat().st_size
        report["parts"] = split_file(archive_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"status": "completed", **report}


def collect(state: dict[str, Any], out: Path) -> list[str]:
    """``runs.tar.gz`` (light archive of the completed runs) and ``campaign.json`` in ``out``."""
    staging, copied = out / "runs_archive", []
    for name in ("preprocess", "train"):
        if state.get(name, {}).get("status") == "completed":
            archive.archive_run(state[name]["run_id"], archive_root=staging)
            copied.append(state[name]["run_id"])
    if copied:
        with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
            tar.add(staging, arcname="experiments")
    shutil.rmtree(staging, ignore_errors=True)
    data_root = state.get("unpack", {}).get("data_root")
    if data_root:
        shutil.rmtree(data_root, ignore_errors=True)
    atomic.write_json(out / "campaign.json", state)
    return sorted(p.name for p in out.iterdir())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the folder that comes back (at most 8 files)"
    )
    parser.add_argument(
        "--pack",
        type=Path,
        default=None,
        help="a pack root (bench/dose_subset.py) to unpack and preprocess; default: none",
    )
    parser.add_argument("--parameter-set", default="gpu", help="'' runs the notebooks' defaults")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="max_minutes of the training loop (default: from --budget-s and --reserve-s)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=560.0,
        help="wall-clock seconds of the whole campaign (the device command has 600)",
    )
    parser.add_argument(
        "--reserve-s",
        type=float,
        default=200.0,
        help="seconds kept for the training notebook's loading and validation, the evaluation "
        "and the export when --minutes is not given",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes that unpack and preprocess")
    parser.add_argument("--release-name", default="dose_unet")
    parser.add_argument("--release-tta", action="store_true", help="the release predicts with mirror TTA")
    parser.add_argument("--precision", default="auto", choices=["auto", "float16", "float32"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.iterdir()):
        raise SystemExit(f"dose_gpu_campaign: {args.out} is not empty: the files of one call go there")
    if args.pack is not None and not dose_subset.counts(args.pack)["train"]:
        raise SystemExit(
            f"dose_gpu_campaign: {args.pack}: no packed training patients "
            f"({args.pack / dose_subset.PACK}/train/*.npz)"
        )
    state: dict[str, Any] = {
        "parameter_set": args.parameter_set,
        "minutes": args.minutes,
        "budget_s": args.budget_s,
        "reserve_s": args.reserve_s,
        "pack": str(args.pack) if args.pack else None,
        "runs_dir": str(paths.runs_dir()),
        "device": device_name(),
    }
    started = time.perf_counter()
    try:
        run_steps(state, args, started)
    finally:
        state["total_seconds"] = round(time.perf_counter() - started, 1)
        print(f"dose_gpu_campaign: {args.out}: {collect(state, args.out)}")
    return state


if __name__ == "__main__":
    main()
