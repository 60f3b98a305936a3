"""Benchmark: slice-interpolation quality on held-out real CT, every method side by side.

Protocol (../shared/DESIGN.md, "Evaluation protocols"; ``ctlib.studies.interp.scoring.Protocol``): the
held-out volumes are the test split of the slice-interpolation preprocessing defaults (OpenKBP test
patients, the chest CT at 2.5 mm, the 1.5 mm aorta crop, the 1.0 mm upper-chest thin CT; the 1.25 mm head
thin CT trains; no test volume is in any training set), read from the preprocessing run behind the models
when models are given (the in-plane size they trained at) or from $CTLIB_DATA_DIR at native size. Each
volume's native spacing is "thin"; thick slices are simulated at x2, x4 and x6 under two protocols: "slab"
(mean of factor thin slices, soft window L50/W350, the headline) and "decimate" (every factor-th slice
observed, soft window [-160, 240] HU, comparable with outside work). Only synthesized slices are scored
(decimation: from the first to the last observed slice), inside the body mask of the ground truth
(HU > -500, one in-plane opening, largest component, holes filled): PSNR per volume in the FULL window
[-1024, 3071] HU and in the soft window, SSIM = mean of per-axial-slice 2D SSIM (FULL window); means over
the volumes of each group (openkbp_test, chest_2.5mm, aorta_1.5mm, thin_1-1.25mm). Linear and cubic run
everywhere; the regressor and latent diffusion at the factor and thick model they were trained for. Also
recorded: the VAE's reconstruction PSNR of the thin volumes (the ceiling of any latent method) and
diffusion's slab residual in HU before and after data consistency. Targets at x6, FULL window, per group
(issue 12): cpu-real: VAE >= 30 dB, regressor >= best classical + 1.0 dB, diffusion >= best classical
+ 0.5 dB; gpu: VAE >= 35 dB, diffusion >= best classical + 2 dB and >= the regressor.

    python bench/slice_interp_quality.py [--diffusion-run RUN] [--regressor-run RUN] [--targets gpu]
        [--max-openkbp 0] [--max-inplane-size 0] [--steps 20] [--samples 1]
        [--out bench/results/slice_interp_quality.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
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
from ctlib.data import body_mask, cache, catalog, windows  # noqa: E402
from ctlib.metrics import image_quality  # noqa: E402
from ctlib.models import slice_codec  # noqa: E402
from ctlib.runs import params as run_params  # noqa: E402
from ctlib.studies.interp import (  # noqa: E402
    bundle,
    datasets,
    evaluation,
    pipeline,
    preprocess,
    regression,
    scoring,
    thick_slices,
)

PACKAGES = ("torch", "monai", "numpy")
PREPROCESS_NOTEBOOK = "notebooks/slice_interp/2026-11-23_01_preprocess.ipynb"
PROTOCOLS = {"slab": scoring.Protocol(), "decimate": scoring.Protocol.comparable()}
TARGETS = {  # at x6, FULL window, mean over the volumes of each group
    "cpu-real": {
        "vae_db": 30.0,
        "regressor_margin_db": 1.0,
        "diffusion_margin_db": 0.5,
        "beat_regressor": False,
    },
    "gpu": {"vae_db": 35.0, "regressor_margin_db": 1.0, "diffusion_margin_db": 2.0, "beat_regressor": True},
}
METRICS = ("psnr_full_db", "psnr_soft_db", "ssim_full")


def group_of(volume_id: str) -> str:
    """The reporting group of a held-out volume (by source and native slice spacing)."""
    if volume_id.startswith("openkbp"):
        return "openkbp_test"
    if volume_id.startswith("thin_ct"):
        return "thin_1-1.25mm"
    if "aorta" in volume_id:
        return "aorta_1.5mm"
    if "chest_ct" in volume_id:
        return "chest_2.5mm"
    return "other"


def held_out_from_data(data_root: Path) -> list[tuple[str, catalog.VolumeSource]]:
    """The test split of the preprocessing notebook's defaults, as sources read at native size."""
    defaults = run_params.notebook_defaults(PREPROCESS_NOTEBOOK)
    sources = catalog.select(catalog.discover(data_root), exclude=defaults["exclude_patterns"])
    fractions = {name: defaults[f"{name}_fraction"] for name in ("train", "validation", "test")}
    split = preprocess.split_of_sources(
        sources,
        fractions=fractions,
        seed=defaults["split_seed"],
        **{key: defaults[key] for key in ("held_out_patterns", "train_patterns", "same_patient_patterns")},
    )
    return [(s.volume_id, s) for s in sources if split[s.volume_id] == "test"]


def held_out_volumes(
    preprocess_run_id: str, data_root: Path | None, max_openkbp: int
) -> list[tuple[str, object]]:
    """``[(volume_id, cache path or source)]``: every non-OpenKBP volume and ``max_openkbp`` OpenKBP ones."""
    if preprocess_run_id:
        volumes = datasets.load_split(preprocess_run_id, "test")
    else:
        volumes = held_out_from_data(data_root or paths.data_dir(required=True))
    openkbp = [v for v in volumes if v[0].startswith("openkbp")]
    others = [v for v in volumes if not v[0].startswith("openkbp")]
    return others + (openkbp[:max_openkbp] if max_openkbp else openkbp)


def vae_reconstruction(interpolator: bundle.Interpolator, volume, chunk: int) -> dict[str, float]:
    """PSNR (FULL and L50/W350 windows) of the VAE's reconstruction of every thin slice, inside the body.

    For a residual model (``spec.baseline``) also the ceiling of its formulation at its factor and thick
    model: ``B + D(z(thin)) - D(z(B))`` scored like the methods (synthesized slices, body of the truth).
    """
    codec = slice_codec.SliceCodec(
        interpolator.vae, interpolator.window, interpolator.scale_factor, chunk=chunk
    )
    recon = codec.reconstruct(volume.array)
    mask = body_mask.body_mask(volume)
    out = {
        f"vae_psnr_{tag}_db": image_quality.psnr_hu(
            recon, volume.array, low_hu=w.low, high_hu=w.high, mask=mask
        )
        for tag, w in (("full", windows.FULL), ("soft", windows.SOFT_TISSUE))
    }
    if interpolator.spec.residual:
        protocol = next(p for p in PROTOCOLS.values() if p.mode == interpolator.spec.mode)
        pair = protocol.pair(volume, interpolator.spec.factor)
        linear = thick_slices.upsample_z(pair.thick, pair.factor, "linear", n_thin=pair.thin.shape[0])
        base = pipeline.baseline_estimate(linear, interpolator)
        size = base.shape[1:]
        ceiling = (
            base + codec.decode(codec.encode(pair.thin.array), size) - codec.decode(codec.encode(base), size)
        )
        scores = scoring.evaluate(ceiling, pair, protocol)
        out["vae_residual_psnr_full_db"] = scores["psnr_full_db"]
        out["vae_residual_psnr_soft_db"] = scores["psnr_soft_db"]
    return out


def _cells(results: pd.DataFrame) -> dict:
    """``{protocol: {group: {xF: {method: means, "best_classical": {metric: method}}}}}``."""
    table: dict = {}
    frames = [results, results.assign(group="all")]
    for (protocol, group, factor), part in pd.concat(frames).groupby(["protocol", "group", "factor"]):
        means = part.groupby("method")[list(METRICS)].mean()
        cell = {m: {c: round(float(v), 4) for c, v in row.items()} for m, row in means.iterrows()}
        classical = [m for m in evaluation.CLASSIC if m in means.index]
        cell["best_classical"] = {c: max(classical, key=lambda m, c=c: means.loc[m, c]) for c in METRICS}
        cell["volumes"] = int(part["volume_id"].nunique())
        table.setdefault(protocol, {}).setdefault(group, {})[f"x{factor}"] = cell
    return table


def verdicts(table: dict, recon: pd.DataFrame, targets: dict, model_mode: str | None) -> dict:
    """Each group's x6 FULL-window margins against the targets (only where the model ran)."""
    out: dict = {}
    if not model_mode or model_mode not in table:
        return out
    for group, factors in table[model_mode].items():
        cell = factors.get("x6")
        if not cell:
            continue
        best = cell["best_classical"]["psnr_full_db"]
        base = cell[best]["psnr_full_db"]
        row: dict = {"best_classical": best, "best_classical_db": base}
        if "regressor" in cell:
            margin = cell["regressor"]["psnr_full_db"] - base
            row["regressor_minus_best_classical_db"] = round(margin, 3)
            row["regressor_pass"] = margin >= targets["regressor_margin_db"]
        if "diffusion" in cell:
            margin = cell["diffusion"]["psnr_full_db"] - base
            row["diffusion_minus_best_classical_db"] = round(margin, 3)
            row["diffusion_pass"] = margin >= targets["diffusion_margin_db"]
            if "regressor" in cell:
                gap = cell["diffusion"]["psnr_full_db"] - cell["regressor"]["psnr_full_db"]
                row["diffusion_minus_regressor_db"] = round(gap, 3)
                if targets["beat_regressor"]:
                    row["diffusion_pass"] = row["diffusion_pass"] and gap >= 0
        if len(recon) and group != "all":
            part = recon[recon["group"] == group]
            if len(part):
                row["vae_psnr_full_db"] = round(float(part["vae_psnr_full_db"].mean()), 3)
                row["vae_pass"] = row["vae_psnr_full_db"] >= targets["vae_db"]
                if "vae_residual_psnr_full_db" in part:  # the residual model's ceiling, x6 synthesized slices
                    row["vae_residual_psnr_full_db"] = round(
                        float(part["vae_residual_psnr_full_db"].mean()), 3
                    )
                    row["vae_residual_pass"] = row["vae_residual_psnr_full_db"] >= targets["vae_db"]
        out[group] = row
    return out


def load_held_out(item: object):
    """A held-out volume: read from its source, or from the preprocessing cache."""
    return item.load() if isinstance(item, catalog.VolumeSource) else cache.load_volume(item)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--diffusion-run", default="", help="run id of notebook slice_interp 03 (optional)")
    parser.add_argument("--regressor-run", default="", help="run id of notebook slice_interp 05 (optional)")
    parser.add_argument(
        "--preprocess-run",
        default="",
        help="held-out volumes from this run's cache "
        "(default: the diffusion or regressor run's; none: $CTLIB_DATA_DIR at native size)",
    )
    parser.add_argument("--targets", choices=sorted(TARGETS), default="cpu-real")
    parser.add_argument("--max-openkbp", type=int, default=0, help="OpenKBP test patients scored (0: all 40)")
    parser.add_argument(
        "--max-inplane-size",
        type=int,
        default=0,
        help="block-average every held-out volume in-plane to at most this many pixels (0: as read)",
    )
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--protocols", nargs="+", choices=sorted(PROTOCOLS), default=sorted(PROTOCOLS))
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

    interpolator = (
        bundle.load_interpolator(args.diffusion_run, device=args.device) if args.diffusion_run else None
    )
    regressor = (
        regression.load_regressor_run(args.regressor_run, device=args.device) if args.regressor_run else None
    )
    sampling = evaluation.SamplingOptions(
        sampler=args.sampler,
        steps=args.steps,
        samples=args.samples,
        window_depth=args.window_depth,
        chunk=args.chunk,
    )
    models = [m for m in (interpolator, regressor) if m is not None]
    preprocess_id = args.preprocess_run or next((m.meta.get("preprocess_run_id") or "" for m in models), "")
    volumes = held_out_volumes(preprocess_id, None, args.max_openkbp)
    model_mode = interpolator.spec.mode if interpolator else (regressor.mode if regressor else None)
    rows, recon_rows, dc_rows = [], [], []
    start = time.perf_counter()
    for volume_id, item in volumes:
        volume = cache.downsample_inplane(load_held_out(item), args.max_inplane_size)
        group = group_of(volume_id)
        if interpolator is not None:
            recon_rows.append(
                {
                    "volume_id": volume_id,
                    "group": group,
                    **vae_reconstruction(interpolator, volume, args.chunk),
                }
            )
        for name in args.protocols:
            protocol = PROTOCOLS[name]
            for factor in args.factors:
                try:
                    comparison = evaluation.compare_methods(
                        volume,
                        factor,
                        protocol=protocol,
                        interpolator=interpolator if model_mode == protocol.mode else None,
                        regressor=regressor
                        if regressor is not None and regressor.mode == protocol.mode
                        else None,
                        sampling=sampling,
                    )
                except ValueError as err:
                    print(f"{volume_id} {name} x{factor}: skipped ({err})")
                    continue
                rows += [
                    {"volume_id": volume_id, "group": group, "protocol": name, **row}
                    for row in comparison.scores()
                ]
                if comparison.consistency():
                    dc_rows.append({"volume_id": volume_id, "protocol": name, **comparison.consistency()})
        print(f"{volume_id} ({group}): done ({time.perf_counter() - start:.0f} s so far)", flush=True)
    results, recon = pd.DataFrame(rows), pd.DataFrame(recon_rows)
    table = _cells(results)
    report = {
        "benchmark": "slice_interp_quality: linear, cubic, regressor, latent diffusion on held-out real CT",
        "protocol_text": " ".join(__doc__.split("\n\n")[1].split()),
        "protocols": {name: PROTOCOLS[name].describe(6) for name in args.protocols},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info(PACKAGES),
        "runs": {
            "diffusion": args.diffusion_run or None,
            "vae": interpolator.meta["vae_run_id"] if interpolator else None,
            "preprocess": preprocess_id or None,
            "regressor": args.regressor_run or None,
            "parameter_sets": {
                name: runs.read_run(run_id).parameter_set
                for name, run_id in (("diffusion", args.diffusion_run), ("regressor", args.regressor_run))
                if run_id
            },
        },
        "model": (
            {
                "prediction": interpolator.spec.prediction,
                "schedule": interpolator.spec.schedule,
                "factor": interpolator.spec.factor,
                "mode": interpolator.spec.mode,
                "weights": interpolator.meta["weights"],
            }
            if interpolator
            else None
        ),
        "sampling": dataclasses.asdict(sampling) if interpolator else None,
        "volumes": {v: group_of(v) for v, _ in volumes},
        "max_inplane_size": args.max_inplane_size or None,
        "seconds": round(time.perf_counter() - start, 1),
        "targets": {"set": args.targets, **TARGETS[args.targets]},
        "means": table,
        "verdicts_x6_full": verdicts(table, recon, TARGETS[args.targets], model_mode),
        "data_consistency_residual_hu": (
            pd.DataFrame(dc_rows)[["residual_before_hu", "residual_after_hu"]].mean().round(3).to_dict()
            if dc_rows
            else None
        ),
        "per_volume": results.round(4).to_dict(orient="records"),
        "vae_per_volume": recon.round(4).to_dict(orient="records"),
    }
    atomic.write_json(args.out, report)
    for name, groups in table.items():
        for group, factors in groups.items():
            for factor, cell in factors.items():
                scores = {m: round(v["psnr_full_db"], 2) for m, v in cell.items() if m in evaluation.METHODS}
                print(
                    f"{name:8s} {group:14s} {factor}: {scores} best classical "
                    f"{cell['best_classical']['psnr_full_db']}"
                )
    print("verdicts:", report["verdicts_x6_full"])
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
