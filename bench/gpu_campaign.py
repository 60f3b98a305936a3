"""The slice-interpolation GPU campaign: the whole chain under wall-clock budgets, results in one folder.

Steps (each a recorded run of its notebook, each training loop bounded by ``max_minutes``):

1. ``preprocess``: ``slice_interp/01_preprocess`` (all shared real CT at native size; x6 pairs).
2. ``models``: the VAE (``02_vae``) and the regressor (``05_regressor``) trained at the same time, in two
   processes (one GPU holds both; they share no state).
3. ``diffusion``: the latent denoiser (``03_diffusion``) on that VAE.
4. ``evaluate``: ``bench/slice_interp_quality.py`` on the held-out volumes (both protocols, x2/x4/x6).
5. ``speed``: ``bench/full_volume_speed.py``: one 512 x 512 x 300 volume from 50 thick slices, DDIM 20.

Everything a later session needs comes back in ``--out`` (at most 8 files): ``campaign.json`` (run ids,
status, seconds and trained steps per step, the budgets), ``quality.json``, ``speed.json``, ``runs.tar.gz``
(the light archive of the runs: records, parameters, metrics, figures; no checkpoints) and the released
models (``ctlib.studies.interp.release``, float16 with its measured output change) as ``<name>.tar.partN``
files of at most 16 MB each (``cat NAME.tar.part* > NAME.tar`` rebuilds a release folder for weights/).
The steps can run in separate calls of a device that stays warm (``--steps preprocess models`` then
``--steps diffusion evaluate speed``): ``campaign.json`` in the runs folder carries the run ids across.

GPU (one H200, about 12 minutes in all; parameter sets ``gpu-campaign``)::

    python bench/gpu_campaign.py --out $OUT

On this workplace's device machine (python3 3.12 with torch; no package index, no ../shared/data): first
``python bench/device_pack.py`` here (the missing wheels in .whl/, 10 MiB; a real-CT subset laid out like
../shared/data in .campaign_data/, 33 MiB; 58 MiB with the tree, of the 64 that travel), then two calls
with carry [".whl", ".campaign_data"] and timeout_s 600, the second within the 30 s the machine stays warm
(one command runs at most 10 minutes; /tmp keeps the runs between them)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
.whl/*.whl && export PYTHONPATH=/tmp/site:$PWD CTLIB_DATA_DIR=$PWD/.campaign_data \
CTLIB_RUNS_DIR=/tmp/campaign_runs PYTHONUNBUFFERED=1 && python3 bench/gpu_campaign.py --out $OUT \
--steps preprocess models
    (the same command ending in) --steps diffusion evaluate speed

CPU check of the same code path (the notebooks' tiny defaults on embedded data, a few minutes)::

    python bench/gpu_campaign.py --out /tmp/campaign --parameter-set "" --minutes 0.5 --speed-size 64 8
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib import atomic, checkpoint, paths  # noqa: E402
from ctlib.runs import archive, execute  # noqa: E402

NOTEBOOKS = {
    "preprocess": "notebooks/slice_interp/2026-11-23_01_preprocess.ipynb",
    "vae": "notebooks/slice_interp/2026-11-23_02_vae.ipynb",
    "regressor": "notebooks/slice_interp/2026-11-23_05_regressor.ipynb",
    "diffusion": "notebooks/slice_interp/2026-11-23_03_diffusion.ipynb",
}
STEPS = ("preprocess", "models", "diffusion", "evaluate", "speed")
CHECKPOINTS = {
    "vae": "checkpoints/vae.pt",
    "regressor": "checkpoints/regressor.pt",
    "diffusion": "checkpoints/diffusion.pt",
}
MAX_FILE_BYTES = 16 * 1024 * 1024
STATE = "campaign.json"


def record_run(
    notebook: str, parameter_set: str, overrides: dict[str, Any], checkpoint_file: str | None = None
) -> dict[str, Any]:
    """One notebook run (in this process): its id, status, seconds and error; when it completed, its metrics
    and, with ``checkpoint_file`` (relative to the run folder), the trained steps stored there."""
    result = execute.run_notebook(notebook, parameter_set or None, overrides, raise_on_failure=False)
    record = {
        "run_id": result.run_id,
        "status": result.status,
        "seconds": round(result.duration_s, 1),
        "error": result.error,
    }
    if result.status == "completed":
        record["metrics"] = execute.load_metrics(result.run_id)
        if checkpoint_file:
            saved = checkpoint.load_checkpoint(result.run_dir / checkpoint_file)
            record["trained_steps"] = int(saved["extra"].get("step", 0))
    return record


def _run(name: str, parameter_set: str, overrides: dict[str, Any]) -> dict[str, Any]:
    return record_run(NOTEBOOKS[name], parameter_set, overrides, CHECKPOINTS.get(name))


def _check(step: str, record: dict[str, Any]) -> None:
    if record["status"] != "completed":
        raise SystemExit(f"gpu_campaign: {step} run {record['run_id']} {record['status']}: {record['error']}")


def run_steps(steps: list[str], state: dict[str, Any], args: argparse.Namespace) -> None:
    """Run ``steps`` in order, recording each in ``state`` (saved after every step)."""
    budget = {"max_minutes": args.minutes}
    for step in steps:
        started = time.perf_counter()
        if step == "preprocess":
            state["preprocess"] = _run("preprocess", args.parameter_set, {})
            _check(step, state["preprocess"])
        elif step == "models":
            upstream = {"preprocess_run_id": state["preprocess"]["run_id"], **budget}
            with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
                futures = {
                    name: pool.submit(_run, name, args.parameter_set, upstream)
                    for name in ("vae", "regressor")
                }
                for name, future in futures.items():
                    state[name] = future.result()
            for name in ("vae", "regressor"):
                _check(name, state[name])
        elif step == "diffusion":
            state["diffusion"] = _run(
                "diffusion",
                args.parameter_set,
                {
                    "vae_run_id": state["vae"]["run_id"],
                    "regressor_run_id": state["regressor"]["run_id"],
                    **budget,
                },
            )
            _check(step, state["diffusion"])
        elif step == "evaluate":
            bench_script(
                "slice_interp_quality.py",
                args.out / "quality.json",
                "--diffusion-run",
                state["diffusion"]["run_id"],
                "--regressor-run",
                state["regressor"]["run_id"],
                "--targets",
                args.targets,
                "--max-openkbp",
                str(args.max_openkbp),
                *args.bench_args,
            )
        elif step == "speed":
            bench_script(
                "full_volume_speed.py",
                args.out / "speed.json",
                "--diffusion-run",
                state["diffusion"]["run_id"],
                "--size",
                *map(str, args.speed_size),
            )
        state.setdefault("seconds", {})[step] = round(time.perf_counter() - started, 1)
        atomic.write_json(paths.runs_dir() / STATE, state)
        print(f"gpu_campaign: {step} done in {state['seconds'][step]:.0f} s", flush=True)


def bench_script(script: str, out: Path, *arguments: str) -> None:
    """Run ``bench/<script> --out <out> <arguments>`` with this interpreter; a failure raises."""
    command = [sys.executable, str(paths.repo_root() / "bench" / script), "--out", str(out), *arguments]
    subprocess.run(command, check=True)


def card(state: dict[str, Any], out: Path, step: str) -> dict[str, Any]:
    """What the model card states beyond the run records: data, split, held-out metrics and protocol."""
    preprocess = state.get("preprocess", {})
    counts = {k: v for k, v in preprocess.get("metrics", {}).items() if k.startswith("n_")}
    info: dict[str, Any] = {
        "training_data": f"train split of preprocessing run {preprocess.get('run_id')} ($CTLIB_DATA_DIR, "
        f"parameter set {state.get('parameter_set') or 'defaults'}): {counts}",
        "split": "patient-wise, seeded (notebooks/slice_interp/2026-11-23_01_preprocess.ipynb): held out = "
        "OpenKBP test patients, the 2.5 mm chest CT, the aorta crop, the 1.0 mm upper-chest thin CT",
        "notes": f"GPU campaign (bench/gpu_campaign.py), max_minutes {state.get('minutes')} per loop",
    }
    quality = out / "quality.json"
    if quality.is_file():
        report = json.loads(quality.read_text())
        method = "diffusion" if step == "diffusion" else "regressor"
        mode = report.get("model", {}) and report["model"].get("mode") or "slab"
        cells = report.get("means", {}).get(mode, {})
        info["metrics"] = {
            f"{group} x6 {method} PSNR FULL (dB)": cell["x6"][method]["psnr_full_db"]
            for group, cell in cells.items()
            if method in cell.get("x6", {})
        }
        info["metrics"].update(
            {
                f"{group} x6 best classical PSNR FULL (dB)": cell["x6"][
                    cell["x6"]["best_classical"]["psnr_full_db"]
                ]["psnr_full_db"]
                for group, cell in cells.items()
                if "x6" in cell
            }
        )
        info["protocol"] = report.get("protocol_text", "")
    return info


def export_weights(state: dict[str, Any], out: Path) -> tuple[dict[str, Any], list[str]]:
    """The trained models as releases (``ctlib.studies.interp.release``, float16, size budget checked), each
    tarred into ``out`` and split into parts of at most 16 MB (``cat NAME.tar.part* > NAME.tar`` rebuilds it).
    """
    from ctlib.studies.interp import release

    staging = out / "weights_staging"
    exports = {
        "slice_interp_diffusion": ("diffusion", release.export_interpolator),
        "slice_interp_regressor": ("regressor", release.export_regressor),
    }
    written, left_out = {}, []
    for name, (step, export) in exports.items():
        if state.get(step, {}).get("status") != "completed":
            continue
        try:
            export(
                state[step]["run_id"], staging, name=name, precision="float16", card=card(state, out, step)
            )
        except Exception as err:  # the campaign's other results still come back
            left_out.append(f"{name}: export failed: {type(err).__name__}: {err}")
            continue
        archive_path = out / f"{name}.tar"
        with tarfile.open(archive_path, "w") as tar:
            tar.add(staging / name, arcname=name)
        written[name] = {"bytes": archive_path.stat().st_size, "parts": split_file(archive_path)}
    shutil.rmtree(staging, ignore_errors=True)
    return written, left_out


def split_file(path: Path, part_bytes: int = MAX_FILE_BYTES) -> list[str]:
    """Replace ``path`` by ``path.part0``, ``path.part1``, ... of at most ``part_bytes`` each."""
    parts = []
    with open(path, "rb") as source:
        while chunk := source.read(part_bytes):
            part = path.with_name(f"{path.name}.part{len(parts)}")
            part.write_bytes(chunk)
            parts.append(part.name)
    path.unlink()
    return parts


def collect(state: dict[str, Any], out: Path) -> list[str]:
    """Write ``campaign.json``, the light archive of the runs and the checkpoints that fit into ``out``."""
    names = [n for n in ("preprocess", "vae", "regressor", "diffusion") if n in state]
    staging = out / "runs_archive"
    copied = []
    for name in names:
        run_id = state[name]["run_id"]
        if state[name]["status"] == "completed":
            archive.archive_run(run_id, archive_root=staging)
            copied.append(run_id)
    if copied:
        with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
            tar.add(staging, arcname="experiments")
    shutil.rmtree(staging, ignore_errors=True)
    state["weights"], left_out = export_weights(state, out)
    state["left_out"] = left_out
    atomic.write_json(out / "campaign.json", state)
    return sorted(p.name for p in out.iterdir())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the folder that comes back (at most 8 files)"
    )
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--parameter-set", default="gpu-campaign", help="'' runs the notebooks' defaults")
    parser.add_argument("--minutes", type=float, default=3.5, help="max_minutes of each training loop")
    parser.add_argument("--targets", default="gpu", choices=["gpu", "cpu-real"])
    parser.add_argument("--max-openkbp", type=int, default=8, help="OpenKBP test patients scored (0: all 40)")
    parser.add_argument("--speed-size", type=int, nargs=2, default=[512, 50], metavar=("PIXELS", "THICK"))
    parser.add_argument(
        "--bench-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="passed to slice_interp_quality.py (e.g. --device cuda --steps 20)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    state_file = paths.runs_dir() / STATE
    resume = state_file.is_file() and args.steps[0] != "preprocess"
    state = json.loads(state_file.read_text()) if resume else {}
    state.update({"parameter_set": args.parameter_set, "minutes": args.minutes})
    started = time.perf_counter()
    try:
        run_steps(args.steps, state, args)
    finally:
        state["total_seconds"] = round(time.perf_counter() - started, 1)
        files = collect(state, args.out)
        print(f"gpu_campaign: {args.out}: {files}")
    return state


if __name__ == "__main__":
    main()
