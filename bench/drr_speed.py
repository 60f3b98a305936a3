"""Benchmark: ctlib's DRR projector against DiffDRR 0.6.1 on the shared chest CT, side by side in one run.

Same mu volume (the chest CT through ``ctlib.io.nifti.read_nifti`` and ``ctlib.physics.drr.volume_to_mu``,
60 keV, 512 x 512 x 133 at 0.703 x 0.703 x 2.5 mm), same geometry (cone beam, source 541 mm and detector
949 mm from the source, PA view) and same detector field: 640 mm square, 2.5 mm pixels at 256 x 256 and
1.25 mm at 512 x 512 (365 mm at the isocentre: the whole 360 mm axial field and 332 mm of z). Contenders:

- ``ctlib_planes``: ``render(method="planes", extent="voxels")``, Joseph's method (the fast path);
- ``ctlib_march``: ``render(method="march", extent="voxels", n_samples=256)``, the ray marcher, for reference;
- ``diffdrr_siddon``: DiffDRR's default renderer (Siddon, exact voxel intersections, nearest voxel);
- ``diffdrr_trilinear``: DiffDRR's trilinear renderer with ``n_points=256``.

DiffDRR gets the same mu as its density and the same rays through its own pose API
(``bench/diffdrr_anchor.py``; the largest source / pixel position difference is recorded). At 512 x 512
both DiffDRR renderers use its ``patch_size=256`` (4 chunks of 65,536 rays): Siddon on all 262,144 rays
at once needs about 10 GB.
After one warm-up each, the contenders run ``--repeats`` times interleaved, alternating the order
(``bench/timing.py``); reported: medians, ratios of medians (and of minima, robust to load spikes), relative
L2 errors of the warm-up images (whole image), and against the analytic line integrals of an ellipsoid
(``ctlib.physics.analytic``, 128^3 at 1 mm, the phantom of ``tests/test_physics_drr.py``).

Goal (issue 14): ctlib at least 5x faster than DiffDRR's Siddon and 2x faster than its trilinear mode, at
<= 1 % relative error against the analytic and the Siddon references.

DiffDRR is optional: without it only ctlib is timed. Install it without its heavy dependencies:
``pip install --no-deps diffdrr==0.6.1 && pip install torchio fastcore kornia pandas``.

    python bench/drr_speed.py [--sizes 256 512] [--repeats 5] [--device cpu] [--out PATH.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import diffdrr_anchor  # noqa: E402  (bench/diffdrr_anchor.py)
from timing import interleaved_times  # noqa: E402  (bench/timing.py)

from ctlib import atomic, paths, provenance  # noqa: E402
from ctlib.io.nifti import read_nifti  # noqa: E402
from ctlib.physics import analytic, drr  # noqa: E402

CT = "diffdrr_chest_ct/cxr.nii.gz"
FIELD_MM = 640.0
ANGLE_DEG = 0.0  # PA
N_SAMPLES = 256
PATCH_FROM = 512  # detectors this size and up: DiffDRR renders in patches of PATCH_SIZE^2 rays
PATCH_SIZE = 256
GOAL_SIDDON, GOAL_TRILINEAR, GOAL_ERROR = 5.0, 2.0, 0.01
PACKAGES = ("torch", "numpy", "diffdrr", "torchio")


def relative_l2(got: torch.Tensor, reference: torch.Tensor) -> float:
    got, reference = got.double().cpu(), reference.double().cpu()
    return float((got - reference).norm() / reference.norm())


def cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def analytic_errors(device: torch.device) -> dict[str, float]:
    """Largest relative L2 error (inside the shadow) against the ellipsoid's closed-form line integrals:
    cone (541 / 949 mm) and parallel beams, 96 x 96, views 0, 30 and 45 degrees, per method."""
    axes, centre, mu = (56.0, 48.0, 58.0), (2.0, -1.0, 1.0), 0.02
    volume = analytic.ellipsoid_volume((128, 128, 128), 1.0, axes, centre, mu).to(device)
    geometries = [drr.ConeBeam(detector_pixels=(96, 96)),
                  drr.ParallelBeam(detector_size_mm=(160.0, 160.0), detector_pixels=(96, 96))]
    angles = [0.0, 30.0, 45.0]
    worst: dict[str, float] = {}
    for method in ("planes", "march"):
        errors = []
        for geometry in geometries:
            images = drr.render(volume, (1.0, 1.0, 1.0), geometry, angles, n_samples=N_SAMPLES, method=method)
            for view, angle in enumerate(angles):
                origins, directions, _, _ = drr.detector_rays(geometry, angle, dtype=torch.float64)
                expected = analytic.ellipsoid_chord_mm(origins.numpy(), directions.numpy(), axes, centre) * mu
                shadow = expected > 0
                got = images[view].reshape(-1).double().cpu().numpy()[shadow]
                residual = np.linalg.norm(got - expected[shadow])
                errors.append(float(residual / np.linalg.norm(expected[shadow])))
        worst[method] = max(errors)
    return worst


def bench_size(mu: torch.Tensor, spacing: tuple[float, float, float], size: int, repeats: int,
               have_diffdrr: bool, device: torch.device) -> dict:
    geometry = drr.ConeBeam(detector_size_mm=(FIELD_MM, FIELD_MM), detector_pixels=(size, size))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):  # noqa: ANN001, ANN202
        def run() -> torch.Tensor:
            with torch.no_grad():
                image = fn()
            sync()
            return image
        return run

    runners = {
        "ctlib_planes": timed(lambda: drr.render(mu, spacing, geometry, ANGLE_DEG, method="planes",
                                                 extent="voxels")[0]),
        "ctlib_march": timed(lambda: drr.render(mu, spacing, geometry, ANGLE_DEG, method="march",
                                                extent="voxels", n_samples=N_SAMPLES)[0]),
    }
    patch = PATCH_SIZE if size >= PATCH_FROM else None
    mismatch = None
    if have_diffdrr:
        siddon = diffdrr_anchor.module(mu, spacing, geometry, "siddon", patch_size=patch).to(device)
        trilinear = diffdrr_anchor.module(mu, spacing, geometry, "trilinear", patch_size=patch).to(device)
        mismatch = diffdrr_anchor.geometry_mismatch_mm(siddon.cpu(), geometry, ANGLE_DEG)
        siddon.to(device)
        runners["diffdrr_siddon"] = timed(lambda: diffdrr_anchor.render(siddon, geometry, ANGLE_DEG))
        runners["diffdrr_trilinear"] = timed(
            lambda: diffdrr_anchor.render(trilinear, geometry, ANGLE_DEG, n_points=N_SAMPLES))
    load_before = os.getloadavg()
    warm, times = interleaved_times(runners, repeats)
    load_after = os.getloadavg()
    medians = {who: statistics.median(t) for who, t in times.items()}
    row: dict = {
        "detector_pixels": [size, size],
        "pixel_pitch_mm": FIELD_MM / size,
        "diffdrr_patch_size": patch,
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "median_s": medians,
        "times_s": times,
    }
    with torch.no_grad():  # the default volume box (edge voxel centres), for information
        centres = {m: drr.render(mu, spacing, geometry, ANGLE_DEG, method=m)[0] for m in ("planes", "march")}
    if have_diffdrr:
        ours, reference, tri = warm["ctlib_planes"], warm["diffdrr_siddon"], warm["diffdrr_trilinear"]
        row.update({
            "geometry_mismatch_mm": mismatch,
            "speedup_vs_siddon": medians["diffdrr_siddon"] / medians["ctlib_planes"],
            "speedup_vs_trilinear": medians["diffdrr_trilinear"] / medians["ctlib_planes"],
            "speedup_vs_siddon_of_minima": min(times["diffdrr_siddon"]) / min(times["ctlib_planes"]),
            "speedup_vs_trilinear_of_minima": min(times["diffdrr_trilinear"]) / min(times["ctlib_planes"]),
            "march_speedup_vs_siddon": medians["diffdrr_siddon"] / medians["ctlib_march"],
            "march_speedup_vs_trilinear": medians["diffdrr_trilinear"] / medians["ctlib_march"],
            "relative_l2": {
                "ctlib_planes_vs_siddon": relative_l2(ours, reference),
                "ctlib_planes_vs_trilinear": relative_l2(ours, tri),
                "ctlib_march_vs_siddon": relative_l2(warm["ctlib_march"], reference),
                "ctlib_planes_vs_ctlib_march": relative_l2(ours, warm["ctlib_march"]),
                "trilinear_vs_siddon": relative_l2(tri, reference),
                "ctlib_planes_default_box_vs_siddon": relative_l2(centres["planes"], reference),
                "ctlib_march_default_box_vs_siddon": relative_l2(centres["march"], reference),
            },
        })
    else:
        planes_vs_march = relative_l2(warm["ctlib_planes"], warm["ctlib_march"])
        row["relative_l2"] = {"ctlib_planes_vs_ctlib_march": planes_vs_march}
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/drr_speed[_gpu].json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    suffix = "" if device.type == "cpu" else "_gpu"
    out = args.out or paths.repo_root() / f"bench/results/drr_speed{suffix}.json"
    version = diffdrr_anchor.version()
    if version is None:
        print(f"DiffDRR not installed: timing ctlib only. Install it with: {diffdrr_anchor.INSTALL}")
    mu, spacing = drr.volume_to_mu(read_nifti(paths.data_dir() / CT), device=device)
    report: dict = {
        "benchmark": "drr_speed: ctlib.physics.drr (Joseph planes; ray march) vs DiffDRR 0.6.1 Siddon "
                     "and trilinear (256 points) on the shared chest CT, PA cone beam 541/949 mm, 640 mm "
                     "detector, medians of interleaved repeats",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info(PACKAGES),
        "cpu_name": cpu_name(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "diffdrr_version": version,
        "ct": CT,
        "ct_shape_zyx": list(mu.shape),
        "ct_spacing_mm_zyx": list(spacing),
        "geometry": {"source_to_isocentre_mm": 541.0, "source_to_detector_mm": 949.0,
                     "detector_size_mm": [FIELD_MM, FIELD_MM], "angle_deg": ANGLE_DEG},
        "repeats": args.repeats,
        "goal": {"speedup_vs_siddon_min": GOAL_SIDDON, "speedup_vs_trilinear_min": GOAL_TRILINEAR,
                 "relative_error_max": GOAL_ERROR},
        "analytic_ellipsoid_max_relative_l2": analytic_errors(device),
        "sizes": {},
    }
    for size in args.sizes:
        row = bench_size(mu, spacing, size, args.repeats, version is not None, device)
        if version is not None:
            errors = row["relative_l2"]
            row["pass"] = {
                "speed_vs_siddon": row["speedup_vs_siddon"] >= GOAL_SIDDON,
                "speed_vs_trilinear": row["speedup_vs_trilinear"] >= GOAL_TRILINEAR,
                "error_vs_siddon": errors["ctlib_planes_vs_siddon"] <= GOAL_ERROR,
                "error_vs_analytic": report["analytic_ellipsoid_max_relative_l2"]["planes"] <= GOAL_ERROR,
            }
        report["sizes"][str(size)] = row
        med = row["median_s"]
        print(f"{size} x {size}: " + ", ".join(f"{who} {s:.2f} s" for who, s in med.items())
              + f" | load {row['load_average_before'][0]:.2f} -> {row['load_average_after'][0]:.2f}")
        if version is not None:
            errors = row["relative_l2"]
            print(f"  ctlib planes is {row['speedup_vs_siddon']:.1f}x Siddon, "
                  f"{row['speedup_vs_trilinear']:.1f}x trilinear; relative L2 vs Siddon "
                  f"{errors['ctlib_planes_vs_siddon']:.3%}, vs trilinear "
                  f"{errors['ctlib_planes_vs_trilinear']:.3%}; pass {row['pass']}")
        atomic.write_json(out, report)  # after every size: a long run leaves what it measured
    print(f"analytic ellipsoid (max over views): {report['analytic_ellipsoid_max_relative_l2']}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
