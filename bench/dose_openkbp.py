"""Benchmark: OpenKBP dose score, DVH score and gamma pass rate of every trained dose variant, next to the
anchors.

Protocol (``ctlib.studies.dose.evaluation``, the same code as notebook 03): for each training run of notebook
02 given on the command line, every patient of ``--split`` (default ``test``: the 40 test patients of the
shared OpenKBP data) of the preprocessing run recorded in its checkpoint is predicted whole (sliding windows
of the run's validation size, overlap and blending; DDIM sampling with the run's steps and EMA weights for the
diffusion variant, noise seeded per patient) and set to 0 outside the possible-dose mask. Dose score = MAE in
Gy inside the possible-dose mask, mean over patients; DVH score = mean |error| in Gy of D99 / D95 / D1 (PTVs)
and D0.1cc / Dmean (OARs) pooled over every (patient, structure, metric) pair (the challenge's number);
gamma = global 3 % / 3 mm, 10 % cutoff, the planned dose as reference (``ctlib.metrics.gamma``), mean pass
rate over the patients it was computed on (``--gamma-max-patients``: the first N, 0 = all; the JSON states how
many). ``--diffusion-max-patients`` scores a diffusion variant on the first N patients only (sampling every
window is slow on a CPU; stated too).

Each variant's training budget comes from its run: steps, batch size, gradient accumulation, patch size, model
size, parameter set and options (``params.json``), wall time (``run.json`` ``duration_s``) and device. The
OpenKBP anchors (winner 2.43 / 1.48 Gy, plain 3D U-Net 2.77 / 2.20 Gy) are on the challenge's full 100-patient
test set.

    python bench/dose_openkbp.py [--train-runs <run id> ...] [--releases NAME ...] [--split test]
        [--threads 0] [--diffusion-max-patients 0] [--sample-steps 0] [--gamma-max-patients 0]
        [--tta] [--ensemble] [--snapshots N] [--merge] [--out bench/results/dose_openkbp.json]

``--tta`` adds each run with mirror test-time augmentation (the mean of the prediction and the un-mirrored
prediction of the left-right mirrored patient, Left / Right structures swapped); ``--snapshots N`` each run's
checkpoint ensemble (the mean of its final checkpoint and N - 1 earlier ones kept in ``<run>/snapshots/``, at
least ``--snapshot-gap`` steps apart); ``--ensemble`` the mean
of all runs given (e.g. seeds). Every entry names its ``evaluation`` ("plain", "mirror TTA", ...).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib import atomic, paths, provenance, runs  # noqa: E402
from ctlib.studies.dose import ensemble, evaluation, release_model  # noqa: E402
from ctlib.studies.dose.patient_file import list_dose_patients  # noqa: E402
from ctlib.train import distributed  # noqa: E402

PACKAGES = ("torch", "monai", "numpy", "scipy")
BUDGET_KEYS = (
    "model_kind",
    "steps",
    "batch_size",
    "grad_accum_steps",
    "patch_size",
    "lr",
    "amp",
    "num_res_units",
    "sw_roi",
    "sw_overlap",
    "max_train_patients",
    "seed",
    "train_on",
    "resolution_factor",
    "mirror_probability",
    "max_rotation_deg",
    "max_shift_voxels",
    "warmup_steps",
    "max_minutes",
    "threads",
)
KIND_KEYS = {
    "unet": ("loss", "ptv_weight", "oar_weight", "channels", "film_hidden"),
    "diffusion": (
        "diffusion_channels",
        "diffusion_attention",
        "prediction",
        "schedule",
        "min_snr_gamma",
        "ema_decay",
        "sample_steps",
    ),
}


def training_budget(run_id: str, bundle: evaluation.DoseModelBundle) -> dict:
    """What a training run spent: steps, batch, patch, model size, parameter set, wall time and device."""
    run_dir = runs.run_dir_of(run_id)
    record = runs.read_run(run_id)
    params_file = json.loads((run_dir / "params.json").read_text())
    params = params_file.get("parameters", {})
    device = record.device
    return {
        "parameter_set": params_file.get("parameter_set"),
        "overrides": params_file.get("overrides"),
        **{key: params[key] for key in (*BUDGET_KEYS, *KIND_KEYS[bundle.model_kind]) if key in params},
        "trained_steps": bundle.run.step,
        "samples_seen": (int(bundle.run.step or 0) * int(params.get("batch_size", 0))
                         * int(params.get("grad_accum_steps", 1))),
        "parameters_m": sum(p.numel() for p in bundle.module.parameters()) / 1e6,
        "wall_time_s": record.duration_s,
        "device": device.get("device_name") or f"CPU, {device.get('cpu_count')} cores",
        "git_commit": record.git_commit,
    }


def evaluate_run(run_id: str, args: argparse.Namespace, device: torch.device) -> tuple[dict, pd.DataFrame]:
    """Scores of one training run on the split, with its budget; and its per-patient rows."""
    bundle = evaluation.load_dose_run(
        runs.run_dir_of(run_id), device=device, sample_steps=args.sample_steps or None
    )
    return evaluate_bundle(bundle, run_id, "plain", args, device)


def snapshot_members(run_id: str, count: int, device: torch.device, tta: bool, gap: int) -> list:
    """A checkpoint ensemble: the run's final checkpoint and ``count - 1`` earlier ones kept in
    ``<run>/snapshots/``, going back from the final one at least ``gap`` steps apart; oldest first."""
    run_dir = runs.run_dir_of(run_id)
    final = evaluation.load_dose_run(run_dir, device=device, tta=tta)
    members = [final]
    # snapshot files are named by the time they were kept: newest first, loaded only until enough are found
    for path in sorted((run_dir / "snapshots").glob("*.pt"), reverse=True):
        if len(members) == count:
            break
        snap = evaluation.load_dose_run(run_dir, device=device, tta=tta, checkpoint=path)
        if (snap.run.step or 0) <= (members[-1].run.step or 0) - gap:
            members.append(snap)
    if len(members) < count:
        raise SystemExit(f"{run_id}: {len(members)} checkpoints {gap} steps apart kept, {count} asked for")
    return members[::-1]


def evaluate_bundle(bundle, run_id: str, evaluation_kind: str, args: argparse.Namespace,
                    device: torch.device) -> tuple[dict, pd.DataFrame]:
    """Scores of one model (a run's bundle, with or without TTA, or an ensemble) on the split."""
    first = bundle.members[-1] if isinstance(bundle, ensemble.DoseEnsemble) else bundle
    patients = list_dose_patients(runs.run_dir_of(first.preprocess_run_id), args.split)
    if not patients:
        raise SystemExit(
            f"{run_id}: no {args.split!r} patients in preprocessing run {first.preprocess_run_id}"
        )
    available = len(patients)
    if bundle.model_kind == "diffusion" and args.diffusion_max_patients:
        patients = patients[: args.diffusion_max_patients]
    gamma_n = args.gamma_max_patients or len(patients)
    gamma_options = {**evaluation.GAMMA_DEFAULTS, "device": device}
    t0 = time.perf_counter()

    def progress(row: dict) -> None:
        gamma_text = f", gamma {row['gamma_pass_percent']:.1f} %" if "gamma_pass_percent" in row else ""
        print(f"  {bundle.variant} {row['patient']}: dose score {row['dose_score_gy']:.2f} Gy, "
              f"DVH {row['dvh_score_gy']:.2f} Gy{gamma_text}", flush=True)

    parts = [
        evaluation.evaluate_patients(
            bundle, patients[:gamma_n], gamma_options=gamma_options, progress=progress
        )
    ]
    if patients[gamma_n:]:
        parts.append(
            evaluation.evaluate_patients(bundle, patients[gamma_n:], with_gamma=False, progress=progress)
        )
    scores = pd.concat([p.scores for p in parts], ignore_index=True)
    dvh = pd.concat([p.dvh for p in parts], ignore_index=True)
    summary = evaluation.summarize(scores, dvh).iloc[0]
    result = {
        "variant": bundle.variant,
        "train_run_id": run_id,
        "evaluation": evaluation_kind,
        "preprocess_run_id": first.preprocess_run_id,
        "patients": int(summary["patients"]),
        "patients_available": available,
        "dose_score_gy": float(summary["dose_score_gy"]),
        "dose_score_sd_gy": float(summary["dose_score_sd_gy"]),
        "dvh_score_gy": float(summary["dvh_score_gy"]),
        "dvh_score_patient_mean_gy": float(summary["dvh_score_patient_mean_gy"]),
        "dvh_pairs": int(len(dvh)),
        "gamma_pass_percent": float(scores["gamma_pass_percent"].mean()),
        "gamma_pass_sd_percent": float(scores["gamma_pass_percent"].std(ddof=1)) if gamma_n > 1 else None,
        "gamma_patients": int(scores["gamma_pass_percent"].notna().sum()),
        "evaluation_s": time.perf_counter() - t0,
        "evaluated_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "evaluation_device": str(device),
        "mean_predict_s": float(scores["predict_s"].mean()),
        "mean_gamma_s": float(scores["gamma_s"].mean()),
        "inference": {**{k: v for k, v in first.window_options.items() if k != "sw_device"},
                      "resolution_factor": int(first.model_config.get("resolution_factor", 1)),
                      "mirror_tta": bool(first.tta),
                      **({"ensemble_members": [f"{m.run_id} step {m.run.step}" for m in bundle.members]}
                         if isinstance(bundle, ensemble.DoseEnsemble) else {}),
                      **({"sample_steps": first.sample_steps, "sample_eta": first.sample_eta, "ema": True,
                          "seed": first.seed} if first.model_kind == "diffusion" else {})},
        "training_budget": (training_budget(first.run_id, first) if (paths.runs_dir() / first.run_id).is_dir()
                            else {"note": "the training run is not on this machine (a released model)"}),
    }
    return result, scores


def merged(old: dict, variants: list[dict], per_patient: list[dict]) -> tuple[list[dict], list[dict]]:
    """The variants and per-patient rows of an earlier report ``old`` whose training runs were not evaluated
    again, followed by the new ones (each variant keeps its own ``evaluated_utc`` and
    ``evaluation_device``)."""
    key = lambda v: (v["train_run_id"], v.get("evaluation", "plain"))  # noqa: E731
    fresh = {key(v) for v in variants}
    kept = [v for v in old["variants"] if key(v) not in fresh]
    for variant in kept:
        variant.setdefault("evaluated_utc", old.get("date"))
        variant.setdefault("evaluation_device", old.get("evaluation_device"))
    kept_ids = {key(v) for v in kept}
    rows = [r for r in old["per_patient"] if key(r) in kept_ids]
    return kept + variants, rows + per_patient


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--train-runs", nargs="*", default=[], help="run ids of notebook 02 (one per variant)"
    )
    parser.add_argument("--releases", nargs="*", default=None, metavar="NAME",
                        help="releases (weights/<NAME>) to score; default: dose_unet when no run is given")
    parser.add_argument("--split", default="test")
    parser.add_argument("--diffusion-max-patients", type=int, default=0, help="0: every patient")
    parser.add_argument(
        "--sample-steps", type=int, default=0, help="diffusion DDIM steps; 0: the training run's"
    )
    parser.add_argument(
        "--gamma-max-patients", type=int, default=0, help="gamma on the first N patients; 0: all"
    )
    parser.add_argument("--device", default="auto", help='"auto": CUDA if available, else CPU')
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=paths.repo_root() / "bench/results/dose_openkbp.json")
    parser.add_argument("--tta", action="store_true",
                        help="also score every run with mirror test-time augmentation")
    parser.add_argument("--ensemble", action="store_true",
                        help="also score the mean of the runs given (with mirror TTA too when --tta)")
    parser.add_argument("--snapshots", type=int, default=0, metavar="N",
                        help="also score each run's checkpoint ensemble: N kept checkpoints")
    parser.add_argument("--snapshot-gap", type=int, default=100, metavar="STEPS",
                        help="at least this many optimizer steps between the ensemble's checkpoints")
    parser.add_argument("--merge", action="store_true",
                        help="keep the variants already in --out whose training runs are not evaluated again")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = distributed.resolve_device(args.device, distributed.world_from_env())

    variants, per_patient = [], []

    def record_result(result: dict, scores: pd.DataFrame) -> None:
        variants.append(result)
        tagged = scores.assign(train_run_id=result["train_run_id"], evaluation=result["evaluation"])
        per_patient.append(tagged[["train_run_id", "evaluation", "variant", "patient", "dose_score_gy",
                                   "dvh_score_gy", "gamma_pass_percent"]])

    for run_id in args.train_runs:
        print(f"{run_id}:", flush=True)
        record_result(*evaluate_run(run_id, args, device))
        if args.tta:
            bundle = evaluation.load_dose_run(runs.run_dir_of(run_id), device=device, tta=True)
            bundle.variant += " + mirror TTA"
            record_result(*evaluate_bundle(bundle, run_id, "mirror TTA", args, device))
        for tta in ([False, True] if args.tta else [False]) if args.snapshots > 1 else []:
            members = snapshot_members(run_id, args.snapshots, device, tta, args.snapshot_gap)
            label = f"checkpoint ensemble of {args.snapshots}" + (" + mirror TTA" if tta else "")
            combined = ensemble.DoseEnsemble(members, variant=f"{members[-1].variant}, {label}")
            record_result(*evaluate_bundle(combined, run_id, label, args, device))
    for name in args.releases if args.releases is not None else ([] if args.train_runs else ["dose_unet"]):
        released = release_model.open_dose_release(name, device=device)
        bundle = released.model
        bundle.variant = f"release {name}"
        result, scores = evaluate_bundle(bundle, f"release:{name}", "release", args, device)
        result["release"] = {"name": name, "sha256": released.sha256,
                             "training_runs": [m.run_id for m in getattr(bundle, "members", [bundle])]}
        record_result(result, scores)
    if args.ensemble and len(args.train_runs) > 1:
        for tta in [False, True] if args.tta else [False]:
            members = [evaluation.load_dose_run(runs.run_dir_of(r), device=device, tta=tta)
                       for r in args.train_runs]
            label = f"seed ensemble of {len(members)}" + (" + mirror TTA" if tta else "")
            combined = ensemble.DoseEnsemble(members, variant=f"{members[0].variant}, {label}")
            record_result(*evaluate_bundle(combined, "+".join(args.train_runs), label, args, device))
    # NaN -> null
    per_patient = json.loads(pd.concat(per_patient, ignore_index=True).to_json(orient="records"))
    if args.merge and args.out.exists():
        variants, per_patient = merged(json.loads(args.out.read_text()), variants, per_patient)
    report = {
        "benchmark": "dose_openkbp: OpenKBP dose score, DVH score and gamma pass rate of every trained dose "
        "variant on the shared OpenKBP test patients, next to the published anchors",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info(PACKAGES),
        "evaluation_device": str(device),
        "torch_threads": torch.get_num_threads(),
        "protocol": {
            "split": args.split,
            "test_set": "the test patients of the shared OpenKBP data (40 of the challenge's 100 test "
            "patients)",
            "prediction": "whole volume, sliding windows (MONAI) of the training run's validation size, "
            "overlap and blending; diffusion: DDIM from the EMA weights, noise seeded per patient; "
            "0 outside the possible-dose mask",
            "dose_score": "MAE (Gy) inside the possible-dose mask, mean over patients",
            "dvh_score": "mean |error| (Gy) of D99/D95/D1 (PTVs) and D0.1cc/Dmean (OARs), pooled over every "
            "(patient, structure, metric) pair; missing structures skipped",
            "gamma": {
                **evaluation.GAMMA_DEFAULTS,
                "normalization": "global, planned maximum",
                "reference": "planned dose",
                "max_patients": args.gamma_max_patients or "all",
            },
            "diffusion_max_patients": args.diffusion_max_patients or "all",
            "diffusion_sample_steps": args.sample_steps or "the training run's sample_steps",
        },
        "anchors": [
            {
                "name": a.name,
                "dose_score_gy": a.dose_score_gy,
                "dvh_score_gy": a.dvh_score_gy,
                "test_patients": a.test_patients,
                "source": a.source,
            }
            for a in evaluation.ANCHORS
        ],
        "variants": variants,
        "per_patient": per_patient,
    }
    atomic.write_json(args.out, report)
    print(f"{'variant':>24} {'patients':>8} {'dose score':>10} {'DVH score':>9} {'gamma %':>8}")
    for v in variants:
        print(f"{v['variant']:>24} {v['patients']:>8} {v['dose_score_gy']:>10.2f} {v['dvh_score_gy']:>9.2f} "
              f"{v['gamma_pass_percent']:>8.1f}")
    for a in evaluation.ANCHORS:
        print(f"{a.name:>24} {a.test_patients:>8} {a.dose_score_gy:>10.2f} {a.dvh_score_gy:>9.2f} {'':>8}")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
