"""ctlib.runs.chain: the notebooks a notebook reads runs of, and the order that builds each once."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from ctlib import paths
from ctlib.runs import chain


def _notebook(folder: Path, stem: str, *code: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in code])
    path = folder / f"{stem}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def study(tmp_path):
    """b reads a (a path), c reads a and b (dateless stems), d reads nothing; other/ holds another 01_a."""
    folder = tmp_path / "study"
    (tmp_path / "other").mkdir()
    folder.mkdir()
    a = _notebook(folder, "2026-01-01_01_a", "x = 1")
    b = _notebook(folder, "2026-01-01_02_b", 'upstream_run_dir("notebooks/study/2026-01-01_01_a.ipynb", "")')
    c = _notebook(folder, "2026-01-01_03_c", 'NB = "notebooks/study/2026-01-01_{}.ipynb"',
                  '%matplotlib inline\nb = runs.upstream_run_dir(NB.format("02_b"))\na = NB.format("01_a")')
    d = _notebook(folder, "2026-01-01_04_d", "print('01_a is a name here too')")  # not a whole literal
    other = _notebook(tmp_path / "other", "2026-02-02_01_a", "y = 2")  # "01_a" names it only in other/
    return {"a": a, "b": b, "c": c, "d": d, "other": other, "all": [a, b, c, d, other]}


def test_referenced_notebooks_finds_paths_and_dateless_stems(study):
    assert chain.referenced_notebooks(study["a"], study["all"]) == []
    assert chain.referenced_notebooks(study["b"], study["all"]) == [study["a"]]
    assert chain.referenced_notebooks(study["c"], study["all"]) == [study["a"], study["b"]]
    assert chain.referenced_notebooks(study["d"], study["all"]) == []


def test_upstream_order_lists_each_upstream_once_after_its_own(study):
    assert chain.upstream_order([study["c"]], study["all"]) == [study["a"], study["b"]]
    # b is collected too, and read by c: it is built; c and d are read by nobody
    collected = [study["d"], study["c"], study["b"]]
    assert chain.upstream_order(collected, study["all"]) == [study["a"], study["b"]]
    assert chain.upstream_order([study["a"], study["d"]], study["all"]) == []


def test_upstream_order_refuses_a_cycle(study):
    _notebook(study["a"].parent, "2026-01-01_01_a", 'NB.format("03_c")')
    cycle = "cycle: 2026-01-01_03_c -> 2026-01-01_01_a -> 2026-01-01_03_c"
    with pytest.raises(ValueError, match=cycle):
        chain.upstream_order([study["c"]], study["all"])


def test_the_committed_figures_notebooks_read_their_whole_chains():
    """The test session builds these upstream default runs before nbval (conftest.py): a notebook cell
    that stopped naming its upstream notebook would start that chain inside a cell again."""
    root = paths.repo_root() / "notebooks"
    stems = {
        "dose/2026-11-23_04_dose_figures": ["01_dose_preprocess", "02_dose_train", "03_dose_evaluate"],
        # 03 names 05: a residual model (baseline "regressor") reads a regressor run
        "slice_interp/2026-11-23_07_figures": ["01_preprocess", "02_vae", "05_regressor", "03_diffusion",
                                               "04_evaluate", "06_sampling_ablation"],
    }
    for notebook, expected in stems.items():
        order = chain.upstream_order([root / f"{notebook}.ipynb"])
        assert [p.stem.removeprefix("2026-11-23_") for p in order] == expected, notebook
