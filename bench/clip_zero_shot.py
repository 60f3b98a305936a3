"""Benchmark record: zero-shot AUROC per finding of a CT-CLIP chain (preprocess 01, train 02, evaluate 03).

Reads an evaluation run (``--evaluate-run``; its training and preprocessing runs follow from it) and writes
what the issue asks to be stated: per-finding test AUROC with its patient-bootstrap 95 % CI, the threshold
protocol (fitted on validation, applied to test; both F1s), retrieval, the data (source, base anatomies,
studies per split, volume shape), the training budget (steps, minutes, device, parameter set) and the goal
verdict (mean AUROC over the inserted findings >= 0.85 for the cpu-real set). The runs themselves are
archived (``ctlib archive``); this file is their summary.

On the generated demonstration set, the numbers demonstrate the pipeline, not clinical accuracy.

    python bench/clip_zero_shot.py --evaluate-run RUN_ID [--goal 0.85] [--out bench/results/...json]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import pandas as pd

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run_summary import run_summary  # noqa: E402  (bench/run_summary.py)

from ctlib import atomic, paths, runs  # noqa: E402
from ctlib.studies.clip3d import h5store, run_kind  # noqa: E402

ANCHORS = {"CT-CLIP": 0.731, "fVLM": 0.778, "supervised pretraining": 0.838}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate-run", required=True)
    parser.add_argument("--goal", type=float, default=0.85)
    parser.add_argument("--out", default=str(paths.repo_root() / "bench" / "results" / "clip_zero_shot.json"))
    args = parser.parse_args(argv)
    evaluate_dir = runs.run_dir_of(args.evaluate_run)
    evaluate = run_summary(evaluate_dir)
    train_dir = runs.run_dir_of(evaluate["metrics"]["train_run_id"])
    train = run_summary(train_dir)
    preprocess_dir = runs.run_dir_of(str(run_kind.ClipRun.load(train_dir).preprocess_run_id))
    preprocess = run_summary(preprocess_dir)
    table = pd.read_csv(evaluate_dir / "findings.csv")
    evaluable = table[table["evaluable"]]
    splits = {}
    for name in ("train", "validation", "test"):
        with h5store.SplitFile(preprocess_dir / "splits" / f"{name}.h5") as split:
            splits[name] = {"studies": len(split), "patients": len(set(split.patient_ids))}
    mean_auroc = float(evaluable["auroc"].mean())
    result = {
        "benchmark": "clip_zero_shot",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "disclaimer": "generated demonstration set: demonstrates the pipeline, not clinical accuracy"
        if preprocess["parameters"].get("source") == "demo"
        else "CT-RATE",
        "protocol": evaluate["metrics"].get("protocol"),
        "threshold_rule": evaluate["parameters"].get("threshold_rule"),
        "data": {
            k: preprocess["parameters"].get(k)
            for k in ("source", "bases", "studies_per_base", "prevalence", "target_shape", "seed")
        }
        | {"splits": splits},
        "training": {
            "parameter_set": train["parameter_set"],
            "trained_steps": train["metrics"].get("trained_steps"),
            "minutes": round((train["duration_s"] or 0) / 60, 1),
            "device": train["device"],
            "parameters_m": train["metrics"].get("parameters_m"),
        },
        "per_finding": evaluable[
            [
                c
                for c in (
                    "finding",
                    "n_test",
                    "n_positive_test",
                    "auroc",
                    "auroc_ci_low",
                    "auroc_ci_high",
                    "threshold",
                    "precision",
                    "recall",
                    "f1_positive",
                    "f1_weighted",
                )
                if c in evaluable
            ]
        ].to_dict(orient="records"),
        "not_evaluable": table.loc[~table["evaluable"], "finding"].tolist(),
        "mean_auroc_inserted_findings": mean_auroc,
        "retrieval": {k: v for k, v in evaluate["metrics"].items() if "@" in k},
        "seconds_per_volume_inference": evaluate["metrics"].get("seconds_per_volume"),
        "anchors_ct_rate_internal_validation": ANCHORS,
        "goal": {"mean_auroc_at_least": args.goal, "met": bool(mean_auroc >= args.goal)},
        "runs": {
            "preprocess": preprocess["run_id"],
            "train": train["run_id"],
            "evaluate": evaluate["run_id"],
        },
    }
    atomic.write_json(args.out, result)
    print(
        f"mean AUROC over {len(evaluable)} findings: {mean_auroc:.3f} (goal {args.goal}): "
        f"{'met' if result['goal']['met'] else 'missed'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
