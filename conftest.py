"""Root pytest configuration, loaded for tests/ and for the nbval run over notebooks/.

torch picks its CPU kernels by instruction set, and AVX-512 kernels round differently from AVX2 ones
(seen: 13.19 vs 13.18 Gy after 60 training steps). The committed notebook outputs are made with AVX2
kernels, so every pytest process, and every kernel nbval starts from it, runs torch on those; set before
torch is imported. The Makefile exports the same for `make golden` and `make demo`.

For nbval, the session first builds every upstream default run once (see below).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")


# ------------------------------------------------------------------------------------------------ nbval
# nbval checks a notebook's outputs by running it with its defaults. Its upstream runs come from
# ``runs.upstream_run_dir``: the newest completed run of that notebook in $CTLIB_RUNS_DIR, or else a fresh
# default run started from inside the cell. nbval's own runs are interactive, never upstream candidates, so a
# figures notebook used to run its whole chain inside one cell, under nbval's per-cell time limit. Instead,
# every notebook upstream of a collected one gets its default run once per session, before any cell runs
# (papermill, no time limit, each after its own upstreams): cells only read completed runs, and the session's
# time grows with the number of notebooks, not with a chain's depth. Default runs are deterministic, so the
# checked outputs are those a cell-started upstream run gave. A collected notebook whose default run this
# session built is not executed a second time: nbval compares that run's outputs (same sanitizing, same tags).

# nbval waits 5 s for each output message of a cell after the cell replied; a loaded machine can take longer
# to deliver them, and a pass must not depend on that. A cell's own limit is --nbval-cell-timeout (Makefile).
OUTPUT_TIMEOUT_S = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every nbval cell OUTPUT_TIMEOUT_S to deliver its outputs instead of nbval's 5 s."""
    for item in items:
        if isinstance(getattr(item, "output_timeout", None), (int, float)):
            item.output_timeout = max(item.output_timeout, OUTPUT_TIMEOUT_S)


def _nbval_notebooks(session: pytest.Session) -> list[Path]:
    """The notebooks whose cells are collected for nbval in this session."""
    option = session.config.option
    if not (getattr(option, "nbval", False) or getattr(option, "nbval_lax", False)) or option.collectonly:
        return []
    return sorted({Path(str(item.path)) for item in session.items if item.path.suffix == ".ipynb"})


def pytest_collection_finish(session: pytest.Session) -> None:
    """Run the default run of every notebook upstream of a collected one that has no completed run yet."""
    notebooks = _nbval_notebooks(session)
    if not notebooks:
        return
    from ctlib import paths, runs
    from ctlib.runs import chain
    from ctlib.runs.params import notebook_stem

    if not os.environ.get(paths.RUNS_ENV_VAR):  # never runs/: the upstream runs of a session are its own
        os.environ[paths.RUNS_ENV_VAR] = tempfile.mkdtemp(prefix="ctlib-nbval-runs-")
    report = session.config.pluginmanager.get_plugin("terminalreporter")
    write = report.write_line if report else print
    built: dict[Path, Path] = {}
    for notebook in chain.upstream_order(notebooks):
        if runs.latest_run(notebook_stem(notebook)):
            continue
        t0 = time.perf_counter()
        result = runs.run_notebook(notebook, raise_on_failure=False)
        # A failed upstream run fails the notebooks that read it: their cells start it again and show why.
        write(f"upstream default run {result.run_id}: {result.status} in {time.perf_counter() - t0:.0f} s"
              + (f" ({result.error})" if result.error else ""))
        if result.status == "completed":
            built[notebook] = result.run_dir / notebook.name
    write(f"upstream runs in {paths.runs_dir()}")
    import nbformat

    cells_of = {
        notebook: {c.get("id"): c for c in nbformat.read(executed, as_version=4).cells}
        for notebook, executed in built.items()
    }
    for item in session.items:
        notebook = Path(str(item.path))
        if notebook in built and hasattr(item, "cell"):
            _check_against_run(item, built[notebook], cells_of[notebook])


def _check_against_run(item: pytest.Item, executed_notebook: Path, cells: dict) -> None:
    """Make an nbval cell compare the outputs of the same cell (by id) in an executed notebook (its cells
    by id in ``cells``) instead of running it; the notebook's kernel is then not started."""
    from nbval.plugin import coalesce_streams

    notebook = item.parent
    notebook.setup = notebook.setup_sanitize_files  # sanitize patterns, no kernel

    def runtest() -> None:
        if item.options["skip"]:
            pytest.skip()
        cell = cells.get(item.cell.get("id"))
        if cell is None:
            item.raise_cell_error(f"no cell with id {item.cell.get('id')!r} in {executed_notebook}")
        outs = copy.deepcopy(cell.outputs)
        errors = [o for o in outs if o.output_type == "error"]
        if errors and not item.options["check_exception"]:
            item.raise_cell_error("Cell execution caused an exception", "\n".join(errors[0].traceback))
        unrun = item.cell.execution_count is None
        if unrun and item.cell.outputs:
            item.raise_cell_error("Unrun reference cell has outputs")
        reference = coalesce_streams(copy.deepcopy(item.cell.outputs))
        if item.options["check"] and not unrun:
            if not item.compare_outputs(coalesce_streams(outs), reference):
                item.raise_cell_error("Cell outputs differ", "\n".join(item.comparison_traceback))

    item.runtest = runtest
