"""Benchmark: throughput versus score of dose U-Net sizes under one wall-clock budget (issue 16, part 1).

Protocol: every configuration (channels per level; one residual unit per level, FiLM hidden 32) trains the
coarse whole-patient recipe of notebook 02's cpu-real set (``ctlib.studies.dose.volume_dataset``:
the 80 OpenKBP training patients pooled by 2 to 64^3, left-right mirror / rotation / shift
augmentation, the structure-weighted MAE, AdamW 2e-3, 10 warm-up steps, ``WarmupCosineBudget`` over
``--minutes``, batch 2, seed 0) for the same wall time, one configuration after the other in this
process; then the dose score (MAE in Gy in the possible-dose mask, upsampled to the CT grid as
``inference.predict_patient`` does) on the first ``--val-patients`` validation patients. It records
steps per second, the parameters and the score, so the size of the cpu-real set is chosen from
measured points, not guessed. The numbers depend on the machine's load, which is recorded at the
start and the end.

    python bench/dose_recipe_curve.py --preprocess-run <id> [--minutes 8] [--threads 2] [--val-patients 6]
        [--channels 8,16,32,64 16,32,64,128 24,48,96,192] [--out bench/results/dose_recipe_curve.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib import atomic, paths, provenance, runs  # noqa: E402
from ctlib.metrics import dose_scores  # noqa: E402
from ctlib.models.dose_unet import DoseUNetConfig, build_dose_unet  # noqa: E402
from ctlib.studies.dose import augment, datasets, inference, losses, volume_dataset  # noqa: E402
from ctlib.studies.dose.patient_file import list_dose_patients, load_dose_patient  # noqa: E402
from ctlib.train import lr_schedules  # noqa: E402

FACTOR = 2


def train_one(
    channels: tuple[int, ...], data: volume_dataset.CoarseDoseVolumes, minutes: float, seed: int = 0
) -> tuple[torch.nn.Module, int, float]:
    """Train one size for ``minutes`` of wall time; the network, its steps and the seconds spent."""
    torch.manual_seed(seed)
    scales = datasets.constraint_scales(data.constraint_names, 80.0)
    net = build_dose_unet(
        DoseUNetConfig(
            in_channels=data.items[0]["inputs"].shape[0],
            channels=channels,
            num_res_units=1,
            film_hidden=32,
            constraint_scales=scales,
        )
    )
    module = losses.DoseLoss(
        net, "structure_weighted", roi_names=data.roi_names, ptv_weight=4.0, oar_weight=2.0
    )
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)
    schedule = lr_schedules.WarmupCosineBudget(10, 10**9, 60.0 * minutes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng, order, step = np.random.default_rng(seed), [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < 60.0 * minutes:
        if len(order) < 2:
            order += list(rng.permutation(len(data)))
        samples = [data.sample(order.pop(), rng) for _ in range(2)]
        batch = {
            k: torch.stack([s[k] for s in samples])
            for k in ("inputs", "constraints", "dose", "pdm", "masks")
        }
        loss, _ = module(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
    return net.eval(), step, time.perf_counter() - start


def score(net: torch.nn.Module, patients: list) -> float:
    """Mean dose score (Gy) of ``net`` on whole patients, predicted as notebook 03 does."""
    out = []
    for p in patients:
        pred = inference.predict_patient(
            net, p, resolution_factor=FACTOR, roi_size=data_shape(p), overlap=0.0
        )
        out.append(dose_scores.dose_score(pred, p.dose_gy, p.possible_dose_mask))
    return float(np.mean(out))


def data_shape(patient) -> list[int]:
    return [-(-n // (FACTOR * 8)) * 8 for n in patient.shape]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preprocess-run", required=True)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--val-patients", type=int, default=6)
    parser.add_argument(
        "--channels", nargs="+", default=["8,16,32,64", "16,32,64,128", "24,48,96,192"]
    )
    parser.add_argument(
        "--out", type=Path, default=paths.repo_root() / "bench/results/dose_recipe_curve.json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    folder = runs.run_dir_of(args.preprocess_run)
    augmentation = augment.AugmentConfig(0.5, 10.0, 3.0)
    data = volume_dataset.CoarseDoseVolumes(
        list_dose_patients(folder, "train"), factor=FACTOR, multiple=8, augmentation=augmentation
    )
    val = [
        load_dose_patient(p) for p in list_dose_patients(folder, "validation")[: args.val_patients]
    ]
    points = []
    for text in args.channels:
        channels = tuple(int(c) for c in text.split(","))
        net, steps, seconds = train_one(channels, data, args.minutes)
        point = {
            "channels": list(channels),
            "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "steps": steps,
            "seconds": seconds,
            "seconds_per_step": seconds / max(steps, 1),
            "val_dose_score_gy": score(net, val),
            "load_average_after": os.getloadavg(),
        }
        print(point, flush=True)
        points.append(point)
    report = {
        "benchmark": "dose_recipe_curve: dose U-Net sizes trained for the same wall time "
        "(coarse whole-patient recipe), throughput and validation dose score",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info(("torch", "monai", "numpy")),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_start,
        "protocol": {
            "preprocess_run_id": args.preprocess_run,
            "minutes_each": args.minutes,
            "val_patients": [p.patient_id for p in val],
            "batch_size": 2,
            "lr": 2e-3,
            "loss": "structure_weighted (PTV x5, OAR x3)",
            "resolution_factor": FACTOR,
            "augmentation": augmentation.to_dict(),
            "schedule": "WarmupCosineBudget over the minutes",
            "score": "dose score (MAE Gy in the possible-dose mask) on the CT grid, mean over patients",
        },
        "points": points,
    }
    atomic.write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
