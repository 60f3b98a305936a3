"""Benchmark: ctlib's torch gamma index against ``pymedphys.gamma`` on real OpenKBP 128^3 dose pairs, side by
side, with the same threads on both sides.

Protocol: for each of the first ``--patients`` test patients of the shared OpenKBP data, the reference is
the planned dose and the evaluated dose a realistic perturbation of it: shifted by one voxel along z
(order-0 shift, zeros enter), smoothed by a Gaussian of one voxel sigma, scaled by 1.02. Both
implementations compute global gamma 3 % / 3 mm, normalized to the reference maximum, 10 % low-dose
cutoff, interp_fraction 10, max_gamma 2 (pymedphys' default max_gamma=None searches until every voxel's
gamma is bounded, which is slower; the pass rate is the same for any max_gamma >= 1), on the full
128^3 grid (no random subset), and return the full gamma map. The pass rate of both is
100 * mean(gamma <= 1) over evaluated voxels.

Threads: two comparisons, each with the same threads on both sides.
- default threads, as users run them: pymedphys in a fresh process with numba's default (all cores), ours
  with torch's default (all cores);
- one thread: pymedphys with ``NUMBA_NUM_THREADS=1``, ours after ``torch.set_num_threads(1)``.
Each of the four runs in its own worker process, started once (pymedphys warmed up on a small grid, so
numba compiles or loads its cache there), so nothing one library does to threads reaches another:
numba's OpenMP start-up resets torch's thread count in its process (seen: 1 -> 2), which the probe below
records and ``pymedphys_gamma`` puts back. The workers take turns patient by patient, the order
reversed on every other patient, so load from other jobs falls on all of them alike; ours is timed
``--repeats`` times (median) after one warm-up call per patient, each call rebuilding its search plan
(cache cleared). Wall seconds (perf_counter) and process CPU seconds (process_time, all threads) are
reported separately, with the machine's load average at the start, before each patient and at the end.

    python bench/gamma_speed.py [--patients 3] [--repeats 3] [--out bench/results/gamma_speed.json]

On a GPU machine, ``--cuda-only`` adds CUDA timings to an existing CPU report (``--baseline``) for its
patients, without re-running pymedphys there: each row gains ``ctlib_cuda_s`` (median of ``--repeats``
calls after a warm-up, synchronized), the CUDA pass rate and its difference to pymedphys, and the report
a ``cuda`` section naming the GPU machine. The CPU columns stay those measured on the CPU machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
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
from ctlib.metrics import gamma, gamma_search  # noqa: E402

GOAL_SPEEDUP = 50.0  # against pymedphys as users run it (default threads), same threads for ours
GOAL_PASS_DIFF = 0.03  # points
PACKAGES = ("torch", "numpy", "scipy", "pymedphys", "numba")
CRITERIA = {
    "dose_percent": 3.0,
    "distance_mm": 3.0,
    "cutoff_percent": 10.0,
    "max_gamma": 2.0,
    "interp_fraction": 10,
}
WORKERS = ("pymedphys-default", "ours-default", "pymedphys-1", "ours-1")  # implementation-threads


def perturb(dose_gy: np.ndarray) -> np.ndarray:
    """The evaluated dose: one voxel shift along z, Gaussian smoothing (sigma one voxel), times 1.02."""
    shifted = ndimage.shift(dose_gy, (1, 0, 0), order=0, mode="constant", cval=0.0)
    return (ndimage.gaussian_filter(shifted, sigma=1.0) * 1.02).astype(np.float32)


def pymedphys_gamma(reference: np.ndarray, evaluated: np.ndarray, spacing_mm) -> tuple[np.ndarray, dict]:
    """``pymedphys.gamma`` with the bench's criteria, and torch's thread count in this process before it,
    right after it, and now: numba's OpenMP start-up (first parallel call) can reset torch's count to the
    core count; it is put back here."""
    before = torch.get_num_threads()
    import pymedphys

    axes = tuple(np.arange(n) * s for n, s in zip(reference.shape, spacing_mm, strict=True))
    try:
        result = pymedphys.gamma(
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
    finally:
        after = torch.get_num_threads()
        if after != before:
            torch.set_num_threads(before)
    threads = {"torch_threads_before": before, "torch_threads_after_pymedphys": after,
               "torch_threads_now": torch.get_num_threads()}
    return result, threads


def ours(reference, evaluated, spacing_mm, device: str | None = None, pass_only: bool = False
         ) -> gamma.GammaResult:
    """One cold call on the inputs' device: the search plan (offsets grouped by cell, cached per spacing) is
    rebuilt and timed too."""
    gamma_search.search_plan.cache_clear()
    return gamma.gamma_index(reference, evaluated, spacing_mm, device=device, pass_only=pass_only, **CRITERIA)


def timed(run, *args):
    """``((wall seconds, process CPU seconds), result)``; CPU seconds count every thread of the process."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(*args)
    return (time.perf_counter() - wall, time.process_time() - cpu), result


def load_pair(patient_id: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    patient = openkbp.read_openkbp_npz(paths.data_dir() / "openkbp" / "test" / f"{patient_id}.npz")
    return patient.dose_gy, perturb(patient.dose_gy), tuple(float(s) for s in patient.ct.spacing)


def probe_torch_thread_reset() -> dict:
    """In a fresh process: torch on one thread (its pool started), then ``pymedphys_gamma`` on a small grid
    with numba's default threads; torch's count right after pymedphys and after the restore."""
    code = (
        "import sys, json, numpy as np, torch; sys.path.insert(0, sys.argv[1]); import gamma_speed as b\n"
        "torch.set_num_threads(1); torch.ones(4).sum()\n"
        "d = np.random.default_rng(0).random((12, 12, 12)) * 10\n"
        "_, threads = b.pymedphys_gamma(d, d * 1.01, (2.0, 3.0, 3.0))\n"
        "import numba; threads['numba_threads'] = numba.get_num_threads(); print(json.dumps(threads))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- workers
def worker(kind: str) -> None:
    """Serve timing requests (JSON lines on stdin, answers on stdout) for one implementation-threads."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library output goes to stderr, not the channel
    implementation, threads = kind.split("-")
    small = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32) * 10
    if implementation == "ours":
        if threads == "1":
            torch.set_num_threads(1)
        ours(small, small * 1.01, (2.0, 3.0, 3.0))
        info = {"torch_threads": torch.get_num_threads()}
    else:
        pymedphys_gamma(small, small * 1.01, (2.0, 3.0, 3.0))  # numba compiles (or loads its cache) here
        import numba

        info = {"numba_threads": numba.get_num_threads(), "numba_threading_layer": numba.threading_layer()}
    channel.write(json.dumps(info) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        reference, evaluated, spacing = load_pair(request["patient"])
        if implementation == "ours":
            ours(reference, evaluated, spacing)  # warm-up: allocator, caches
            runs = [timed(ours, reference, evaluated, spacing) for _ in range(request["repeats"])]
            result = runs[-1][1]
            gamma_map = np.asarray(result.gamma)
            answer = {"torch_threads": torch.get_num_threads(), "pass_rate_percent": result.pass_rate_percent}
            # pass / fail only (gamma_index(pass_only=True)): same pass rate, no gamma values
            quick = [timed(ours, reference, evaluated, spacing, None, True)
                     for _ in range(request["repeats"])]
            answer.update(pass_only_wall_s=[r[0][0] for r in quick],
                          pass_only_pass_rate_percent=quick[-1][1].pass_rate_percent)
        else:
            runs = [timed(pymedphys_gamma, reference, evaluated, spacing)]
            gamma_map, answer = runs[-1][1]
            answer["pass_rate_percent"] = float(100.0 * np.mean(gamma_map[~np.isnan(gamma_map)] <= 1))
        np.save(request["map"], gamma_map.astype(np.float32))
        answer.update(wall_s=[r[0][0] for r in runs], cpu_s=[r[0][1] for r in runs],
                      evaluated_voxels=int((~np.isnan(gamma_map)).sum()))
        channel.write(json.dumps(answer) + "\n")


class Worker:
    """A worker process (``worker``) and its pipes."""

    def __init__(self, kind: str):
        env = dict(os.environ)
        if kind == "pymedphys-1":
            env["NUMBA_NUM_THREADS"] = "1"
        elif kind == "pymedphys-default":
            env.pop("NUMBA_NUM_THREADS", None)
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", kind], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        self.info = self._answer()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"bench/gamma_speed.py: worker exited with code {self.process.wait()}")
        return json.loads(line)

    def run(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        return self._answer()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def _comparison(rows: list[dict], theirs: str, ours_: str, note: str) -> dict:
    their_wall = sum(r[f"{theirs}_wall_s"] for r in rows)
    our_wall = sum(r[f"{ours_}_wall_s"] for r in rows)
    their_cpu = sum(r[f"{theirs}_cpu_s"] for r in rows)
    our_cpu = sum(r[f"{ours_}_cpu_s"] for r in rows)
    return {"pymedphys": theirs, "ours": ours_, "note": note,
            "pymedphys_wall_s": their_wall, "ours_wall_s": our_wall, "speedup_wall": their_wall / our_wall,
            "pymedphys_cpu_s": their_cpu, "ours_cpu_s": our_cpu, "speedup_cpu": their_cpu / our_cpu,
            "speedup_wall_per_patient": [r[f"{theirs}_wall_s"] / r[f"{ours_}_wall_s"] for r in rows]}


def _patient_row(path: Path, order: tuple[str, ...], workers: dict[str, Worker], repeats: int,
                 maps: Path) -> dict:
    """Every worker on one patient, in ``order``; wall and CPU seconds, pass rates, map differences."""
    row: dict = {"patient": path.stem, "load_average_before": list(os.getloadavg()), "order": list(order)}
    answers = {}
    for kind in order:
        count = repeats if kind.startswith("ours") else 1
        answers[kind] = workers[kind].run(patient=path.stem, repeats=count, map=str(maps / f"{kind}.npy"))
        key = kind.replace("-", "_")
        row[f"{key}_wall_s"] = statistics.median(answers[kind]["wall_s"])
        row[f"{key}_cpu_s"] = statistics.median(answers[kind]["cpu_s"])
        row[f"{key}_wall_times_s"] = answers[kind]["wall_s"]
        row[f"{key}_pass_rate_percent"] = answers[kind]["pass_rate_percent"]
        if "pass_only_wall_s" in answers[kind]:
            row[f"{key}_pass_only_wall_s"] = statistics.median(answers[kind]["pass_only_wall_s"])
            row[f"{key}_pass_only_pass_rate_percent"] = answers[kind]["pass_only_pass_rate_percent"]
    theirs, mine = np.load(maps / "pymedphys-default.npy"), np.load(maps / "ours-default.npy")
    row.update(
        evaluated_voxels=answers["ours-default"]["evaluated_voxels"],
        same_evaluated_voxels=bool(np.array_equal(np.isnan(theirs), np.isnan(mine))),
        pass_rate_diff_points=(row["ours_default_pass_rate_percent"]
                               - row["pymedphys_default_pass_rate_percent"]),
        max_abs_gamma_diff=float(np.nanmax(np.abs(mine - theirs))),
        # each implementation on default threads and on one: the same map
        ours_threads_max_abs_diff=float(np.nanmax(np.abs(mine - np.load(maps / "ours-1.npy")))),
        pymedphys_threads_max_abs_diff=float(np.nanmax(np.abs(theirs - np.load(maps / "pymedphys-1.npy")))),
        torch_threads_in_pymedphys_default=answers["pymedphys-default"]["torch_threads_now"],
    )
    print(f"{row['patient']} (load {row['load_average_before'][0]:.1f}): pymedphys default "
          f"{row['pymedphys_default_wall_s']:.1f} s / one thread {row['pymedphys_1_wall_s']:.1f} s; "
          f"ours default {row['ours_default_wall_s']:.3f} s / one thread {row['ours_1_wall_s']:.3f} s; "
          f"pass {row['pymedphys_default_pass_rate_percent']:.3f} % vs "
          f"{row['ours_default_pass_rate_percent']:.3f} %", flush=True)
    return row


PROTOCOL = {
    "reference": "planned dose (Gy)",
    "evaluated": "planned dose shifted 1 voxel along z (order 0), Gaussian sigma 1 voxel, x 1.02",
    "criteria": "global gamma, normalization = reference max, cutoff = % of it, applied to the reference",
    **CRITERIA,
    "pass": "gamma <= 1, over voxels with reference dose >= cutoff",
    "threads": "default: pymedphys with numba's default (all cores), ours with torch's default; one: "
    "NUMBA_NUM_THREADS=1 / torch.set_num_threads(1); each of the four in its own worker process",
}


def run_cpu(patients: int, repeats: int, previous: dict | None) -> dict:
    """The CPU report: both comparisons (default threads, one thread) on the first ``patients`` patients."""
    machine = provenance.machine_info(PACKAGES)  # load average before the run
    probe = probe_torch_thread_reset()
    files = sorted((paths.data_dir() / "openkbp" / "test").glob("pt_*.npz"), key=lambda p: int(p.stem[3:]))
    workers = {kind: Worker(kind) for kind in WORKERS}
    maps = Path(tempfile.mkdtemp(prefix="gamma_speed_"))
    try:
        rows = [_patient_row(path, WORKERS if number % 2 == 0 else WORKERS[::-1], workers, repeats, maps)
                for number, path in enumerate(files[:patients])]
    finally:
        infos = {kind: w.info for kind, w in workers.items()}
        for w in workers.values():
            w.close()
    load_end = list(os.getloadavg())
    default = _comparison(rows, "pymedphys_default", "ours_default", (
        f"as users run them: numba's default threads ({infos['pymedphys-default']['numba_threads']}) and "
        f"torch's default threads ({infos['ours-default']['torch_threads']})"))
    one = _comparison(rows, "pymedphys_1", "ours_1", "both limited to one thread")
    mixed = _comparison(rows, "pymedphys_default", "ours_1",
                        "ours on one thread against pymedphys on its default threads (not the same threads)")
    worst = max(abs(r["pass_rate_diff_points"]) for r in rows)
    summary = (
        f"same threads on both sides: x{default['speedup_wall']:.0f} wall (x{default['speedup_cpu']:.0f} CPU "
        f"seconds) against pymedphys as users run it (default threads), x{one['speedup_wall']:.0f} wall "
        f"(x{one['speedup_cpu']:.0f} CPU) against pymedphys on one thread; pass rates within {worst:.4f} "
        f"points; load average {machine['load_average_at_start'][0]:.1f} at start, {load_end[0]:.1f} at end "
        f"on {machine['cpus_available']} CPUs"
    )
    report = {
        "benchmark": "gamma_speed: ctlib.metrics.gamma.gamma_index (torch) vs pymedphys.gamma, same OpenKBP "
        "dose pairs, same threads on both sides",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": provenance.git_state(paths.repo_root()),
        "machine": machine,
        "load_average_at_end": load_end,
        "workers": infos,
        "torch_thread_reset_probe": {**probe, "note": (
            "fresh process, torch set to 1 thread, then pymedphys.gamma with numba's default threads: "
            "torch's count right after pymedphys, and after pymedphys_gamma put it back")},
        "protocol": {
            "data": f"shared OpenKBP test split, first {len(rows)} patients by id, full 128^3 grid, "
            "no random subset",
            **PROTOCOL,
            "timing": "workers take turns per patient (order reversed every other patient); pymedphys once "
            f"per patient after a numba warm-up at worker start; ours median of {repeats} cold calls (search "
            "plan rebuilt) after one warm-up call; wall seconds (perf_counter) and process CPU seconds "
            "(process_time, all threads)",
        },
        "patients": rows,
        "vs_pymedphys_default_threads": default,
        "vs_pymedphys_one_thread": one,
        "ours_one_thread_vs_pymedphys_default_threads": mixed,
        "ours_pass_only": {
            "note": "gamma_index(pass_only=True): pass / fail only (the search stops at the DTA and leaves a "
            "voxel once it passes), exact pass rate, no gamma values; pymedphys' skip_once_passed not timed, "
            "so no ratio is claimed",
            **{f"{kind}_wall_s": sum(r[f"{kind}_pass_only_wall_s"] for r in rows)
               for kind in ("ours_default", "ours_1")},
            "max_abs_pass_rate_diff_to_full_points": max(
                abs(r[f"{kind}_pass_only_pass_rate_percent"] - r[f"{kind}_pass_rate_percent"])
                for r in rows for kind in ("ours_default", "ours_1")),
        },
        "max_abs_pass_rate_diff_points": worst,
        "goal": {"speedup_vs_pymedphys_default_threads_min": GOAL_SPEEDUP,
                 "pass_rate_diff_max_points": GOAL_PASS_DIFF},
        "pass": bool(default["speedup_wall"] >= GOAL_SPEEDUP and worst <= GOAL_PASS_DIFF),
        "summary": summary,
        "note": "no GPU in this session: CUDA not measured",
    }
    if previous and "cuda" in previous:  # CUDA times of an earlier kernel are kept, marked as such
        report["cuda_previous_kernel"] = {**previous["cuda"], "note": (
            f"measured on the GPU with the search kernel of the report dated {previous.get('date')}; not "
            "re-measured with this one")}
    elif previous and "cuda_previous_kernel" in previous:
        report["cuda_previous_kernel"] = previous["cuda_previous_kernel"]
    if previous and "vs_pymedphys_default_threads" in previous:  # the last runs of this protocol, in brief
        report["earlier_runs"] = [digest(previous), *previous.get("earlier_runs", [])][:4]
    return report


def digest(report: dict) -> dict:
    """A run's date, commit, load and both comparisons, for the record of earlier runs."""
    keys = ("pymedphys_wall_s", "ours_wall_s", "speedup_wall", "speedup_cpu")
    return {
        "date": report["date"], "git": report.get("git"), "summary": report["summary"],
        "load_average_at_start": report["machine"]["load_average_at_start"],
        "load_average_at_end": report.get("load_average_at_end"),
        "vs_pymedphys_default_threads": {k: report["vs_pymedphys_default_threads"][k] for k in keys},
        "vs_pymedphys_one_thread": {k: report["vs_pymedphys_one_thread"][k] for k in keys},
        "max_abs_pass_rate_diff_points": report["max_abs_pass_rate_diff_points"],
    }


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
    """``baseline`` (a CPU report of ``run_cpu``) with CUDA times and pass rates of the same dose pairs."""
    if not torch.cuda.is_available():
        raise SystemExit("--cuda-only needs a CUDA device")
    report = {**baseline, "patients": [dict(r) for r in baseline["patients"]]}
    for row in report["patients"]:
        reference, evaluated, spacing = load_pair(row["patient"])
        row["ctlib_cuda_s"], result = time_cuda(reference, evaluated, spacing, repeats)
        row["ctlib_cuda_pass_rate_percent"] = result.pass_rate_percent
        theirs = row["pymedphys_default_pass_rate_percent"]
        row["cuda_pass_rate_diff_points"] = result.pass_rate_percent - theirs
        row["speedup_cuda_vs_pymedphys_default"] = row["pymedphys_default_wall_s"] / row["ctlib_cuda_s"]
        print(f"{row['patient']}: CUDA {row['ctlib_cuda_s'] * 1000:.1f} ms, pass "
              f"{result.pass_rate_percent:.3f} % (pymedphys {theirs:.3f} %)", flush=True)
    rows, cpu = report["patients"], report["vs_pymedphys_default_threads"]
    total = sum(r["ctlib_cuda_s"] for r in rows)
    report["cuda"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info(PACKAGES[:3]),
        "repeats": repeats,
        "ctlib_cuda_total_s": total,
        "speedup_cuda_vs_pymedphys_default_total": cpu["pymedphys_wall_s"] / total,
        "speedup_cuda_vs_ours_cpu_default_total": cpu["ours_wall_s"] / total,
        "max_abs_cuda_pass_rate_diff_points": max(abs(r["cuda_pass_rate_diff_points"]) for r in rows),
        "note": "CUDA times on the GPU machine named here; pymedphys and ctlib CPU times are the baseline's "
        "(the CPU machine under 'machine'), so the CUDA ratios compare two machines",
    }
    report["note"] = "CUDA measured on the machine under 'cuda'"
    return report


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of ours per patient (median)")
    parser.add_argument("--out", type=Path, default=paths.repo_root() / "bench/results/gamma_speed.json")
    parser.add_argument("--cuda-only", action="store_true", help="add CUDA timings to --baseline (see above)")
    parser.add_argument("--baseline", type=Path, default=paths.repo_root() / "bench/results/gamma_speed.json")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)  # internal: one worker process
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return None
    if args.cuda_only:
        report = add_cuda_timings(json.loads(args.baseline.read_text()), args.repeats)
        atomic.write_json(args.out, report)
        print(f"CUDA total {report['cuda']['ctlib_cuda_total_s']:.3f} s: "
              f"x{report['cuda']['speedup_cuda_vs_pymedphys_default_total']:.0f} vs pymedphys (CPU), max "
              f"|pass-rate diff| {report['cuda']['max_abs_cuda_pass_rate_diff_points']:.3f} points")
        print(f"wrote {args.out}")
        return report
    previous = json.loads(args.out.read_text()) if args.out.exists() else None
    report = run_cpu(args.patients, args.repeats, previous)
    atomic.write_json(args.out, report)
    print(report["summary"])
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
