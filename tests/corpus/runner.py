"""Run corpus cases, one subprocess each, and judge them against their expected outcome.

Each child runs in the corpus root with ``$CTLIB_RUNS_DIR`` there, in its own session, under a wall
time limit (the whole session is killed past it). Its CPU time and peak RSS come from ``os.wait4``
(the child's own rusage, its reaped descendants included), so several children can run at once and
each keeps its own numbers. Linux carries a process's peak RSS across fork and exec, so the case is
not started from this (large) process but by a small launcher interpreter that forks it, waits for
it and writes its rusage to a file: the peak RSS is then the case's own.

Usage: ``python tests/corpus/runner.py [--out DIR] [--jobs 2] [--only SUBSTRING] [--report FILE.md]``
generates the corpus (in a temporary folder unless ``--out``), runs it, prints one line per failing
case and a count per category, and with ``--report`` writes the results table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``corpus`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus.case import CTLIB, PYTHON, ROOT, Case  # noqa: E402


@dataclasses.dataclass
class Result:
    """What one child did."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    timed_out: bool


def argv_of(case: Case, root: Path) -> list[str]:
    """``case.argv`` with the interpreter, the ctlib script and the corpus root filled in."""
    script = Path(sys.executable).parent / "ctlib"
    ctlib = [str(script)] if script.is_file() else [sys.executable, "-m", "ctlib.cli"]
    out: list[str] = []
    for k, arg in enumerate(case.argv):
        if k == 0 and arg == CTLIB:
            out += ctlib
        elif k == 0 and arg == PYTHON:
            out.append(sys.executable)
        else:
            out.append(arg.replace(ROOT, str(root)))
    return out


def child_env(root: Path) -> dict[str, str]:
    """The parent's environment, runs in the corpus, torch on its AVX2 kernels."""
    env = dict(os.environ)
    env["CTLIB_RUNS_DIR"] = str(root / "runs")
    env.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    env.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    env.pop("PYTHONWARNINGS", None)
    return env


# Started as ``python -I -S -c LAUNCHER <usage file> <argv...>``: about 10 MB, so the case it forks inherits
# no large peak RSS. Writes {returncode, cpu_s, peak_rss_mb} of the case, exits with its status.
LAUNCHER = """import json, os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    json.dump({"returncode": code, "cpu_s": usage.ru_utime + usage.ru_stime,
               "peak_rss_mb": usage.ru_maxrss / 1024}, out)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_case(case: Case, root: Path) -> Result:
    """Run one case in a subprocess (through the launcher); measure wall time, CPU time and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="corpus_case_") as tmp:
        usage_file, out_file, err_file = (Path(tmp) / name for name in ("usage.json", "stdout", "stderr"))
        with open(out_file, "wb") as out, open(err_file, "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", LAUNCHER, str(usage_file), *argv_of(case, root)],
                cwd=root,
                env=child_env(root),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                proc.wait(case.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher's session: the case and its children
                proc.wait()
            wall = time.perf_counter() - t0
        usage = (
            json.loads(usage_file.read_text())
            if usage_file.is_file()
            else {"returncode": proc.returncode, "cpu_s": math.nan, "peak_rss_mb": math.nan}
        )
        return Result(
            returncode=usage["returncode"],
            wall_s=wall,
            cpu_s=usage["cpu_s"],
            peak_rss_mb=usage["peak_rss_mb"],
            stdout=out_file.read_text(errors="replace"),
            stderr=err_file.read_text(errors="replace"),
            timed_out=timed_out,
        )


def run_all(cases: Iterable[Case], root: Path, jobs: int = 2) -> dict[str, Result]:
    """Run ``cases`` with ``jobs`` children at a time, slowest kinds first."""
    cases = sorted(cases, key=lambda c: -c.timeout_s)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(lambda c: run_case(c, root), cases))
    return {c.id: r for c, r in zip(cases, results, strict=True)}


# --------------------------------------------------------------------------------------------- judging
def _strict_json(line: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def same(expected: Any, actual: Any) -> bool:
    """Equal, with floats equal to 1e-6 (relative or absolute); dicts compared on ``expected``'s keys."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and same(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(actual, (list, tuple))
            and len(expected) == len(actual)
            and all(same(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, float) or isinstance(actual, float):
        return (
            isinstance(actual, (int, float))
            and not isinstance(actual, bool)
            and math.isclose(expected, actual, rel_tol=1e-6, abs_tol=1e-6)
        )
    return expected == actual


def _array_problem(case: Case, root: Path) -> str | None:
    """Read the volume in this process and compare it voxel for voxel with the expected one."""
    import numpy as np

    from ctlib.io import reader

    path, series = case.array_read
    try:
        volume = reader.read_volume(root / path, series_uid=series)
    except Exception as err:
        return f"in-process read failed: {type(err).__name__}: {err}"
    with np.load(root / case.array) as data:
        expected = data["hu"]
    if volume.array.shape != expected.shape:
        return f"voxels: shape {volume.array.shape}, expected {expected.shape}"
    if not np.array_equal(volume.array, expected):
        diff = np.abs(volume.array.astype(np.float64) - expected)
        return f"voxels differ from the expected volume (max |diff| {np.nanmax(diff):.4g} HU)"
    return None


def judge(case: Case, result: Result, root: Path) -> list[str]:
    """The ways ``result`` misses ``case``'s expected outcome (empty when it is met)."""
    problems = []
    if result.timed_out:
        problems.append(f"killed after {case.timeout_s:g} s")
    if "Traceback" in result.stderr:
        problems.append("a traceback on stderr")
    if result.peak_rss_mb > case.max_rss_mb:
        problems.append(f"peak RSS {result.peak_rss_mb:.0f} MB > {case.max_rss_mb:.0f} MB")
    if case.max_cpu_s is not None and result.cpu_s > case.max_cpu_s:
        problems.append(f"CPU {result.cpu_s:.2f} s > {case.max_cpu_s:g} s for a cheap refusal")
    for path in case.absent:
        if (root / path).exists():
            problems.append(f"{path} exists: the input ran code")
    if case.expected == "refused":
        problems += _refusal_problems(case, result)
    else:
        problems += _load_problems(case, result, root)
    return problems


def _refusal_problems(case: Case, result: Result) -> list[str]:
    problems = []
    if result.returncode != 2:
        problems.append(f"exit {result.returncode}, expected 2")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, expected 1")
    text = "\n".join(lines)
    missing = [name for name in case.names if name not in text]
    if missing:
        problems.append(f"stderr does not name {missing}")
    if case.keywords and not any(k.lower() in text.lower() for k in case.keywords):
        problems.append(f"stderr says none of {case.keywords}")
    found = [f for f in case.forbid if f in text]
    if found:
        problems.append(f"stderr says {found}")
    return problems


def _load_problems(case: Case, result: Result, root: Path) -> list[str]:
    problems = []
    if result.returncode != 0:
        problems.append(f"exit {result.returncode}, expected 0")
    if result.stderr.strip():
        problems.append("stderr not empty")
    first = (result.stdout.splitlines() or [""])[0]
    try:
        out = _strict_json(first)
    except ValueError as err:
        return [*problems, f"stdout is not strict JSON ({err})"]
    wrong = {
        k: out.get(k) for k, v in case.info.items() if not (isinstance(out, dict) and same(v, out.get(k)))
    }
    if wrong:
        problems.append(f"info {wrong}, expected { {k: case.info[k] for k in wrong} }")
    if case.skipped is not None:
        listed = sorted(Path(e["file"]).name for e in out.get("skipped_files", []))
        if listed != sorted(case.skipped):
            problems.append(f"skipped_files {listed}, expected {sorted(case.skipped)}")
    if case.params is not None:
        try:
            recorded = json.loads((Path(out["run_dir"]) / "params.json").read_text())["parameters"]
        except (OSError, KeyError, ValueError) as err:
            recorded = f"unreadable ({err})"
        if not same(case.params, recorded):
            problems.append(f"params.json parameters {recorded}, expected {case.params}")
    if case.array is not None and not problems:
        problem = _array_problem(case, root)
        if problem:
            problems.append(problem)
    return problems


def actual(result: Result) -> str:
    """What the child did, on one line."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    said = lines[-1] if any(line.startswith("Traceback") for line in lines) else (lines[0] if lines else "")
    if result.returncode == 0 and not lines:
        said = (result.stdout.splitlines() or [""])[0]
    more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    text = " ".join(f"exit {result.returncode}: {said[:220]}{more}".split())
    return ("killed (time limit); " if result.timed_out else "") + text


# ------------------------------------------------------------------------------------------------ report
def report(cases: list[Case], results: dict[str, Result], root: Path) -> tuple[str, dict[str, list]]:
    """The Markdown results table and, per category, ``[cases, met, failing ids]``."""
    from corpus.case import CATEGORIES

    rows, summary = [], {cat: [0, 0, []] for cat in CATEGORIES}
    for case in cases:
        result = results[case.id]
        problems = judge(case, result, root)
        summary[case.category][0] += 1
        summary[case.category][1] += not problems
        if problems:
            summary[case.category][2].append((case.id, actual(result), "; ".join(problems)))
        met = "yes" if not problems else "**no**: " + "; ".join(problems)
        cell = actual(result).replace("|", "\\|")
        rows.append(
            f"| {case.id} | {case.expected} | {met.replace('|', '/')} | {cell} | {result.wall_s:.2f} | "
            f"{result.cpu_s:.2f} | {result.peak_rss_mb:.0f} |"
        )
    light = [c for c in cases if c.argv[:2] == [CTLIB, "info"]]
    light_slowest = max(light, key=lambda c: results[c.id].wall_s, default=None)
    light_largest = max(light, key=lambda c: results[c.id].peak_rss_mb, default=None)
    slowest = max(cases, key=lambda c: results[c.id].wall_s)
    largest = max(cases, key=lambda c: results[c.id].peak_rss_mb)
    total = sum(s[0] for s in summary.values())
    met = sum(s[1] for s in summary.values())
    head = [
        "# Bad-input corpus (issue 11)",
        "",
        "Generated by `python tests/corpus/runner.py --report bench/results/bad_input_corpus.md` "
        "(the same cases as `tests/test_bad_input_corpus.py`). Each case is one subprocess; time is wall "
        "seconds, CPU is user + system seconds, peak RSS is the child's maximum resident set (os.wait4).",
        "",
        f"Machine: {os.cpu_count()} CPUs; load average before/after: {_LOAD['before']} / {_load()}; "
        f"{_LOAD['jobs']} cases at a time; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"**{met} of {total} cases meet their expected outcome.** Worst case time: {slowest.id} "
        f"{results[slowest.id].wall_s:.2f} s; worst case memory: {largest.id} "
        f"{results[largest.id].peak_rss_mb:.0f} MB peak RSS.",
        "",
        *(
            [
                f"Worst `ctlib info` case (no torch): time {light_slowest.id} "
                f"{results[light_slowest.id].wall_s:.2f} s, memory {light_largest.id} "
                f"{results[light_largest.id].peak_rss_mb:.0f} MB.",
                "",
            ]
            if light_slowest
            else []
        ),
        "| category | cases | met | failing |",
        "|---|---|---|---|",
        *(
            f"| {cat} | {n} | {m} | {', '.join(i for i, _, _ in bad) or '-'} |"
            for cat, (n, m, bad) in summary.items()
        ),
        "",
        "| case | expected | met | actual | time s | CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n", summary


_LOAD = {"before": "", "jobs": 2}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    import argparse

    from corpus import make_corpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="corpus folder (default: a temporary one, removed at the end)")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at a time (default 2)")
    parser.add_argument("--only", help="run the cases whose id contains this text")
    parser.add_argument("--report", help="write the Markdown results table here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ctlib_corpus_") as tmp:
        root = Path(args.out or tmp).resolve()
        only = [i for i in make_corpus.case_ids() if args.only in i] if args.only else None
        _LOAD.update(before=_load(), jobs=args.jobs)
        t0 = time.perf_counter()
        cases = make_corpus.generate(root, only)
        generated = time.perf_counter() - t0
        results = run_all(cases, root, args.jobs)
        text, summary = report(cases, results, root)
        elapsed = time.perf_counter() - t0
        for cat, (n, met, bad) in summary.items():
            print(f"{cat:<10} {met:>3} of {n:>3} met")
            for case_id, did, why in bad:
                print(f"    {case_id}: {why} | actual: {did}")
        print(f"generated in {generated:.1f} s, all in {elapsed:.1f} s")
        if args.report:
            Path(args.report).write_text(
                text + f"\nCorpus generated in {generated:.1f} s; generation and all "
                f"cases took {elapsed:.1f} s.\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
