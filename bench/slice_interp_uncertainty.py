"""Benchmark: does the released slice-interpolation model's uncertainty mean something? (issue 12.7)

Protocol: the released interpolator (weights/slice_interp_diffusion, residual latent diffusion over the
regressor) on the held-out volumes of bench/slice_interp_quality.py (same selection and loading: the test
split, the first --max-openkbp OpenKBP test patients, block-averaged in-plane to <= --max-inplane-size
pixels), x6 slab thick slices (mean of 6 thin slices). Each setting draws K samples (DDIM, seed 0,
z-windows of 48 thin slices) with data consistency; the per-voxel std of the draws is compared with
|mean - truth| over the scored voxels (synthesized slices inside the body mask of the truth) by
``ctlib.studies.interp.ablation.score``: Spearman rho (200 000 voxels drawn with seed 0), Pearson r, and
the calibration curve (mean |error| per std decile). PSNR of the mean in the FULL window [-1024, 3071] HU
checks consistency with the quality bench. The primary setting runs on every volume, the variants on the
first --variant-volumes (the list starts with one volume of each non-OpenKBP group, then OpenKBP). Goal
(issue 12.7): rho >= 0.5 per volume.

    python bench/slice_interp_uncertainty.py [--setting 2:0:4] [--variants 10:1:4 2:0:8]
        [--variant-volumes 4] [--max-openkbp 10] [--max-inplane-size 128] [--threads 1]
        [--out bench/results/slice_interp_uncertainty.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slice_interp_quality as quality  # noqa: E402

from ctlib import atomic, paths, provenance  # noqa: E402
from ctlib.data import cache  # noqa: E402
from ctlib.studies.interp import ablation, figures, release  # noqa: E402
from ctlib.viz import style  # noqa: E402

FACTOR = 6
PER_VOLUME = ["volume_id", "group", "setting", "psnr_full_db", "std_mean_hu", "std_error_spearman",
              "std_error_pearson", "residual_before_hu", "seconds"]


def parse_setting(text: str, sampler: str) -> ablation.Setting:
    """``STEPS:ETA:K`` -> ``ablation.Setting``."""
    steps, eta, samples = text.split(":")
    return ablation.Setting(sampler, int(steps), float(eta), int(samples))


def group_curves(calibration: pd.DataFrame) -> pd.DataFrame:
    """Mean over the volumes of each group (and "all") of the per-volume decile curves, per setting."""
    both = pd.concat([calibration, calibration[calibration["group"] != "variants"].assign(group="all")])
    keys = ["setting", "group", "bin"]
    return both.groupby(keys, sort=False)[["std_hu", "abs_error_hu"]].mean().reset_index()


def summaries(table: pd.DataFrame, curves: pd.DataFrame) -> dict:
    """Per setting and group: mean metrics, share of volumes at the goal, and the decile curve summary."""
    out: dict = {}
    every = pd.concat([table, table[table["group"] != "variants"].assign(group="all")])
    for (setting, group), part in every.groupby(["setting", "group"], sort=False):
        curve = curves[(curves["setting"] == setting) & (curves["group"] == group)]
        low, high = curve.iloc[0], curve.iloc[-1]
        out.setdefault(setting, {})[group] = {
            "volumes": len(part),
            **part[PER_VOLUME[3:]].mean().round(4).to_dict(),
            "volumes_at_goal": int((part["std_error_spearman"] >= ablation.RANK_CORRELATION_GOAL).sum()),
            "error_top_over_bottom_decile": round(float(high["abs_error_hu"] / low["abs_error_hu"]), 3),
            "error_over_std_mean": round(float((curve["abs_error_hu"] / curve["std_hu"]).mean()), 3),
            "deciles": curve[["bin", "std_hu", "abs_error_hu"]].round(3).to_dict(orient="records"),
        }
    return out


def draw(curves: pd.DataFrame, out: dict, primary: str, path: Path, meta: dict) -> None:
    """(a) the primary setting per group; (b) every setting on the variant volumes ("variants" group)."""
    style.apply_style()
    fig, (ax_g, ax_s) = plt.subplots(1, 2, figsize=(10.5, 4.6), layout="constrained")

    def label(setting: str, group: str) -> str:
        return f"rho {out[setting][group]['std_error_spearman']:.2f}"

    chosen = curves[(curves["setting"] == primary) & (curves["group"] != "variants")]
    figures.calibration_plot(
        {f"{g} ({label(primary, g)})": c for g, c in chosen.groupby("group", sort=False)},
        ax=ax_g, title=f"(a) per group, {primary}")
    subset = curves[curves["group"] == "variants"]
    figures.calibration_plot(
        {f"{s} ({label(s, 'variants')})": c for s, c in subset.groupby("setting", sort=False)},
        ax=ax_s, title="(b) per setting, variant volumes")
    style.save_figure(fig, path, meta)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--release", default=release.DEFAULT_INTERPOLATOR)
    parser.add_argument("--preprocess-run", default="", help="held-out volumes from this run's cache "
                        "(default: $CTLIB_DATA_DIR at native size, the release's preprocessing set)")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--setting", default="2:0:4", help="primary STEPS:ETA:K (the quality bench: 2 steps)")
    parser.add_argument("--variants", nargs="*", default=["10:1:4", "2:0:8"], help="STEPS:ETA:K each")
    parser.add_argument("--variant-volumes", type=int, default=4)
    parser.add_argument("--max-volumes", type=int, default=0, help="score only the first N volumes (0: all)")
    parser.add_argument("--max-openkbp", type=int, default=10)
    parser.add_argument("--max-inplane-size", type=int, default=128)
    parser.add_argument("--window-depth", type=int, default=48)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    results = paths.repo_root() / "bench/results"
    parser.add_argument("--out", type=Path, default=results / "slice_interp_uncertainty.json")
    parser.add_argument("--figure", type=Path, default=results / "slice_interp_uncertainty_calibration")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    interpolator = release.load_released_interpolator(args.release, device="cpu")
    primary = parse_setting(args.setting, args.sampler)
    variants = [parse_setting(v, args.sampler) for v in args.variants]
    volumes = quality.held_out_volumes(args.preprocess_run, None, args.max_openkbp)
    volumes = volumes[: args.max_volumes] if args.max_volumes else volumes
    report = {
        "benchmark": "slice_interp_uncertainty: std of K draws vs |error| of their mean, released model",
        "protocol_text": " ".join(__doc__.split("\n\n")[1].split()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info(quality.PACKAGES),
        "release": {key: interpolator.meta[key] for key in ("release", "name", "dtype", "weights", "source")},
        "settings": {"primary": primary.label, "variants": [v.label for v in variants], "factor": FACTOR,
                     "mode": "slab", "data_consistency": True, "seed": 0, "window_depth": args.window_depth,
                     "chunk": args.chunk, "threads": args.threads, "max_inplane_size": args.max_inplane_size,
                     "rank_max_voxels": ablation.RANK_MAX_VOXELS},
        "goal": f"Spearman rho(std, |error|) >= {ablation.RANK_CORRELATION_GOAL:g} per volume",
        "volumes": {v: quality.group_of(v) for v, _ in volumes},
    }
    # the primary setting on every volume first, then the variants on the first --variant-volumes
    work = [(i, v, [primary]) for i, v in enumerate(volumes)]
    work += [(i, v, variants) for i, v in enumerate(volumes[: args.variant_volumes]) if variants]
    tables, calibrations, start = [], [], time.perf_counter()
    kept: dict[int, object] = {}  # the variant volumes' pairs, read once for both passes
    for index, (volume_id, item), grid in work:
        pair = kept.pop(index, None)
        if pair is None:
            volume = cache.downsample_inplane(quality.load_held_out(item), args.max_inplane_size)
            pair = quality.PROTOCOLS["slab"].pair(volume, FACTOR)
            if index < args.variant_volumes and variants and grid is not variants:
                kept[index] = pair
        done = ablation.run_ablation({volume_id: pair}, interpolator, grid, seed=0,
                                     window_depth=args.window_depth, chunk=args.chunk, log=print)
        group = quality.group_of(volume_id)
        tables.append(done.table.assign(group=group, setting=[s.label for s in grid]))
        calibrations.append(done.calibration.assign(group=group))
        if index < args.variant_volumes:  # the same volumes again under one group, to compare settings
            tables.append(tables[-1].assign(group="variants"))
            calibrations.append(calibrations[-1].assign(group="variants"))
        table, calibration = pd.concat(tables, ignore_index=True), pd.concat(calibrations, ignore_index=True)
        curves, scored = group_curves(calibration), table[table["group"] != "variants"]
        out = summaries(table, curves)
        rho = out[primary.label]["all"]["std_error_spearman"]
        report.update({
            "seconds": round(time.perf_counter() - start, 1),
            "load_average_at_end": list(os.getloadavg()),
            "runs_done": len(scored),
            "summary": out,
            "verdict": {"primary_rho_mean": rho, "goal_met": bool(rho >= ablation.RANK_CORRELATION_GOAL),
                        "volumes_at_goal": out[primary.label]["all"]["volumes_at_goal"],
                        "volumes": out[primary.label]["all"]["volumes"]},
            "per_volume": scored[PER_VOLUME].round(4).to_dict(orient="records"),
            "calibration_per_volume": calibration[calibration["group"] != "variants"][
                ["volume_id", "group", "setting", "bin", "std_hu", "abs_error_hu", "voxels"]
            ].round(3).to_dict(orient="records"),
        })
        atomic.write_json(args.out, report)
        print(f"{volume_id} ({group}): done ({report['seconds']:.0f} s so far)", flush=True)
    draw(curves, out, primary.label, args.figure, {"benchmark": str(args.out), "date": report["date"],
                                                   "release": report["release"]})
    for setting, groups in out.items():
        for group, row in groups.items():
            print(f"{setting:28s} {group:14s} n={row['volumes']:2d} PSNR {row['psnr_full_db']:.2f} "
                  f"std {row['std_mean_hu']:.1f} HU rho {row['std_error_spearman']:.3f} "
                  f"r {row['std_error_pearson']:.3f} top/bottom decile error "
                  f"{row['error_top_over_bottom_decile']:.2f}")
    print("verdict:", report["verdict"], f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
