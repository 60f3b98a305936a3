"""Benchmark: slice-interpolation quality on held-out real CT, every method side by side.

Protocol (../shared/DESIGN.md, "Evaluation protocols"): the held-out volumes are the test split of the
preprocessing run behind the diffusion run (OpenKBP test patients, the real chest CT, the 1.5 mm aorta
crop: none of them in any training set). Each volume's native spacing is "thin"; thick slices are
simulated as slab means (or decimation, as the model was trained) at x2, x4 and x6. Only synthesized
slices are scored, inside the body mask: PSNR per volume in the FULL window [-1024, 3071] HU -> [0, 1]
and in the soft-tissue window (L 50, W 350), then averaged over volumes; SSIM = mean of per-axial-slice
2D SSIM (FULL window). Linear and cubic run at every factor; the regressor and latent diffusion at the
factor they were trained for (``ctlib.studies.interp.evaluation.compare_methods``). Also recorded: the VAE's
reconstruction PSNR of the thin volumes (the ceiling of any latent method) and diffusion's slab residual
in HU before and after data consistency. Goal: diffusion >= 2 dB above the best of linear and cubic in
the FULL window; VAE reconstruction >= 37 dB (MAISI's VAE on unseen CT at the same 16x compression).

    python bench/slice_interp_quality.py --diffusion-run RUN [--regressor-run RUN] [--max-openkbp 8]
        [--steps 20] [--samples 1] [--out bench/results/slice_interp_quality.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib import atomic, paths, provenance, runs  # noqa: E402
from ctlib.data import body_mask, cache, windows  # noqa: E402
from ctlib.metrics import image_quality  # noqa: E402
from ctlib.models import slice_codec  # noqa: E402
from ctlib.studies.interp import bundle, datasets, evaluation, regression  # noqa: E402

GOAL_MARGIN_DB = 2.0
GOAL_VAE_DB = 37.0
PACKAGES = ("torch", "monai", "numpy")


def held_out_volumes(preprocess_run_id: str, split: str, max_openkbp: int) -> list[tuple[str, Path]]:
    """The split's volumes: every non-OpenKBP volume, and the first ``max_openkbp`` OpenKBP ones (0: all)."""
    volumes = datasets.load_split(preprocess_run_id, split)
    openkbp = [v for v in volumes if v[0].startswith("openkbp")]
    others = [v for v in volumes if not v[0].startswith("openkbp")]
    return others + (openkbp[:max_openkbp] if max_openkbp else openkbp)


def vae_reconstruction(interpolator: bundle.Interpolator, volume, chunk: int) -> dict[str, float]:
    """PSNR (both windows) of the VAE's reconstruction of every thin slice, inside the body."""
    codec = slice_codec.SliceCodec(
        interpolator.vae, interpolator.window, interpolator.scale_factor, chunk=chunk
    )
    recon = codec.reconstruct(volume.array)
    mask = body_mask.body_mask(volume)
    return {
        f"vae_psnr_{tag}_db": image_quality.psnr_hu(
            recon, volume.array, low_hu=w.low, high_hu=w.high, mask=mask
        )
        for tag, w in (("full", windows.FULL), ("soft", windows.SOFT_TISSUE))
    }


def summarize(results: pd.DataFrame, recon: pd.DataFrame, consistency: pd.DataFrame) -> dict:
    """Means over volumes per factor and method, per cohort (OpenKBP test / the others) and overall."""
    results = results.assign(cohort=np.where(results["volume_id"].str.startswith("openkbp"), "openkbp_test",
                                             results["volume_id"]))
    columns = ["psnr_full_db", "psnr_soft_db", "ssim_full", "slab_residual_hu"]
    table: dict = {}
    for cohort, part in [("all", results), *results.groupby("cohort")]:
        means = part.groupby(["factor", "method"])[columns].mean()
        table[cohort] = {
            f"x{f}": {
                m: {c: round(float(v), 4) for c, v in row.items()}
                for (ff, m), row in means.iterrows()
                if ff == f
            }
            for f in sorted(part["factor"].unique())
        }
    verdicts = {}
    for factor_key, methods in table["all"].items():
        if "diffusion" not in methods:
            continue
        best = max(("linear", "cubic"), key=lambda m: methods[m]["psnr_full_db"])
        margin = methods["diffusion"]["psnr_full_db"] - methods[best]["psnr_full_db"]
        verdicts[factor_key] = {"best_classic": best, "diffusion_minus_best_classic_db": round(margin, 3),
                                "goal_margin_db": GOAL_MARGIN_DB, "pass": margin >= GOAL_MARGIN_DB}
        if "regressor" in methods:
            verdicts[factor_key]["diffusion_minus_regressor_db"] = round(
                methods["diffusion"]["psnr_full_db"] - methods["regressor"]["psnr_full_db"], 3)
    vae_full = float(recon["vae_psnr_full_db"].mean())
    return {
        "means_by_cohort": table,
        "diffusion_vs_classic": verdicts,
        "vae_reconstruction": {
            "psnr_full_db": round(vae_full, 3),
            "psnr_soft_db": round(float(recon["vae_psnr_soft_db"].mean()), 3),
            "goal_db": GOAL_VAE_DB,
            "pass": vae_full >= GOAL_VAE_DB,
        },
        "data_consistency_residual_hu": (
            {
                "before": round(float(consistency["residual_before_hu"].mean()), 3),
                "after": round(float(consistency["residual_after_hu"].mean()), 3),
            }
            if len(consistency)
            else None
        ),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--diffusion-run", required=True, help="run id of notebook slice_interp 03")
    parser.add_argument("--regressor-run", default="", help="run id of notebook slice_interp 05 (optional)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-openkbp", type=int, default=8, help="OpenKBP test patients scored (0: all 40)")
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--window-depth", type=int, default=48)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--out", type=Path, default=paths.repo_root() / "bench/results/slice_interp_quality.json"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    interpolator = bundle.load_interpolator(args.diffusion_run, device=args.device)
    regressor = (
        regression.load_regressor_run(args.regressor_run, device=args.device) if args.regressor_run else None
    )
    sampling = evaluation.SamplingOptions(sampler=args.sampler, steps=args.steps, samples=args.samples,
                                          window_depth=args.window_depth, chunk=args.chunk)
    preprocess_id = interpolator.meta["preprocess_run_id"]
    volumes = held_out_volumes(preprocess_id, args.split, args.max_openkbp)
    rows, recon_rows, dc_rows = [], [], []
    start = time.perf_counter()
    for volume_id, path in volumes:
        volume = cache.load_volume(path)
        recon_rows.append({"volume_id": volume_id, **vae_reconstruction(interpolator, volume, args.chunk)})
        for factor in args.factors:
            try:
                comparison = evaluation.compare_methods(
                    volume,
                    factor,
                    mode=interpolator.spec.mode,
                    interpolator=interpolator,
                    regressor=regressor,
                    sampling=sampling,
                )
            except ValueError as err:
                print(f"{volume_id} x{factor}: skipped ({err})")
                continue
            rows += [{"volume_id": volume_id, **row} for row in comparison.scores()]
            if comparison.consistency():
                dc_rows.append({"volume_id": volume_id, **comparison.consistency()})
        print(f"{volume_id}: done ({time.perf_counter() - start:.0f} s so far)", flush=True)
    results, recon, consistency = pd.DataFrame(rows), pd.DataFrame(recon_rows), pd.DataFrame(dc_rows)
    report = {
        "benchmark": "slice_interp_quality: linear / cubic / regressor / latent diffusion "
        "on held-out real CT",
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info(PACKAGES),
        "runs": {
            "diffusion": args.diffusion_run,
            "vae": interpolator.meta["vae_run_id"],
            "preprocess": preprocess_id,
            "regressor": args.regressor_run or None,
            "diffusion_params": runs.read_run(args.diffusion_run).parameter_set,
            "regressor_params": (
                runs.read_run(args.regressor_run).parameter_set if args.regressor_run else None
            ),
        },
        "model": {
            "prediction": interpolator.spec.prediction,
            "schedule": interpolator.spec.schedule,
            "factor": interpolator.spec.factor,
            "mode": interpolator.spec.mode,
            "weights": interpolator.meta["weights"],
        },
        "sampling": dataclasses.asdict(sampling),
        "volumes": [v for v, _ in volumes],
        "seconds": round(time.perf_counter() - start, 1),
        **summarize(results, recon, consistency),
        "per_volume": results.round(4).to_dict(orient="records"),
        "vae_per_volume": recon.round(4).to_dict(orient="records"),
    }
    atomic.write_json(args.out, report)
    for factor_key, methods in report["means_by_cohort"]["all"].items():
        print(factor_key, {m: round(v["psnr_full_db"], 2) for m, v in methods.items()})
    print("diffusion vs classic:", report["diffusion_vs_classic"])
    print(
        "VAE reconstruction:",
        report["vae_reconstruction"],
        "| DC residual:",
        report["data_consistency_residual_hu"],
    )
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
