"""Structure of every committed notebook: dated name and title, a typed ``parameters`` cell,
parameter sets that exist and name real parameters, and outputs of the default run committed."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

from ctlib import paths
from ctlib.runs import params as run_params

ROOT = paths.repo_root()
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
REQUIRED_SETS = ("cpu-real", "gpu")
PARAMETER_LINE = re.compile(
    r"^(?P<name>[a-z_][a-z0-9_]*): (?P<type>int|float|str|bool|list|dict) = .+  # \S.*$"
)


def _ids(notebooks: list[Path]) -> list[str]:
    return [p.relative_to(ROOT).as_posix() for p in notebooks]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks under notebooks/"


def test_notebook_names_are_unique_across_studies():
    """Parameter sets (papermill_params/<stem>/) and run ids (<time>_<short name>_<hex>) key on the file name
    without date and order: two studies with the same name would share parameter sets and upstream runs."""
    from ctlib.runs.context import short_name

    for key in (lambda p: p.stem, lambda p: short_name(p.stem)):
        names = [key(p) for p in NOTEBOOKS]
        assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_structure(notebook: Path):
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}_[a-z0-9_]+\.ipynb", notebook.name), notebook.name
    nb = nbformat.read(notebook, as_version=4)
    title, parameters = nb.cells[0], nb.cells[1]
    assert title.cell_type == "markdown" and re.match(r"# \d{4}-\d{2}-\d{2} ", title.source), "title first"
    assert parameters.cell_type == "code" and "parameters" in parameters.metadata.get("tags", [])
    names = []
    for line in parameters.source.splitlines():
        if not line.strip() or line.startswith("# "):
            continue  # blank lines and banner comments group the parameters
        match = PARAMETER_LINE.match(line)
        assert match, f"parameter line must be `name: type = literal  # comment`: {line!r}"
        names.append(match["name"])
    assert len(names) == len(set(names)), "a parameter is declared twice"

    sets = ROOT / "papermill_params" / notebook.stem
    for required in REQUIRED_SETS:
        assert (sets / f"{required}.yaml").is_file(), (
            f"missing papermill_params/{notebook.stem}/{required}.yaml"
        )
    for set_file in sorted(sets.glob("*.yaml")):
        values = yaml.safe_load(set_file.read_text()) or {}
        grid = (values.pop(run_params.SWEEP_KEY, None) or {}).get("grid", {})  # a set may name a sweep's grid
        unknown = (set(values) | set(grid)) - set(names)
        assert not unknown, f"{set_file.name} sets unknown parameters {sorted(unknown)}"

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert any(c.outputs for c in code), "commit the outputs of the default run (make golden)"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, "a committed output holds an error"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "outputs must come from one top-to-bottom run"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_only_a_run_asked_to_publish_writes_the_repository_figures(notebook: Path):
    """Default and test (nbval) runs keep their figures in their run folder, so `make test` leaves figures/ as
    committed: a notebook that can write there declares ``publish_figures: bool = False``."""
    from ctlib.runs.params import notebook_defaults

    cells = nbformat.read(notebook, as_version=4).cells
    source = "\n".join(c.source for c in cells if c.cell_type == "code")
    if 'repo_root() / "figures"' not in source and "repo_root() / figures_dir" not in source:
        return
    defaults = notebook_defaults(notebook)
    assert defaults.get("publish_figures") is False, "declare publish_figures: bool = False"
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if "repo_root() / " not in line or "figures" not in line.split("repo_root() / ", 1)[1]:
            continue
        indent = len(line) - len(line.lstrip())
        outer = [x for x in lines[:i] if x.strip() and len(x) - len(x.lstrip()) < indent]
        assert outer and "publish_figures" in outer[-1], f"only under `if publish_figures:`: {line.strip()}"
