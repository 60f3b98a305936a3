"""Run machinery: parameter resolution, papermill execution into run directories, failures, chains.

Each papermill execution starts a kernel (a few seconds), so only five tests execute notebooks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ctlib import paths, provenance, runs
from ctlib.runs import context as run_context
from ctlib.runs import params as run_params
from ctlib.runs import record as run_record

TOY_STEM = "2026-01-01_01_toy"
TOY_PARAMETERS = """\
# --- toy parameters
alpha = 1  # int: multiplies gamma
beta = "x"  # str: a label
gamma = 0.5  # float: a factor
fail = False  # bool: raise in the last cell
run_id = ""  # str: this run's id, filled in by ctlib
"""
TOY_BODY = """\
import os
from ctlib import runs
runs.save_metrics({"score": alpha * gamma, "label": beta})
runs.save_metrics({"cwd": os.getcwd(), "run_dir": str(runs.current_run_dir()),
                   "run_id_env": os.environ["CTLIB_RUN_ID"]})
"""
TOY_FAIL = 'if fail:\n    raise ValueError("toy failure on purpose")\nprint("done")'
CONSUMER_PARAMETERS = 'toy_run_id = ""  # str: the upstream toy run\n'
CONSUMER_BODY = """\
from ctlib import runs
assert runs.run_dir_of(toy_run_id).is_dir()
runs.save_metrics({"upstream_score": runs.load_metrics(toy_run_id)["score"]})
"""


def write_notebook(path: Path, parameters: str, *body: str) -> Path:
    """A notebook with a title, a cell tagged ``parameters`` and code cells."""
    cells = [
        new_markdown_cell("# Toy notebook"),
        new_code_cell(parameters, metadata={"tags": ["parameters"]}),
    ]
    nb = new_notebook(cells=cells + [new_code_cell(source) for source in body])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, Path]:
    """(toy notebook, params root holding its sets ``small`` and ``other``)."""
    notebook = write_notebook(tmp_path / "study" / f"{TOY_STEM}.ipynb", TOY_PARAMETERS, TOY_BODY, TOY_FAIL)
    root = tmp_path / "papermill_params"
    (root / TOY_STEM).mkdir(parents=True)
    (root / TOY_STEM / "small.yaml").write_text("alpha: 4\nbeta: from-yaml\n")
    (root / TOY_STEM / "other.yaml").write_text("gamma: 0.25\n")
    return notebook, root


# ------------------------------------------------------------------------ no execution
def test_new_run_id_format_and_existing_ids_skipped(monkeypatch):
    assert re.fullmatch(r"\d{8}-\d{6}_preprocess_[0-9a-f]{4}", runs.new_run_id("2026-11-23_01_preprocess"))
    assert runs.short_name("2026-11-23_02_train vae!") == "train-vae"
    fixed = provenance.utc_now()
    monkeypatch.setattr(provenance, "utc_now", lambda: fixed)
    hexes = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(run_context.secrets, "token_hex", lambda n: next(hexes))
    first = runs.new_run_id("toy")
    (paths.runs_dir() / first).mkdir(parents=True)
    second = runs.new_run_id("toy")
    assert first.endswith("_toy_aaaa") and second.endswith("_toy_bbbb")
    assert sorted([second, first]) == [first, second]


def test_parameters_defaults_then_set_then_overrides(toy):
    notebook, root = toy
    defaults = run_params.resolve_parameters(notebook, params_root=root)
    assert defaults.values == {"alpha": 1, "beta": "x", "gamma": 0.5, "fail": False, "run_id": ""}
    from_set = run_params.resolve_parameters(notebook, "small", params_root=root)
    assert from_set.values == {"alpha": 4, "beta": "from-yaml", "gamma": 0.5, "fail": False, "run_id": ""}
    assert from_set.sources["alpha"] == "set" and from_set.sources["gamma"] == "default"
    both = run_params.resolve_parameters(notebook, "small", {"beta": "cli", "gamma": 2}, params_root=root)
    assert both.values["alpha"] == 4 and both.values["beta"] == "cli"
    assert both.values["gamma"] == 2.0 and isinstance(both.values["gamma"], float)
    assert both.injected() == {"alpha": 4, "beta": "cli", "gamma": 2.0}
    (root / TOY_STEM / "tiny.yaml").write_text("gamma: 1e-3\nbeta: 7\n")  # YAML 1.1 reads 1e-3 as text
    assert run_params.resolve_parameters(notebook, "tiny", params_root=root).values["gamma"] == 1e-3
    assert run_params.resolve_parameters(notebook, "tiny", params_root=root).values["beta"] == "7"


def test_parameter_errors_name_the_problem(toy):
    notebook, root = toy
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['delta'\].*declares"):
        run_params.resolve_parameters(notebook, overrides={"delta": 1}, params_root=root)
    (root / TOY_STEM / "typo.yaml").write_text("alpah: 2\n")
    with pytest.raises(ValueError, match=r"\['alpah'\] in .*typo.yaml"):
        run_params.resolve_parameters(notebook, "typo", params_root=root)
    with pytest.raises(FileNotFoundError, match=r"'gpu' not found.*existing sets: other, small, typo"):
        run_params.resolve_parameters(notebook, "gpu", params_root=root)
    with pytest.raises(ValueError, match=r"'alpha' in overrides: expected int .* found str 'many'"):
        run_params.resolve_parameters(notebook, overrides={"alpha": "many"}, params_root=root)
    with pytest.raises(ValueError, match="run's own id"):
        run_params.resolve_parameters(notebook, overrides={"run_id": "x"}, params_root=root)
    assert run_params.parse_override("lr=1e-3") == ("lr", 1e-3)
    assert run_params.parse_override("name=abc") == ("name", "abc")
    assert run_params.parse_override("sizes=[1, 2]") == ("sizes", [1, 2])


def test_existing_run_id_and_bad_parameters_refused_before_running(toy):
    notebook, root = toy
    with pytest.raises(ValueError, match="unknown parameter"):
        runs.run_notebook(notebook, overrides={"delta": 1}, params_root=root)
    assert not any(paths.runs_dir().iterdir())  # nothing created for a refused run
    earlier = paths.runs_dir() / "20260101-000000_toy_abcd"
    earlier.mkdir()
    (earlier / "run.json").write_text('{"status": "completed"}')
    with pytest.raises(FileExistsError, match="already exists"):
        runs.run_notebook(notebook, run_id=earlier.name, params_root=root)
    assert sorted(p.name for p in earlier.iterdir()) == ["run.json"]
    assert (earlier / "run.json").read_text() == '{"status": "completed"}'


def test_run_dir_of_refuses_unknown_and_unfinished_runs():
    with pytest.raises(FileNotFoundError, match="run 'nope' not found"):
        runs.run_dir_of("nope")
    with pytest.raises(FileNotFoundError, match="run 'nope' not found"):
        runs.load_metrics("nope")
    crashed = paths.runs_dir() / "20260101-000000_toy_dead"
    crashed.mkdir()
    (crashed / "run.json").write_text(json.dumps({"status": "running", "notebook_stem": TOY_STEM}))
    with pytest.raises(RuntimeError, match="status 'running or killed', expected 'completed'"):
        runs.run_dir_of(crashed.name)
    assert runs.run_dir_of(crashed.name, require_completed=False) == crashed
    assert runs.latest_run("toy") is None and runs.latest_run("toy", status=None) == crashed.name


def test_record_reads_old_files_and_writes_back_every_key(tmp_path):
    """run.json of either earlier writer reads; unknown keys survive; ``record`` is written only when set."""
    interactive = {
        "run_id": "a",
        "notebook": None,
        "notebook_stem": "interactive",
        "parameter_set": None,
        "status": "interactive",
        "error": None,
        "started_utc": "2026-01-01T00:00:00Z",
        "ended_utc": None,
        "duration_s": None,
        "git": {"commit": "abc", "dirty": True, "branch": "main"},
        "python": "3.11",
        "python_executable": "/x/python",
        "packages": {"torch": "2"},
        "device": {"cpu_count": 2},
        "future_key": [1, 2],
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "run.json").write_text(json.dumps(interactive))
    record = run_record.RunRecord.from_file(tmp_path / "a")
    assert (record.status, record.git_commit, record.git_dirty, record.lost) == (
        "interactive",
        "abc",
        True,
        False,
    )
    assert record.extra == {"future_key": [1, 2]}
    record.to_file(tmp_path / "a")
    written = json.loads((tmp_path / "a" / "run.json").read_text())
    assert {k: written[k] for k in interactive} == interactive and "record" not in written
    assert set(written) - set(interactive) == {"output_notebook", "error_traceback", "kernel"}

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "run.json").write_text('{"status": "completed"}')  # the oldest, barest record
    bare = run_record.read_record(tmp_path / "b")
    assert (bare.run_id, bare.git, bare.git_commit, bare.duration_s) == ("b", {}, None, None)
    (tmp_path / "b" / "run.json").write_text("[1]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        run_record.read_record(tmp_path / "b")
    lost = run_record.RunRecord("c", "completed", record=run_record.LOST_NOTE, extra={"lost": True})
    assert lost.lost and lost.to_dict()["record"].startswith("reconstructed from EXPERIMENTS_INDEX.md")


def test_interactive_run_dir_and_metrics_merge(monkeypatch):
    for var in (runs.RUN_DIR_ENV_VAR, runs.RUN_ID_ENV_VAR):
        monkeypatch.setenv(var, "placeholder")  # so that monkeypatch restores the variable's absence
        monkeypatch.delenv(var)
    run_dir = runs.current_run_dir()
    assert run_dir.parent == paths.runs_dir() and "_interactive_" in run_dir.name
    assert runs.current_run_dir() == run_dir and runs.current_run_id() == run_dir.name
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interactive"
    runs.save_metrics({"a": 1, "b": 2})
    runs.save_metrics({"b": 3})
    assert runs.load_metrics(run_dir.name) == {"a": 1, "b": 3}


# --------------------------------------------------------------------------- execution
def test_run_directory_contents(toy):
    notebook, root = toy
    result = runs.run_notebook(notebook, "small", {"gamma": 2.0}, params_root=root)
    run_dir = result.run_dir
    assert result.status == "completed" and result.error is None and result.duration_s > 0
    assert run_dir == paths.runs_dir() / result.run_id
    assert sorted(p.name for p in run_dir.iterdir()) == [
        f"{TOY_STEM}.ipynb",
        "kernel.log",  # the kernel's stderr, kept out of the notebook's outputs
        "metrics.json",
        "params.json",
        "run.json",
    ]

    params = json.loads((run_dir / "params.json").read_text())
    assert params["parameters"] == {
        "alpha": 4,
        "beta": "from-yaml",
        "gamma": 2.0,
        "fail": False,
        "run_id": result.run_id,
    }
    assert params["parameter_set"] == "small" and params["overrides"] == {"gamma": 2.0}
    assert params["sources"]["beta"] == "set" and params["sources"]["fail"] == "default"

    record = json.loads((run_dir / "run.json").read_text())
    assert record["run_id"] == result.run_id and record["status"] == "completed" and record["error"] is None
    assert record["notebook"] == str(notebook.resolve()) and record["parameter_set"] == "small"
    assert set(record["git"]) == {"commit", "dirty", "branch"}
    assert set(record["packages"]) == set(provenance.PACKAGES) and record["packages"]["ctlib"]
    assert record["device"]["cpu_count"] >= 1 and "cuda_available" in record["device"]
    assert record["started_utc"] < record["ended_utc"] and record["duration_s"] == result.duration_s

    metrics = runs.load_metrics(result.run_id)
    assert metrics["score"] == 8.0 and metrics["label"] == "from-yaml"  # both save_metrics calls merged
    assert metrics["cwd"] == str(notebook.parent.resolve())
    assert metrics["run_dir"] == str(run_dir) and metrics["run_id_env"] == result.run_id

    executed = nbformat.read(run_dir / f"{TOY_STEM}.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f'run_id = "{result.run_id}"' in injected[0].source
    assert executed.cells[-1].outputs[0]["text"] == "done\n"
    assert runs.run_dir_of(result.run_id) == run_dir and runs.latest_run("toy") == result.run_id


def test_failed_run_is_recorded_and_earlier_run_untouched(toy):
    notebook, root = toy
    first = runs.run_notebook(notebook, params_root=root)
    before = {p.name: p.read_bytes() for p in first.run_dir.iterdir()}

    with pytest.raises(runs.RunFailed, match="toy failure on purpose") as caught:
        runs.run_notebook(notebook, overrides={"fail": True}, params_root=root)
    failed = caught.value.result
    assert failed.status == "failed" and failed.run_id != first.run_id
    assert failed.error.startswith("ValueError: toy failure on purpose (notebook cell")

    record = json.loads((failed.run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == failed.error
    assert "toy failure on purpose" in record["error_traceback"] and record["ended_utc"]
    executed = nbformat.read(failed.run_dir / f"{TOY_STEM}.ipynb", as_version=4)
    errors = [
        o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert [e.ename for e in errors] == ["ValueError"]
    assert runs.load_metrics(failed.run_id)["score"] == 0.5  # saved before the failing cell

    assert {p.name: p.read_bytes() for p in first.run_dir.iterdir()} == before
    with pytest.raises(RuntimeError, match="status 'failed'.*ValueError"):
        runs.run_dir_of(failed.run_id)
    assert runs.latest_run(TOY_STEM) == first.run_id
    assert runs.latest_run("toy", status="failed") == failed.run_id


def test_chain_wires_upstream_run_id(toy, tmp_path):
    notebook, root = toy
    consumer = write_notebook(
        tmp_path / "study" / "2026-01-02_02_consume.ipynb", CONSUMER_PARAMETERS, CONSUMER_BODY
    )
    upstream, downstream = runs.run_chain([(notebook, "other", {"alpha": 3}), consumer], params_root=root)
    assert upstream.status == downstream.status == "completed"
    params = json.loads((downstream.run_dir / "params.json").read_text())
    assert params["parameters"] == {"toy_run_id": upstream.run_id}
    assert runs.load_metrics(downstream.run_id) == {"upstream_score": 0.75}


def test_upstream_run_dir_named_latest_or_fresh(tmp_path, monkeypatch):
    """An explicit id wins; "" takes the newest completed run, or runs the upstream notebook once."""
    notebook = tmp_path / "2026-01-01_01_up.ipynb"
    params = new_code_cell("alpha = 1  # int: a parameter", metadata={"tags": ["parameters"]})
    body = new_code_cell("from ctlib import runs\nruns.save_metrics({'alpha': alpha})")
    nb = new_notebook(cells=[params, body])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebook)
    monkeypatch.setenv(runs.RUN_DIR_ENV_VAR, str(tmp_path / "consumer"))

    fresh = runs.upstream_run_dir(notebook)
    assert runs.read_run(fresh.name).status == "completed"
    again = runs.upstream_run_dir(notebook)  # reuses the completed run instead of running again
    assert again == fresh and len(list(paths.runs_dir().iterdir())) == 1
    assert json.loads((tmp_path / "consumer" / "upstream.json").read_text()) == {notebook.stem: fresh.name}
    with pytest.raises(FileNotFoundError):
        runs.upstream_run_dir(notebook, "20200101-000000_up_0000")


def test_latest_run_filters_on_resolved_parameters(tmp_path, monkeypatch):
    """``where`` keeps runs whose params.json has those values; a run without params.json never matches."""
    monkeypatch.setenv(paths.RUNS_ENV_VAR, str(tmp_path))
    for name, mode, started in [("a", "x", "T1"), ("b", "y", "T2"), ("c", "x", "T3"), ("d", None, "T4")]:
        (tmp_path / name).mkdir()
        record = run_record.RunRecord(name, "completed", notebook_stem="2026-01-01_01_toy",
                                      started_utc=started)
        record.to_file(tmp_path / name / "run.json")
        if mode:
            (tmp_path / name / "params.json").write_text(json.dumps({"parameters": {"mode": mode}}))
    assert runs.latest_run("toy") == "d"
    assert runs.latest_run("toy", where={"mode": "x"}) == "c"
    assert runs.latest_run("toy", where={"mode": "y"}) == "b"
    assert runs.latest_run("toy", where={"mode": "z"}) is None
