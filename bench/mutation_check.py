"""A small AST mutation tester for the code mutmut does not mutate (DeMillo, Lipton & Sayward 1978).

mutmut 3 (``make mutation``) skips every decorated function (``@torch.no_grad()`` samplers, the EMA's
``update``, properties) and every module- or class-level constant. This script mutates those places too
(or everything, ``--where all``) in a COPY of the repository and runs a chosen test subset per mutant::

    git worktree add --detach /work/mut HEAD
    python bench/mutation_check.py --root /work/mut --files ctlib/diffusion/samplers.py \\
        --tests tests/test_diffusion_samplers.py tests/test_interp_mutants.py --where decorated \\
        --sample 40 --seed 0 --timeout 300 --out bench/results/mutation_check_samplers.json

Operators: comparison flips (< <=, > >=, == !=, is / is not, in / not in), arithmetic swaps (+ -, * /,
// /, ** *), integer constants off by one, whole float constants plus one and others times 1.5, unary
minus dropped, and / or swapped, clip / clamp calls dropped (the call replaced by its first argument),
min / max (and minimum / maximum, amin / amax) swapped. Each mutant replaces only the source span of
the mutated expression, is compiled before it runs, and the file is restored byte for byte after every
mutant (also on Ctrl-C).
Verdicts: killed (tests fail), survived (tests pass), timeout, invalid (does not compile).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

Where = str  # "all" | "decorated" | "module"

_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
          ast.Pow: ast.Mult}
_MINMAX = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum", "amin": "amax",
           "amax": "amin", "nanmin": "nanmax", "nanmax": "nanmin"}
_CLIPS = {"clip", "clamp", "clip_", "clamp_"}


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One mutation: the span it replaces in ``path`` and the replacement text."""

    path: str
    line: int
    col: int
    end_line: int
    end_col: int
    operator: str
    original: str
    replacement: str

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}:{self.col} {self.operator}: {self.original} -> {self.replacement}"


def _variants(node: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """``(operator, mutated copy of node)`` for every mutation the node admits."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _COMPARE:
                new = copy.deepcopy(node)
                new.ops[i] = _COMPARE[type(op)]()
                yield "compare", new
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP:
        new = copy.deepcopy(node)
        new.op = _BINOP[type(node.op)]()
        yield "arith", new
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield "boolop", new
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        yield "neg", copy.deepcopy(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        yield "const", ast.Constant(node.value + 1)
    elif isinstance(node, ast.Constant) and type(node.value) is float:  # 1.0 -> 2.0, 0.5 -> 0.75
        yield "const", ast.Constant(node.value + 1.0 if node.value.is_integer() else node.value * 1.5)
    elif isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in _CLIPS:
            target = None
            if isinstance(func, ast.Attribute) and not _is_module(func.value):
                target = func.value  # x.clamp(lo, hi) -> x
            elif node.args:
                target = node.args[0]  # np.clip(x, lo, hi) -> x
            if target is not None:
                yield "clip", copy.deepcopy(target)
        if name in _MINMAX:
            new = copy.deepcopy(node)
            if isinstance(new.func, ast.Attribute):
                new.func.attr = _MINMAX[name]
            else:
                new.func.id = _MINMAX[name]
            yield "minmax", new


def _is_module(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id in ("np", "numpy", "torch", "math")


def _decorated(node: ast.AST) -> bool:
    """A function mutmut leaves alone: any decorator but a lone @staticmethod / @classmethod."""
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.decorator_list:
        return False
    only = node.decorator_list[0] if len(node.decorator_list) == 1 else None
    return not (isinstance(only, ast.Name) and only.id in ("staticmethod", "classmethod"))


def _sites(tree: ast.Module, where: Where) -> Iterator[ast.AST]:
    """Nodes to mutate: inside decorated functions, outside any function, or everywhere. Annotations,
    decorators and docstrings are never mutated."""

    def walk(node: ast.AST, in_function: bool, in_decorated: bool) -> Iterator[ast.AST]:
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns", "decorator_list", "type_comment"):
                continue
            for child in value if isinstance(value, list) else [value]:
                if not isinstance(child, ast.AST):
                    continue
                is_func = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                child_decorated = in_decorated or _decorated(child)
                wanted = (where == "all" or (where == "decorated" and in_decorated)
                          or (where == "module" and not in_function))
                if wanted and hasattr(child, "lineno"):
                    yield child
                yield from walk(child, in_function or is_func, child_decorated)

    yield from walk(tree, False, False)


def enumerate_mutants(root: Path, path: str, where: Where) -> list[Mutant]:
    """Every mutant of ``root / path`` in scope ``where``, in source order."""
    source = (root / path).read_text()
    tree = ast.parse(source)
    mutants = []
    for node in _sites(tree, where):
        segment = ast.get_source_segment(source, node)
        if segment is None:
            continue
        for operator, new in _variants(node):
            mutants.append(Mutant(path, node.lineno, node.col_offset, node.end_lineno, node.end_col_offset,
                                  operator, " ".join(segment.split()), f"({ast.unparse(new)})"))
    return mutants


def mutated_source(source: str, mutant: Mutant) -> str:
    """``source`` with the mutant's span replaced by its replacement."""
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode()))
    data = source.encode()
    start = offsets[mutant.line - 1] + mutant.col  # ast offsets are UTF-8 byte offsets
    stop = offsets[mutant.end_line - 1] + mutant.end_col
    return (data[:start] + mutant.replacement.encode() + data[stop:]).decode()


def run_tests(
    root: Path, tests: list[str], extra: list[str], timeout_s: float, fork: bool = False
) -> tuple[str, float]:
    """``("passed" | "failed" | "timeout", seconds)`` of one pytest run in ``root``: a fresh interpreter,
    or with ``fork`` a child of this process, which has already imported the heavy third-party modules
    (``--preload``) but never the package under test, so the child imports the mutated file."""
    args = ["-x", "-q", "-p", "no:cacheprovider", *extra, *tests]
    t0 = time.perf_counter()
    if fork:
        return _run_forked(root, args, timeout_s), time.perf_counter() - t0
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=root, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0
    return ("passed" if proc.returncode == 0 else "failed"), time.perf_counter() - t0


def _run_forked(root: Path, args: list[str], timeout_s: float) -> str:
    """pytest.main(args) in a forked child (cwd ``root``, output discarded), killed after ``timeout_s``."""
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            os.chdir(root)
            sys.path.insert(0, str(root))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            code = int(pytest.main(args))
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.05)


def _preload(modules: list[str]) -> None:
    """Import third-party modules once in this process (one torch thread) so forked children skip it."""
    for name in modules:
        if name.split(".")[0] == "ctlib":
            raise SystemExit(f"--preload {name}: never preload the package under test (it is mutated)")
        importlib.import_module(name)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def check(
    root: Path, mutants: list[Mutant], tests: list[str], extra: list[str], timeout_s: float,
    fork: bool = False,
) -> list[dict]:
    """Apply each mutant in ``root``, run the tests, restore the file; one result row per mutant."""
    rows = []
    for i, mutant in enumerate(mutants, 1):
        file = root / mutant.path
        original = file.read_bytes()
        text = mutated_source(original.decode(), mutant)
        try:
            compile(text, str(file), "exec")
        except SyntaxError:
            rows.append({**dataclasses.asdict(mutant), "verdict": "invalid", "seconds": 0.0})
            continue
        try:
            file.write_text(text)
            outcome, seconds = run_tests(root, tests, extra, timeout_s, fork)
        finally:
            file.write_bytes(original)
        verdict = {"failed": "killed", "passed": "survived", "timeout": "timeout"}[outcome]
        rows.append({**dataclasses.asdict(mutant), "verdict": verdict, "seconds": round(seconds, 1)})
        print(f"[{i}/{len(mutants)}] {verdict:8s} {seconds:6.1f} s  {mutant.name}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a COPY of the repo (mutated in place)")
    parser.add_argument("--files", nargs="+", required=True, help="files to mutate, relative to --root")
    parser.add_argument("--tests", nargs="+", required=True, help="pytest paths run for every mutant")
    parser.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[], help="extra pytest arguments")
    parser.add_argument("--where", choices=["all", "decorated", "module"], default="decorated")
    parser.add_argument("--sample", type=int, default=0, help="check a seeded sample of this many (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds per mutant (0: 3x the clean run)")
    parser.add_argument("--out", type=Path, help="JSON file for the per-mutant verdicts")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--preload", nargs="+", default=[], metavar="MODULE",
                        help="import these third-party modules once and fork a pytest child per mutant "
                        "(e.g. torch numpy scipy monai: saves their import time on every mutant)")
    args = parser.parse_args(argv)

    root = args.root.resolve()
    if (root / ".git").is_dir() and Path(__file__).resolve().is_relative_to(root):
        parser.error(f"--root {root} is the checkout this script lives in: mutate a copy (git worktree add)")
    mutants = [m for path in args.files for m in enumerate_mutants(root, path, args.where)]
    total = len(mutants)
    if args.sample and args.sample < total:
        mutants = sorted(random.Random(args.seed).sample(mutants, args.sample),
                         key=lambda m: (m.path, m.line, m.col, m.operator))
    if args.list:
        print("\n".join(m.name for m in mutants))
        return 0
    fork = bool(args.preload)
    _preload(args.preload)
    outcome, clean_s = run_tests(root, args.tests, args.pytest_args, 3600, fork)
    if outcome != "passed":
        print(f"the tests fail without any mutant ({clean_s:.0f} s): fix them first", file=sys.stderr)
        return 2
    timeout_s = args.timeout or max(30.0, 3 * clean_s)
    print(f"{len(mutants)} of {total} mutants; clean run {clean_s:.1f} s, timeout {timeout_s:.0f} s",
          flush=True)
    rows = check(root, mutants, args.tests, args.pytest_args, timeout_s, fork)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("killed", "survived", "timeout", "invalid")}
    print(json.dumps(counts))
    for row in rows:
        if row["verdict"] == "survived":
            print(f"SURVIVED {row['path']}:{row['line']} {row['operator']}: {row['original']} -> "
                  f"{row['replacement']}")
    if args.out:
        summary = {"root": str(root), "files": args.files, "tests": args.tests, "where": args.where,
                   "total": total, "sample": args.sample, "seed": args.seed, "clean_s": round(clean_s, 1),
                   "timeout_s": timeout_s, "preload": args.preload, "counts": counts, "mutants": rows}
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
