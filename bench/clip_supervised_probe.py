"""Benchmark: can the CT-CLIP volume encoder see the inserted findings at all? A supervised reference.

Zero-shot AUROC near 0.5 has two explanations: the volume encoder cannot separate the findings on a new
anatomy at this resolution (a data / vision problem), or it can, and the contrastive objective with a
text tower trained from scratch does not align them (a language problem). This bench trains the SAME
volume encoder (``SliceFusionEncoder`` with the training notebook's set, e.g. cpu-real) with a linear
head and per-finding binary cross-entropy on the labels of a preprocessing run's train split, for at most
``--max-minutes``, and reports validation and test AUROC per finding (rank AUROC, findings with both
classes only). Supervised training is the ceiling the zero-shot protocol is measured against (the
"supervised pretraining" anchor of CT-RATE, 0.838). Validation AUROC is logged during training; the
test split is scored once, at the end, with the final weights (no selection on test).

    python bench/clip_supervised_probe.py --preprocess-run RUN [--parameter-set cpu-real]
        [--max-minutes 15] [--out bench/results/clip_supervised_probe.json]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib import atomic, paths, provenance  # noqa: E402
from ctlib.metrics import classification  # noqa: E402
from ctlib.models.slice_fusion import SliceFusionConfig, SliceFusionEncoder  # noqa: E402
from ctlib.runs import params as run_params  # noqa: E402
from ctlib.studies.clip3d import h5store, training  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAIN_NOTEBOOK = ROOT / "notebooks" / "clip3d" / "2026-12-03_02_clip_train.ipynb"


def encoder_config(parameter_set: str, slice_size: int) -> SliceFusionConfig:
    """The volume encoder the training notebook builds with ``parameter_set`` (``training.model_config``)."""
    params = run_params.resolve_parameters(TRAIN_NOTEBOOK, parameter_set).values
    config = training.model_config(params, int(params["vocab_size"]), slice_size)
    return SliceFusionConfig.from_dict(config.vision)


def load_split(run_dir: Path, name: str) -> tuple[torch.Tensor, np.ndarray, tuple[str, ...]]:
    with h5store.SplitFile(run_dir / "splits" / f"{name}.h5") as split:
        volumes = torch.from_numpy(split.volumes_uint8())
        return volumes, split.labels.astype(bool), split.findings


@torch.no_grad()
def scores(model: nn.Module, volumes: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    model.eval()
    out = [
        model(training.model_input(volumes[s : s + batch_size])[:, None])
        for s in range(0, len(volumes), batch_size)
    ]
    model.train()
    return torch.cat(out).numpy()


def aurocs(labels: np.ndarray, logits: np.ndarray, findings: tuple[str, ...]) -> dict[str, float]:
    """Rank AUROC per finding with both classes present."""
    return {
        f: classification.auroc(labels[:, j], logits[:, j])
        for j, f in enumerate(findings)
        if 0 < labels[:, j].sum() < len(labels)
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preprocess-run", required=True)
    parser.add_argument("--parameter-set", default="cpu-real")
    parser.add_argument("--max-minutes", type=float, default=15.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--validate-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "clip_supervised_probe.json")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    run_dir = paths.runs_dir() / args.preprocess_run
    train_x, train_y, findings = load_split(run_dir, "train")
    config = encoder_config(args.parameter_set, int(train_x.shape[-1]))
    trained = [j for j in range(len(findings)) if 0 < train_y[:, j].sum() < len(train_y)]
    names = tuple(findings[j] for j in trained)
    model = nn.Sequential(SliceFusionEncoder(config), nn.Linear(config.feature_dim, len(trained)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    positives = torch.from_numpy(train_y[:, trained].mean(0)).float()
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(1 - positives) / positives.clamp_min(1e-3))
    val_x, val_y, _ = load_split(run_dir, "validation")
    history, generator, step, start = [], torch.Generator().manual_seed(args.seed), 0, time.perf_counter()
    load_start = os.getloadavg()
    while time.perf_counter() - start < args.max_minutes * 60:
        index = torch.randint(len(train_x), (args.batch_size,), generator=generator)
        logits = model(training.model_input(train_x[index])[:, None])
        loss = loss_fn(logits, torch.from_numpy(train_y[index.numpy()][:, trained]).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % args.validate_every == 0:
            val = aurocs(val_y[:, trained], scores(model, val_x), names)
            val_mean = float(np.mean(list(val.values())))
            history.append({"step": step, "loss": float(loss.detach()), "val_mean_auroc": val_mean})
            print(
                f"step {step} loss {float(loss.detach()):.3f} val mean AUROC {val_mean:.3f}",
                flush=True,
            )
    minutes = (time.perf_counter() - start) / 60
    test_x, test_y, _ = load_split(run_dir, "test")
    val = aurocs(val_y[:, trained], scores(model, val_x), names)
    test = aurocs(test_y[:, trained], scores(model, test_x), names)
    report = {
        "benchmark": "clip_supervised_probe: the CT-CLIP volume encoder trained on the labels (BCE)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info()
        | {"load_average_at_start": list(load_start), "load_average_at_end": list(os.getloadavg())},
        "preprocess_run_id": args.preprocess_run,
        "encoder": config.to_dict(),
        "parameter_set": args.parameter_set,
        "training": {
            "steps": step,
            "minutes": round(minutes, 2),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "loss": "BCE with pos_weight (1 - p) / p per finding",
            "train_studies": len(train_x),
        },
        "history": history,
        "validation_auroc": val,
        "test_auroc": test,
        "validation_mean_auroc": float(np.mean(list(val.values()))) if val else math.nan,
        "test_mean_auroc": float(np.mean(list(test.values()))) if test else math.nan,
        "protocol": "rank AUROC per finding with both classes in the split, final weights (no selection on "
        "test); validation and test are base anatomies never seen in training",
    }
    atomic.write_json(args.out, report)
    print(f"test mean AUROC {report['test_mean_auroc']:.3f} over {len(test)} findings; wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
