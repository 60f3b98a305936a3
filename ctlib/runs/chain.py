"""Which notebooks a notebook reads runs of, and an order that builds every upstream run once.

A notebook names its upstream notebooks in its code (``runs.upstream_run_dir("notebooks/x/<stem>.ipynb")``
or ``NB.format("03_diffusion")``); this module finds those names as string literals of the code cells, so a
test session can run each upstream notebook's default run once, before the notebooks that read it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import nbformat

from ctlib import paths
from ctlib.runs.params import notebook_stem

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}_")


def _code_strings(notebook: Path) -> set[str]:
    """String literals of the notebook's code cells (cells that are not Python, e.g. magics, are skipped)."""
    found: set[str] = set()
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(s for s in cell.source.splitlines() if not s.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        found.update(
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        )
    return found


def referenced_notebooks(notebook: str | Path, candidates: Iterable[Path] | None = None) -> list[Path]:
    """The other notebooks whose name a notebook's code spells: a path ending in ``<stem>.ipynb``, the stem,
    or (same folder only) the stem without its date, e.g. ``"03_diffusion"``. ``candidates`` defaults to
    every notebook under ``<repo>/notebooks``."""
    path = Path(notebook).resolve()
    if candidates is None:
        candidates = (paths.repo_root() / "notebooks").rglob("*.ipynb")
    pool = sorted(Path(p).resolve() for p in candidates)
    strings = _code_strings(path)
    found = []
    for other in pool:
        if other == path:
            continue
        stem = notebook_stem(other)
        names = {stem} | ({_DATE.sub("", stem)} if other.parent == path.parent else set())
        if strings & names or any(s.endswith(f"/{stem}.ipynb") or s == f"{stem}.ipynb" for s in strings):
            found.append(other)
    return found


def upstream_order(notebooks: Iterable[str | Path], candidates: Iterable[Path] | None = None) -> list[Path]:
    """Every notebook upstream of ``notebooks`` (directly or through others), each after its own upstreams
    (depth-first topological order); a notebook of ``notebooks`` is listed only if another one reads it.
    A cycle raises ``ValueError`` naming it."""
    if candidates is None:  # found once, not again for every notebook visited
        candidates = (paths.repo_root() / "notebooks").rglob("*.ipynb")
    pool = sorted(Path(p).resolve() for p in candidates)
    targets = [Path(n).resolve() for n in notebooks]
    order: list[Path] = []
    state: dict[Path, str] = {}  # "visiting" or "done"
    reads: dict[Path, list[Path]] = {}

    def visit(node: Path, trail: tuple[Path, ...]) -> None:
        if state.get(node) == "done":
            return
        if state.get(node) == "visiting":
            cycle = " -> ".join(notebook_stem(p) for p in (*trail[trail.index(node):], node))
            raise ValueError(f"notebooks read each other's runs in a cycle: {cycle}")
        state[node] = "visiting"
        reads[node] = referenced_notebooks(node, pool)
        for upstream in reads[node]:
            visit(upstream, (*trail, node))
        state[node] = "done"
        order.append(node)

    for target in targets:
        visit(target, ())
    upstream = {u for node in order for u in reads[node]}
    return [n for n in order if n in upstream]
