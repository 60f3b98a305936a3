"""Benchmark: latent-diffusion interpolation of one full volume, wall time and peak memory.

The seed's figure: a 512 x 512 x 300 thin volume from 50 thick slices (x6) with DDIM 20 steps takes 15 s on an
A100; our goal on one H200 is under 5 s. Input: the real 5 mm chest series of $CTLIB_DATA_DIR/thick_ct,
its first ``THICK`` slices, resized in-plane to ``PIXELS`` when that differs from 512 (a synthetic phantom
without the data). One warm-up call on a short volume first (allocator, cuDNN autotuning), then the timed call
(one sample, data consistency on, bf16 on CUDA). Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA,
the process's peak RSS on CPU.

    python bench/full_volume_speed.py --diffusion-run RUN [--size 512 50] [--steps 20] [--out speed.json]
"""

from __future__ import annotations

import argparse
import datetime
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib import atomic, paths, provenance  # noqa: E402
from ctlib.data import phantom  # noqa: E402
from ctlib.io import reader  # noqa: E402
from ctlib.io.volume import Volume  # noqa: E402
from ctlib.studies.interp import bundle, pipeline  # noqa: E402

THICK_SERIES = "thick_ct/lung-pet-ct-dx_A0001_chest_5mm.nii.gz"


def thick_input(pixels: int, n_thick: int) -> tuple[Volume, str]:
    """The first ``n_thick`` slices of the real 5 mm series (resized to ``pixels``), or a phantom."""
    root = paths.data_dir(required=False)
    if root is not None and (root / THICK_SERIES).is_file():
        volume, source = reader.read_volume(root / THICK_SERIES), THICK_SERIES
    else:
        volume, source = phantom.ct_phantom(shape=(n_thick, pixels, pixels), seed=0), "phantom"
    array = volume.array[:n_thick]
    if array.shape[1:] != (pixels, pixels):
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(array))[None], size=(pixels, pixels), mode="area"
        )[0].numpy()
        scale = array.shape[1] / pixels
        volume = volume.with_array(
            resized, spacing=(volume.spacing[0], volume.spacing[1] * scale, volume.spacing[2] * scale)
        )
    else:
        volume = volume.with_array(np.ascontiguousarray(array))
    return volume, source


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--diffusion-run", required=True, help="run id, run folder or checkpoint")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 50], metavar=("PIXELS", "THICK"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--window-depth", type=int, default=0, help="thin slices per z-window (0: whole volume)"
    )
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--out", type=Path, default=paths.repo_root() / "bench/results/full_volume_speed.json"
    )
    args = parser.parse_args(argv)
    pixels, n_thick = args.size
    interpolator = bundle.load_interpolator(args.diffusion_run, device=args.device)
    device = interpolator.device
    thick, source = thick_input(pixels, n_thick)
    factor = interpolator.spec.factor
    window = args.window_depth or n_thick * factor
    options = dict(
        steps=args.steps, window_depth=window, chunk=args.chunk, bf16=device.type == "cuda", progress=False
    )
    pipeline.interpolate_volume(thick.with_array(thick.array[:4]), interpolator, **options)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = pipeline.interpolate_volume(thick, interpolator, **options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    report = {
        "benchmark": "full_volume_speed: latent-diffusion interpolation of one volume, DDIM, one sample",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info(("torch", "monai", "numpy")),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "input": {"source": source, "thick_shape": list(thick.shape), "thin_shape": list(result.mean.shape)},
        "diffusion_run": args.diffusion_run,
        "settings": {**options, "factor": factor},
        "seconds": round(seconds, 3),
        "seconds_per_step": round(result.seconds_per_step, 4),
        "windows": len(result.windows),
        "peak_memory_mb": round(peak / 2**20, 1),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "goal_s": 5.0,
        "seed_reference_s": "15 s on an A100 (the seed's report)",
    }
    atomic.write_json(args.out, report)
    print(
        f"{report['input']['thin_shape']} in {seconds:.2f} s on {report['device']}, "
        f"peak {report['peak_memory_mb']:.0f} MB; wrote {args.out}"
    )
    return report


if __name__ == "__main__":
    main()
