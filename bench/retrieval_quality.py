"""Benchmark record: retrieval quality of both training modes on the held-out split (issue 15).

Reads an evaluation run of notebook 03 (``--evaluate-run``; the training and preprocessing runs follow from
it) and writes what the issue asks to be stated: for the triplet and micro-F1 modes, the random-embedding
baseline and the label oracle, mAP@k, NDCG@k, P@k and R@k (k = 1, 3, 5, 10, 20) and micro / macro / weighted
F1, the within-source numbers, the protocol, the data, and each training budget and device. The runs
themselves are archived (``ctlib archive``); this file is their summary.

    python bench/retrieval_quality.py --evaluate-run RUN_ID [--out bench/results/retrieval_quality.json]
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
from ctlib.studies.retrieval import dataset, run_kind  # noqa: E402

METHODS = ("triplet", "micro_f1", "random", "oracle")


def _training(run: dict) -> dict:
    keys = ("mode", "mining", "margin", "n_classes", "n_samples", "batch_size", "backbone", "widths",
            "embedding_dim",
            "steps", "lr", "max_minutes", "threads", "amp")  # fmt: skip
    return {
        "run_id": run["run_id"], "parameter_set": run["parameter_set"], "device": run["device"],
        "minutes": round((run["duration_s"] or 0) / 60, 1),
        "trained_steps": run["metrics"].get("trained_steps"),
        "selected_step": run["metrics"].get("best_step"), "parameters_m": run["metrics"].get("parameters_m"),
        "settings": {k: run["parameters"].get(k) for k in keys},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate-run", required=True)
    parser.add_argument(
        "--out", default=str(paths.repo_root() / "bench" / "results" / "retrieval_quality.json")
    )
    args = parser.parse_args(argv)
    evaluate_dir = runs.run_dir_of(args.evaluate_run)
    evaluate = run_summary(evaluate_dir)
    m = evaluate["metrics"]
    trainings = {mode: run_summary(runs.run_dir_of(rid)) for mode, rid in m["train_runs"].items()}
    preprocess_id = run_kind.RetrievalRun.load(m["train_runs"]["triplet"]).preprocess_run_id
    preprocess_dir = runs.run_dir_of(preprocess_id)
    table = pd.read_csv(evaluate_dir / "retrieval_table.csv", index_col=0)
    per_method = {method: {k: float(v) for k, v in table.loc[method].dropna().items()} for method in METHODS}
    splits = {}
    for name in ("train", "validation", "test"):
        split = dataset.RetrievalSplit.load(preprocess_dir / "splits" / f"{name}.npz")
        splits[name] = {"cases": len(split), "patients": len(set(split.patient_ids)),
                        "sources": pd.Series(split.sources).value_counts().to_dict()}  # fmt: skip
    result = {
        "benchmark": "retrieval_quality",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": {
            "split": m["split"], "queries": m["queries"], "labels": m["labels"],
            "gallery": "the split itself; every case is a query, excluded from its own gallery",
            "relevance": "Jaccard of the label sets; NDCG graded, P/R/mAP binarised at >= "
            f"{m['relevance_threshold']}",
            "map_at_k": "sum of P@i at relevant ranks / min(k, relevant items); no relevant item -> 0",
            "queries_without_relevant": m["queries_without_relevant"],
            "search": f"faiss GalleryIndex, kind {m['index_kind']}",
            "label_prediction": "micro_f1: head sigmoid >= 0.5; triplet and random: "
            f"{m['knn_k']}-NN vote over the training split (>= half of the neighbours)",
            "oracle": "similarity = relevance (best possible ranking up to ties); no label prediction",
        },
        "methods": per_method,
        "within_source": {k: v for k, v in m.items() if k.startswith("within_")},
        "data": {"preprocess_run_id": preprocess_id, "splits": splits,
                 "input_shape": run_summary(preprocess_dir)["parameters"].get("input_shape")},
        "training": {mode: _training(run) for mode, run in trainings.items()},
        "evaluate_run_id": evaluate["run_id"],
    }  # fmt: skip
    atomic.write_json(args.out, result)
    print(f"wrote {args.out}")
    for method in METHODS:
        row = per_method[method]
        print(
            f"{method:>9}: mAP@10 {row.get('mAP@10', float('nan')):.3f}  "
            f"NDCG@10 {row.get('NDCG@10', float('nan')):.3f}"
            f"  micro-F1 {row.get('micro', float('nan')):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
