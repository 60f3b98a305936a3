"""Benchmark: online triplet mining + loss, plain torch (ctlib) against pytorch-metric-learning (PML).

For each batch size and mining (batch-hard, semi-hard), one seeded batch of random Gaussian embeddings
``(B, D)`` with single-label class ids ``arange(B) % classes`` (balanced: B / classes per class) is
scored by ``ctlib.studies.retrieval.mining.triplet_loss`` with backend "torch" and backend "pml"
(``BatchHardMiner`` / ``TripletMarginMiner(type_of_triplets="semihard")`` + ``TripletMarginLoss`` with
``LpDistance(normalize_embeddings=True)``). The time is forward (mining + loss) plus backward to the
embeddings, per batch, median over ``--repeats`` after one warm-up, the two backends interleaved and
their order alternated every repeat, torch threads 1. Agreement: loss difference, largest gradient
difference, identical triplet counts. Random embeddings are the start of training, where semi-hard
mining finds the most triplets (about half of all (a, p, n) fall within the margin).

    python bench/retrieval_mining.py [--batch-sizes 32 128 512] [--dim 512] [--classes 8]
        [--margin 0.2] [--repeats 15] [--out bench/results/retrieval_mining.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib import atomic, paths, provenance  # noqa: E402
from ctlib.studies.retrieval import mining  # noqa: E402

PACKAGES = ("torch", "pytorch-metric-learning", "numpy")
BACKENDS = ("torch", "pml")


def step(embeddings: torch.Tensor, ids: torch.Tensor, kind: str, backend: str, margin: float) -> tuple:
    """One forward + backward; returns (seconds, loss, gradient, info)."""
    leaf = embeddings.clone().requires_grad_()
    start = time.perf_counter()
    loss, info = mining.triplet_loss(leaf, ids, margin=margin, mining=kind, backend=backend)
    loss.backward()
    return time.perf_counter() - start, loss.item(), leaf.grad, info


def measure(batch: int, dim: int, classes: int, kind: str, margin: float, repeats: int) -> dict:
    """Median times of both backends on one batch, and their agreement."""
    g = torch.Generator().manual_seed(batch)
    embeddings = torch.randn(batch, dim, generator=g)
    ids = torch.arange(batch) % classes
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    results = {b: step(embeddings, ids, kind, b, margin) for b in BACKENDS}  # warm-up, kept for agreement
    for r in range(repeats):
        for backend in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
            times[backend].append(step(embeddings, ids, kind, backend, margin)[0])
    (_, loss_t, grad_t, info_t), (_, loss_p, grad_p, info_p) = results["torch"], results["pml"]
    median = {b: statistics.median(times[b]) for b in BACKENDS}
    return {
        "batch_size": batch,
        "mining": kind,
        "triplets": info_t["triplets"],
        "fraction_active": round(info_t["fraction_active"], 6),
        "seconds_torch": round(median["torch"], 6),
        "seconds_pml": round(median["pml"], 6),
        "pml_over_torch": round(median["pml"] / median["torch"], 3),
        "loss_torch": loss_t,
        "loss_pml": loss_p,
        "loss_abs_diff": abs(loss_t - loss_p),
        "grad_max_abs_diff": float((grad_t - grad_p).abs().max()),
        "same_triplet_counts": info_t == info_p,
        "seconds_all_torch": [round(t, 6) for t in times["torch"]],
        "seconds_all_pml": [round(t, 6) for t in times["pml"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=15)
    default_out = paths.repo_root() / "bench" / "results" / "retrieval_mining.json"
    parser.add_argument("--out", default=str(default_out))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    machine = provenance.machine_info(PACKAGES)
    began = time.perf_counter()
    rows = []
    for batch in args.batch_sizes:
        for kind in ("batch_hard", "semi_hard"):
            rows.append(measure(batch, args.dim, args.classes, kind, args.margin, args.repeats))
            print({k: v for k, v in rows[-1].items() if not k.startswith("seconds_all")}, flush=True)
    agree = all(r["loss_abs_diff"] <= 1e-6 and r["same_triplet_counts"] for r in rows)
    result = {
        "benchmark": "retrieval_mining",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
        "settings": {
            "dim": args.dim,
            "classes": args.classes,
            "margin": args.margin,
            "repeats": args.repeats,
            "distance": "euclidean on L2-normalised embeddings",
        },
        "protocol": " ".join(__doc__.split("\n\n")[1].split()),
        "all_losses_agree_1e-6": agree,
        "wall_seconds": round(time.perf_counter() - began, 1),
        "rows": rows,
    }
    atomic.write_json(args.out, result)
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
