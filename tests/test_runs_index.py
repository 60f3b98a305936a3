"""EXPERIMENTS_INDEX.md: rows for completed and failed runs from runs/ and experiments/,
Notes kept verbatim."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from ctlib import paths, runs
from ctlib.runs import archive
from ctlib.runs import index as experiments_index

CUSTOM_NOTES = (
    "## Notes\n\n"
    "- 2026-01-02: the x4 ablation | beats cubic   \n"
    "\n## Notes on failures\n\n| hand | table |\n|---|---|\n| kept | verbatim |\n"
    "no final newline here"
)


@pytest.fixture(autouse=True)
def _isolated_archive(tmp_path_factory, monkeypatch):
    """The archive is a temporary folder, never the repository's experiments/."""
    monkeypatch.setenv(archive.ARCHIVE_ENV_VAR, str(tmp_path_factory.mktemp("experiments")))


def fake_run(
    run_id: str,
    started: str,
    *,
    status: str = "completed",
    error: str | None = None,
    commit: str | None = "0123456789abcdef",
    dirty: bool | None = False,
    metrics: dict | None = None,
    root: Path | None = None,
) -> Path:
    """A run directory written by hand, as ``run_notebook`` would leave it (in ``root``, default runs/)."""
    run_dir = (root or paths.runs_dir()) / run_id
    run_dir.mkdir(parents=True)
    record = {
        "run_id": run_id,
        "notebook": "notebooks/slice_interp/2026-11-23_01_preprocess.ipynb",
        "parameter_set": "cpu-real",
        "status": status,
        "error": error,
        "started_utc": started,
        "duration_s": 125.4,
        "git": {"commit": commit, "dirty": dirty},
    }
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "params.json").write_text(json.dumps({"parameters": {"k": 4}}))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| `")]


def test_index_of_real_runs_keeps_notes_across_regenerations(tmp_path):
    notebook = tmp_path / "2026-01-01_01_toy.ipynb"
    cells = [
        new_code_cell("fail = False  # bool: raise after saving metrics", metadata={"tags": ["parameters"]}),
        new_code_cell(
            'from ctlib import runs\nruns.save_metrics({"psnr_db": 31.234567, "ssim": 0.9123456, "note": '
            '"x"})'
        ),
        new_code_cell('if fail:\n    raise ValueError("broken | on purpose")'),
    ]
    nbformat.write(new_notebook(cells=cells), notebook)
    good = runs.run_notebook(notebook)
    bad = runs.run_notebook(notebook, overrides={"fail": True}, raise_on_failure=False)
    assert bad.status == "failed"

    index = experiments_index.write_index(tmp_path / "EXPERIMENTS_INDEX.md")
    text = index.read_text()
    assert "do not edit by hand" in text and "`ctlib index`" in text and "`make index`" in text
    assert text.endswith(experiments_index.DEFAULT_NOTES)
    rows = table_rows(text)
    assert [row.split("`")[1] for row in rows] == [bad.run_id, good.run_id]  # newest first
    assert "| completed |" in rows[1] and "| runs/ | psnr_db=31.23, ssim=0.9123 |" in rows[1]
    assert "| failed: ValueError: broken \\| on purpose (notebook cell In [4]) |" in rows[0]
    assert "2026-01-01_01_toy" in rows[0] and "| defaults |" in rows[0]

    index.write_text(text[: text.index("## Notes")] + CUSTOM_NOTES)
    for _ in range(2):
        experiments_index.write_index(index)
        assert index.read_text().endswith("\n\n" + CUSTOM_NOTES)
        assert index.read_text().count("<!-- BEGIN GENERATED") == 1
    assert table_rows(index.read_text()) == rows


def test_rows_show_git_duration_metrics_and_errors():
    fake_run(
        "20260101-000000_preprocess_aaaa",
        "2026-01-01T00:00:00Z",
        metrics={f"m{i}": i + 0.123456 for i in range(8)} | {"flag": True, "name": "x"},
    )
    fake_run(
        "20260102-000000_preprocess_bbbb",
        "2026-01-02T00:00:00Z",
        status="failed",
        error="RuntimeError: CUDA out of memory\nsecond line",
        commit=None,
        dirty=None,
    )
    fake_run("20260103-000000_preprocess_cccc", "2026-01-03T00:00:00Z", dirty=True, metrics={})
    (paths.runs_dir() / "20260104-000000_broken_dddd").mkdir()
    (paths.runs_dir() / "20260104-000000_broken_dddd" / "run.json").write_text("{not json")
    (paths.runs_dir() / "no-record").mkdir()  # a folder without run.json is not a run

    entries = experiments_index.build_index()
    assert [e["run_id"][-4:] for e in entries] == ["cccc", "bbbb", "aaaa", "dddd"]
    assert entries[0]["params"] == {"k": 4} and entries[3]["status"] == "unreadable"
    rows = dict(zip("cbad", table_rows(experiments_index.render_table(entries)), strict=True))
    assert (
        "| slice_interp/2026-11-23_01_preprocess | cpu-real | 01234567-dirty | completed | 2 min 05 s | "
        "runs/ |"
        in rows["c"]
    )
    assert "| no git | failed: RuntimeError: CUDA out of memory second line |" in rows["b"]
    assert rows["a"].endswith("| m0=0.1235, m1=1.123, m2=2.123, m3=3.123, m4=4.123, m5=5.123, (+2 more) |")
    assert "| 01234567 |" in rows["a"] and "unreadable: run.json: JSONDecodeError" in rows["d"]


def test_hand_written_file_without_notes_is_not_overwritten(tmp_path):
    index = tmp_path / "EXPERIMENTS_INDEX.md"
    index.write_text("# My own experiment log\n")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        experiments_index.write_index(index)
    assert index.read_text() == "# My own experiment log\n"


def test_formatting_helpers():
    assert experiments_index.format_duration(None) == ""
    assert experiments_index.format_duration(3.21) == "3.2 s"
    assert experiments_index.format_duration(7384) == "2 h 03 min"
    assert (
        experiments_index.format_metrics({"auroc": 0.87654, "n": 12, "nan": float("nan")})
        == "auroc=0.8765, n=12, nan=nan"
    )


def test_interactive_runs_are_left_out_unless_asked():
    fake_run("20260101-000000_preprocess_aaaa", "2026-01-01T00:00:00Z")
    fake_run("20260101-000001_interactive_bbbb", "2026-01-01T00:00:01Z", status="interactive")
    assert [e["run_id"] for e in experiments_index.build_index()] == ["20260101-000000_preprocess_aaaa"]
    both = experiments_index.build_index(include_interactive=True)
    assert [e["status"] for e in both] == ["interactive", "completed"]


def test_index_merges_runs_and_archive_once_each(tmp_path):
    archived = archive.archive_dir()
    fake_run("20260101-000000_preprocess_aaaa", "2026-01-01T00:00:00Z", metrics={"local": 1})
    fake_run("20260102-000000_preprocess_bbbb", "2026-01-02T00:00:00Z", metrics={"local": 2})
    fake_run(
        "20260102-000000_preprocess_bbbb", "2026-01-02T00:00:00Z", metrics={"archived": 2}, root=archived
    )
    fake_run(
        "20260103-000000_preprocess_cccc", "2026-01-03T00:00:00Z", metrics={"archived": 3}, root=archived
    )
    (archived / ".20260104-000000_preprocess_dddd.tmp").mkdir()  # an archive copy under way is no run
    entries = experiments_index.build_index()
    assert [(e["run_id"][-4:], e["kept"], e["metrics"]) for e in entries] == [
        ("cccc", ("archive",), {"archived": 3}),
        ("bbbb", ("runs", "archive"), {"local": 2}),  # in both: read from runs/
        ("aaaa", ("runs",), {"local": 1}),
    ]
    text = experiments_index.write_index(tmp_path / "INDEX.md").read_text()
    rows = table_rows(text)
    assert (
        ["| experiments/ |" in rows[0], "| runs/, experiments/ |" in rows[1], "| runs/ |" in rows[2]]
        == [True] * 3
    )
    assert "3 runs (3 completed, 0 failed, 0 running, 0 killed; 2 archived, 0 lost)" in text
    assert "Lost runs" not in text


def test_table_reads_back_as_the_facts_it_shows():
    fake_run("20260101-000000_preprocess_aaaa", "2026-01-01T00:00:00Z",
             metrics={f"m{i}": i + 0.123456 for i in range(8)} | {"n": 140})
    fake_run("20260102-000000_preprocess_bbbb", "2026-01-02T00:00:00Z", status="failed",
             error="ValueError: a | b: c", commit=None, dirty=None)
    rows = experiments_index.parse_table(experiments_index.render_table(experiments_index.build_index()))
    failed, done = rows
    assert (failed["status"], failed["error"], failed["git_commit"], failed["git_dirty"]) == (
        "failed", "ValueError: a | b: c", None, None)
    assert (done["status"], done["git_commit"], done["git_dirty"], done["duration_s"]) == (
        "completed", "01234567", False, 125.0)
    assert done["notebook"] == "notebooks/slice_interp/2026-11-23_01_preprocess.ipynb"
    assert done["metrics"] == {f"m{i}": float(f"{i + 0.123456:.4g}") for i in range(6)}
    assert done["metrics_left_out"] == 3 and done["parameter_set"] == "cpu-real"
    assert [experiments_index.parse_duration(t) for t in ("3.2 s", "44 min 20 s", "2 h 03 min", "")] == [
        3.2, 2660, 7380, None]


def test_lost_rows_are_kept_from_an_earlier_table(tmp_path):
    """A row of an earlier index whose run folder is gone becomes a marked archive entry and stays listed."""
    fake_run(
        "20260101-000000_preprocess_aaaa", "2026-01-01T00:00:00Z", metrics={f"m{i}": i for i in range(9)}
    )
    fake_run("20260102-000000_preprocess_bbbb", "2026-01-02T00:00:00Z", dirty=True)
    old_rows = table_rows(experiments_index.render_table(experiments_index.build_index()))
    earlier = experiments_index.parse_table(experiments_index.render_table(experiments_index.build_index()))
    for row in earlier:
        archive.write_lost_record(row, "a test table")
    for run_dir in paths.runs_dir().iterdir():  # the run folders are lost
        for file in run_dir.iterdir():
            file.unlink()
        run_dir.rmdir()
    with pytest.raises(archive.ArchiveRefused, match="never replaces"):
        archive.write_lost_record(earlier[0], "again")

    text = experiments_index.write_index(tmp_path / "INDEX.md").read_text()
    rows = table_rows(text)
    assert [r.replace("| **lost** |", "| runs/ |") for r in rows] == old_rows  # same facts, marked lost
    assert "(+3 more)" in rows[1] and "0 archived, 2 lost" in text
    assert "Lost runs (2" in text
    assert "`20260102-000000_preprocess_bbbb`, `20260101-000000_preprocess_aaaa`." in text
    record = json.loads((archive.archive_dir() / "20260101-000000_preprocess_aaaa" / "run.json").read_text())
    assert record["record"] == "reconstructed from EXPERIMENTS_INDEX.md; the run directory is lost"
    assert record["lost"] is True and record["started_utc"] == "2026-01-01T00:00:00Z"


def test_committed_lost_runs_survive_an_index_from_an_empty_runs_folder(tmp_path):
    """The repository's experiments/ keeps the rows of the runs behind README's numbers on a fresh clone."""
    committed = paths.repo_root() / "experiments"
    lost = sorted(d.name for d in committed.iterdir() if json.loads((d / "run.json").read_text()).get("lost"))
    assert len(lost) >= 25 and "20261123-064143_diffusion_0706" in lost
    empty = tmp_path / "runs"
    empty.mkdir()
    text = experiments_index.write_index(
        tmp_path / "INDEX.md", runs_dir=empty, archive_dir=committed
    ).read_text()
    rows = {row.split("`")[1]: row for row in table_rows(text)}
    assert lost == sorted(run_id for run_id, row in rows.items() if "| **lost** |" in row)
    assert all(f"`{run_id}`" in text.split("| Run |")[0] for run_id in lost)  # named above the table
    assert (
        "| cpu-real | c77f0e44-dirty | completed | 32 min 42 s | **lost** | latent_scale_factor=1.048"
        in rows["20261123-064143_diffusion_0706"]
    )


def test_local_index_takes_the_committed_notes_and_leaves_the_committed_index_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "repo_root", lambda: tmp_path)
    committed = tmp_path / "EXPERIMENTS_INDEX.md"
    committed.write_text("# Experiments index\n\n## Notes\n\n- a note kept by hand\n")
    before = committed.read_text()
    local = experiments_index.write_local_index()
    assert local == paths.runs_dir() / "INDEX.md"
    assert "- a note kept by hand" in local.read_text()
    assert committed.read_text() == before
