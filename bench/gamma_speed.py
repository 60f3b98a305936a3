"""Benchmark: ctlib's torch gamma index against ``pymedphys.gamma`` on real OpenKBP 128^3 dose pairs, side by
side.

Protocol: for each of the first ``--patients`` test patients of the shared OpenKBP data, the reference is
the planned dose and the evaluated dose a realistic perturbation of it: shifted by one voxel along z
(order-0 shift, zeros enter), smoothed by a Gaussian of one voxel sigma, scaled by 1.02. Both
implementations compute global gamma 3 % / 3 mm, normalized to the reference maximum, 10 % low-dose
cutoff, interp_fraction 10, max_gamma 2 (pymedphys' default max_gamma=None searches until every voxel's
gamma is bounded, which is slower; the pass rate is the same for any max_gamma >= 1), on the full
128^3 grid (no random subset). The pass rate of both is 100 * mean(gamma <= 1) over evaluated voxels.

Timing: both run with the same number of threads (``--threads``, default 1: the shared 2-core machine
runs other jobs, and multi-threaded timings there measure the scheduler more than the code);
pymedphys once per patient after a warm-up on a small grid (numba compilation), ctlib after one warm-up
call, ``--repeats`` times (median). The CUDA time is measured too when a GPU is present.

    python bench/gamma_speed.py [--patients 3] [--threads 1] [--repeats 3]
        [--out bench/results/gamma_speed.json]

On a GPU machine, ``--cuda-only`` adds the CUDA timings to an existing CPU report (``--baseline``) for its
patients, without re-running pymedphys there: each row gains ``ctlib_cuda_s`` (median of ``--repeats``
calls after a warm-up, synchronized), the CUDA pass rate and its difference to pymedphys, and the report
a ``cuda`` section naming the GPU machine. The CPU columns stay those measured on the CPU machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib import atomic, paths, provenance  # noqa: E402
from ctlib.io import openkbp  # noqa: E402
from ctlib.metrics import gamma  # noqa: E402

GOAL_SPEEDUP = 50.0
GOAL_PASS_DIFF = 0.5
PACKAGES = ("torch", "numpy", "scipy", "pymedphys", "numba")
CRITERIA = {
    "dose_percent": 3.0,
    "distance_mm": 3.0,
    "cutoff_percent": 10.0,
    "max_gamma": 2.0,
    "interp_fraction": 10,
}


def perturb(dose_gy: np.ndarray) -> np.ndarray:
    """The evaluated dose: one voxel shift along z, Gaussian smoothing (sigma one voxel), times 1.02."""
    shifted = ndimage.shift(dose_gy, (1, 0, 0), order=0, mode="constant", cval=0.0)
    return (ndimage.gaussian_filter(shifted, sigma=1.0) * 1.02).astype(np.float32)


def pymedphys_gamma(reference: np.ndarray, evaluated: np.ndarray, spacing_mm) -> np.ndarray:
    import pymedphys

    axes = tuple(np.arange(n) * s for n, s in zip(reference.shape, spacing_mm, strict=True))
    return pymedphys.gamma(
        axes,
        reference,
        axes,
        evaluated,
        CRITERIA["dose_percent"],
        CRITERIA["distance_mm"],
        lower_percent_dose_cutoff=CRITERIA["cutoff_percent"],
        interp_fraction=CRITERIA["interp_fraction"],
        max_gamma=CRITERIA["max_gamma"],
    )


def ours(reference, evaluated, spacing_mm, device: str | None = None) -> gamma.GammaResult:
    """One cold call on the inputs' device: the search plan (offsets grouped by cell,
    cached per spacing) is rebuilt and timed too."""
    gamma._search_plan.cache_clear()
    return gamma.gamma_index(reference, evaluated, spacing_mm, device=device, **CRITERIA)


def timed(run, *args):
    """``((wall seconds, process CPU seconds), result)``:
    CPU time is robust to other jobs on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(*args)
    return (time.perf_counter() - wall, time.process_time() - cpu), result


def time_cuda(reference: np.ndarray, evaluated: np.ndarray, spacing_mm,
              repeats: int) -> tuple[float | None, gamma.GammaResult | None]:
    """``(median seconds, result of the warm-up call)`` on CUDA; ``(None, None)`` without a GPU."""
    if not torch.cuda.is_available():
        return None, None
    ref, ev = torch.from_numpy(reference).cuda(), torch.from_numpy(evaluated).cuda()
    result = ours(ref, ev, spacing_mm)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        ours(ref, ev, spacing_mm)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def add_cuda_timings(baseline: dict, repeats: int) -> dict:
    """``baseline`` (a CPU report of ``main``) with CUDA times and pass rates of the same dose pairs added."""
    if not torch.cuda.is_available():
        raise SystemExit("--cuda-only needs a CUDA device")
    report = {**baseline, "patients": [dict(r) for r in baseline["patients"]]}
    for row in report["patients"]:
        patient = openkbp.read_openkbp_npz(paths.data_dir() / "openkbp" / "test" / f"{row['patient']}.npz")
        reference, spacing = patient.dose_gy, patient.ct.spacing
        evaluated = perturb(reference)
        row["ctlib_cuda_s"], result = time_cuda(reference, evaluated, spacing, repeats)
        row["ctlib_cuda_pass_rate_percent"] = result.pass_rate_percent
        row["cuda_pass_rate_diff_points"] = result.pass_rate_percent - row["pymedphys_pass_rate_percent"]
        row["speedup_cuda_vs_pymedphys_cpu"] = row["pymedphys_s"] / row["ctlib_cuda_s"]
        print(
            f"{row['patient']}: CUDA {row['ctlib_cuda_s'] * 1000:.1f} ms, pass "
            f"{result.pass_rate_percent:.3f} % (pymedphys {row['pymedphys_pass_rate_percent']:.3f} %)",
            flush=True,
        )
    rows = report["patients"]
    total = sum(r["ctlib_cuda_s"] for r in rows)
    report["ctlib_cuda_total_s"] = total
    report["cuda"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info(PACKAGES[:3]),
        "repeats": repeats,
        "ctlib_cuda_total_s": total,
        "speedup_cuda_vs_pymedphys_cpu_total": report["pymedphys_total_s"] / total,
        "speedup_cuda_vs_ctlib_cpu_total": report["ctlib_cpu_total_s"] / total,
        "max_abs_cuda_pass_rate_diff_points": max(abs(r["cuda_pass_rate_diff_points"]) for r in rows),
        "note": "CUDA times on the GPU machine named here; pymedphys and ctlib CPU times are the baseline's "
        "(the CPU machine under 'machine', threads as stated), so the CUDA ratios compare two machines",
    }
    report["note"] = "CUDA measured on the machine under 'cuda'"
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and numba (pymedphys)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=paths.repo_root() / "bench/results/gamma_speed.json")
    parser.add_argument("--cuda-only", action="store_true", help="add CUDA timings to --baseline (see above)")
    parser.add_argument("--baseline", type=Path, default=paths.repo_root() / "bench/results/gamma_speed.json")
    args = parser.parse_args(argv)
    if args.cuda_only:
        report = add_cuda_timings(json.loads(args.baseline.read_text()), args.repeats)
        atomic.write_json(args.out, report)
        print(
            f"CUDA total {report['ctlib_cuda_total_s']:.3f} s: "
            f"x{report['cuda']['speedup_cuda_vs_pymedphys_cpu_total']:.0f} vs pymedphys (CPU), max "
            f"|pass-rate diff| {report['cuda']['max_abs_cuda_pass_rate_diff_points']:.3f} points"
        )
        print(f"wrote {args.out}")
        return report
    import numba

    machine = provenance.machine_info(PACKAGES)  # load average before the run
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    files = sorted((paths.data_dir() / "openkbp" / "test").glob("pt_*.npz"), key=lambda p: int(p.stem[3:]))
    small = np.random.default_rng(0).random((8, 8, 8)) * 10
    pymedphys_gamma(small, small, (1.0, 1.0, 1.0))  # numba compiles here, not in the timed calls

    rows = []
    for path in files[:args.patients]:
        patient = openkbp.read_openkbp_npz(path)
        reference, spacing = patient.dose_gy, patient.ct.spacing
        evaluated = perturb(reference)
        (pymedphys_s, pymedphys_cpu_s), reference_gamma = timed(
            pymedphys_gamma, reference, evaluated, spacing
        )
        result = ours(reference, evaluated, spacing)
        cpu_times, process_times = [], []
        for _ in range(args.repeats):
            (wall, cpu), result = timed(ours, reference, evaluated, spacing)
            cpu_times.append(wall)
            process_times.append(cpu)
        valid = ~np.isnan(reference_gamma)
        pymedphys_pass = float(100.0 * np.mean(reference_gamma[valid] <= 1))
        ctlib_s = statistics.median(cpu_times)
        row = {
            "patient": patient.patient_id,
            "spacing_mm_zyx": [float(s) for s in spacing],
            "evaluated_voxels": result.evaluated_voxels,
            "same_evaluated_voxels": bool(np.array_equal(valid, ~np.isnan(result.gamma))),
            "pymedphys_s": pymedphys_s,
            "ctlib_cpu_s": ctlib_s,
            "ctlib_cpu_times_s": cpu_times,
            "speedup_cpu": pymedphys_s / ctlib_s,
            "pymedphys_process_cpu_s": pymedphys_cpu_s,
            "ctlib_process_cpu_s": statistics.median(process_times),
            "speedup_process_cpu": pymedphys_cpu_s / statistics.median(process_times),
            "ctlib_cuda_s": time_cuda(reference, evaluated, spacing, args.repeats)[0],
            "pymedphys_pass_rate_percent": pymedphys_pass,
            "ctlib_pass_rate_percent": result.pass_rate_percent,
            "pass_rate_diff_points": result.pass_rate_percent - pymedphys_pass,
            "max_abs_gamma_diff": float(np.nanmax(np.abs(result.gamma - reference_gamma))),
        }
        rows.append(row)
        print(
            f"{row['patient']}: pymedphys {pymedphys_s:.1f} s, ctlib {ctlib_s:.3f} s "
            f"(x{row['speedup_cpu']:.0f}); pass {pymedphys_pass:.3f} % vs {result.pass_rate_percent:.3f} %",
            flush=True,
        )

    total_pymedphys = sum(r["pymedphys_s"] for r in rows)
    total_ctlib = sum(r["ctlib_cpu_s"] for r in rows)
    worst_diff = max(abs(r["pass_rate_diff_points"]) for r in rows)
    cuda = [r["ctlib_cuda_s"] for r in rows if r["ctlib_cuda_s"] is not None]
    report = {
        "benchmark": "gamma_speed: ctlib.metrics.gamma.gamma_index (torch) vs pymedphys.gamma, "
        "same OpenKBP dose pairs",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "threads": args.threads,
        "protocol": {
            "data": f"shared OpenKBP test split, first {len(rows)} patients by id, full 128^3 grid, "
            "no random subset",
            "reference": "planned dose (Gy)",
            "evaluated": "planned dose shifted 1 voxel along z (order 0), Gaussian sigma 1 voxel, x 1.02",
            "criteria": "global gamma, normalization = reference max, cutoff = % of it, "
            "applied to the reference",
            **CRITERIA,
            "pass": "gamma <= 1, over voxels with reference dose >= cutoff",
            "timing": f"pymedphys once per patient after a numba warm-up; ctlib median of {args.repeats} "
            "calls after one warm-up, each rebuilding its search plan (cache cleared); both with the same "
            "thread count; wall seconds (perf_counter) and process CPU seconds (process_time, "
            "robust to other jobs on the machine)",
        },
        "patients": rows,
        "pymedphys_total_s": total_pymedphys,
        "ctlib_cpu_total_s": total_ctlib,
        "speedup_cpu_total": total_pymedphys / total_ctlib,
        "speedup_process_cpu_total": sum(r["pymedphys_process_cpu_s"] for r in rows)
        / sum(r["ctlib_process_cpu_s"] for r in rows),
        "ctlib_cuda_total_s": sum(cuda) if cuda else None,
        "max_abs_pass_rate_diff_points": worst_diff,
        "goal": {"speedup_min": GOAL_SPEEDUP, "pass_rate_diff_max_points": GOAL_PASS_DIFF},
        "pass": bool(total_pymedphys / total_ctlib >= GOAL_SPEEDUP and worst_diff <= GOAL_PASS_DIFF),
        "note": (
            "no GPU in this session: CUDA not measured" if not cuda else "CUDA measured on the device above"
        ),
    }
    atomic.write_json(args.out, report)
    print(
        f"total: pymedphys {total_pymedphys:.1f} s, ctlib {total_ctlib:.2f} s, speedup "
        f"x{report['speedup_cpu_total']:.0f} (process CPU x{report['speedup_process_cpu_total']:.0f}) (goal "
        f">= {GOAL_SPEEDUP:.0f}); max |pass-rate diff| {worst_diff:.3f} points (goal <= {GOAL_PASS_DIFF})"
    )
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
