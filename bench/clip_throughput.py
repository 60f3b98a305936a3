"""Benchmark: CT-CLIP training throughput and zero-shot inference time per volume, per parameter set.

For each parameter set of the training notebook (``notebooks/clip3d/2026-12-03_02_clip_train``: the
defaults, ``cpu-real``, ``gpu``) and the volume shape of the matching preprocessing set, the model that
set builds (``training.model_config``) is timed on random uint8 volumes and reports:

- training: seconds per optimizer step (micro-batch of ``batch_size`` volume-report pairs, forward,
  symmetric contrastive loss, backward, AdamW; bf16 autocast when the set asks and the device has it),
  after 2 warm-up steps, median of ``--repeats``; volumes per second = batch / step time;
- inference: seconds per volume to score the 18 findings zero-shot (volume encoding at batch 1 plus
  the similarity to the 18 x 3 x 2 prompt embeddings computed once), median of ``--repeats``.

The anchor is CT-CLIP's reported inference, about 1.5 s per volume for the 18 findings (GPU, 480 x 480 x
240 volumes); CPU numbers are not comparable with it and are recorded for sizing the cpu-real set.

    python bench/clip_throughput.py [--sets default cpu-real gpu] [--device cpu] [--repeats 5]
        [--threads 0] [--out bench/results/clip_throughput.json]
"""

from __future__ import annotations

import argparse
import contextlib
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
from ctlib.models.ct_clip import CTClip, clip_loss  # noqa: E402
from ctlib.runs import params as run_params  # noqa: E402
from ctlib.studies.clip3d import findings, zero_shot  # noqa: E402
from ctlib.studies.clip3d import training as clip_training  # noqa: E402

TRAIN_NOTEBOOK = "notebooks/clip3d/2026-12-03_02_clip_train.ipynb"
PREPROCESS_NOTEBOOK = "notebooks/clip3d/2026-12-03_01_clip_preprocess.ipynb"
ANCHOR_S_PER_VOLUME = 1.5
PACKAGES = ("torch", "monai", "numpy")


def resolved(notebook: str, name: str) -> dict:
    """A notebook's parameters for a set name (``default``: the notebook's own defaults)."""
    return dict(run_params.resolve_parameters(notebook, None if name == "default" else name).values)


def measure(name: str, device: torch.device, repeats: int) -> dict:
    """Step and inference times of the model of one parameter set."""
    train = resolved(TRAIN_NOTEBOOK, name)
    shape = tuple(int(n) for n in resolved(PREPROCESS_NOTEBOOK, name)["target_shape"])
    torch.manual_seed(0)
    model = CTClip(clip_training.model_config(train, train["vocab_size"], shape[1])).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = int(train["batch_size"])
    volumes = torch.rand(batch, 1, *shape, device=device) * 2 - 1
    ids = torch.randint(4, int(train["vocab_size"]), (batch, int(train["max_tokens"])), device=device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    bf16 = train["amp"] == "bf16" and device.type == "cuda"

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = clip_loss(model(volumes, ids, mask))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()

    def timed(fn, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return out

    model.train()
    timed(step, 2)
    step_s = statistics.median(timed(step, repeats))
    model.eval()
    prompts = torch.randn(
        len(findings.FINDINGS), len(zero_shot.TEMPLATES), 2, model.config.embed_dim, device=device
    )
    prompts = torch.nn.functional.normalize(prompts, dim=-1)
    one = volumes[:1]

    @torch.no_grad()
    def infer() -> None:
        zero_shot.zero_shot_scores(model, model.encode_volume(one), prompts)
        sync()

    timed(infer, 2)
    infer_s = statistics.median(timed(infer, repeats))
    return {
        "set": name,
        "volume_shape": list(shape),
        "batch_size": batch,
        "slice_net": train["slice_net"],
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "bf16": bf16,
        "seconds_per_step": round(step_s, 4),
        "train_volumes_per_second": round(batch / step_s, 3),
        "inference_seconds_per_volume": round(infer_s, 4),
        "inference_vs_anchor": round(infer_s / ANCHOR_S_PER_VOLUME, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["default", "cpu-real", "gpu"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--out", default=str(paths.repo_root() / "bench" / "results" / "clip_throughput.json")
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = provenance.machine_info(PACKAGES)
    rows = [measure(name, device, args.repeats) for name in args.sets]
    result = {
        "benchmark": "clip_throughput",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "anchor": {"ct_clip_inference_seconds_per_volume": ANCHOR_S_PER_VOLUME, "note": "GPU, 480x480x240"},
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "rows": rows,
    }
    atomic.write_json(args.out, result)
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
