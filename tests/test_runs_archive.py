"""The run archive: light copy of a completed run, refusals, and the index after runs/ is emptied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ctlib import cli, paths, runs
from ctlib.runs import archive
from ctlib.runs import index as experiments_index
from ctlib.runs import record as run_record
from tests.test_runs import TOY_PARAMETERS, write_notebook

TOY_OUTPUTS = """\
from pathlib import Path
from ctlib import runs
run_dir = runs.current_run_dir()
runs.save_metrics({"psnr_db": 30.5 * alpha})
(run_dir / "figures").mkdir()
(run_dir / "figures" / "curve.png").write_bytes(b"png" * 100)
(run_dir / "figures" / "curve.json").write_text('{"run_id": "x"}')
(run_dir / "figures" / "huge.png").write_bytes(b"0" * (2 * 2**20 + 1))
(run_dir / "results.csv").write_text("a,b\\n1,2\\n")
(run_dir / "upstream.json").write_text('{"2026-01-01_01_up": "20260101-000000_up_0000"}')
(run_dir / "checkpoints").mkdir()
(run_dir / "checkpoints" / "model.pt").write_bytes(b"w" * 300)
(run_dir / "latents.npz").write_bytes(b"z" * 10)
"""


@pytest.fixture(autouse=True)
def _isolated_archive(tmp_path_factory, monkeypatch):
    """The archive is a temporary folder, never the repository's experiments/."""
    monkeypatch.setenv(archive.ARCHIVE_ENV_VAR, str(tmp_path_factory.mktemp("experiments")))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> tuple[str, Path]:
    """(run id, runs folder) of one completed toy run with figures, a table, a checkpoint and an array."""
    runs_dir = tmp_path_factory.mktemp("toy_runs")
    notebook = write_notebook(
        tmp_path_factory.mktemp("nb") / "2026-01-01_01_toy.ipynb", TOY_PARAMETERS, TOY_OUTPUTS
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(paths.RUNS_ENV_VAR, str(runs_dir))
        result = runs.run_notebook(notebook)
    assert result.status == "completed"
    return result.run_id, runs_dir


@pytest.fixture
def runs_copy(toy_run, tmp_path, monkeypatch) -> str:
    """A fresh copy of the toy run's runs folder as this test's runs/; the toy run's id."""
    run_id, source = toy_run
    shutil.copytree(source, tmp_path / "runs")
    monkeypatch.setenv(paths.RUNS_ENV_VAR, str(tmp_path / "runs"))
    return run_id


def _fake_record(run_id: str, status: str) -> Path:
    run_dir = paths.runs_dir() / run_id
    run_dir.mkdir(parents=True)
    record = run_record.RunRecord(run_id, status, error="ValueError: x" if status == "failed" else None)
    record.to_file(run_dir)
    return run_dir


def test_archive_round_trip_keeps_the_light_record_only(runs_copy, tmp_path):
    run_id = runs_copy
    done = archive.archive_run(run_id)
    entry = archive.archive_dir() / run_id
    assert done.path == entry and not [p for p in entry.parent.iterdir() if p.name.startswith(".")]
    assert sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file()) == [
        "2026-01-01_01_toy.ipynb", "archive.json", "figures/curve.json", "figures/curve.png", "metrics.json",
        "params.json", "results.csv", "run.json", "upstream.json",
    ]
    for rel in done.files:
        assert (entry / rel).read_bytes() == (paths.runs_dir() / run_id / rel).read_bytes()
    skipped = {s["path"]: s["reason"] for s in done.skipped}
    assert (
        skipped["checkpoints/"].startswith("folder of 1 files")
        and skipped["latents.npz"] == "checkpoint or array"
    )
    assert (
        "2.0 MB, over the 2.0 MB cap" in skipped["figures/huge.png"]
        and skipped["kernel.log"] == "not part of the light record"
    )
    assert json.loads((entry / "archive.json").read_text())["skipped"] == done.skipped

    shutil.rmtree(paths.runs_dir())  # a fresh clone: no runs/ at all
    text = experiments_index.write_index(tmp_path / "INDEX.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| `")]
    assert f"`{run_id}`" in row and "| completed |" in row and "| experiments/ | psnr_db=30.5 |" in row
    assert "1 runs (1 completed, 0 failed, 0 running, 0 killed; 1 archived, 0 lost)" in text


def test_archive_refuses_unknown_unfinished_and_existing_runs(runs_copy):
    with pytest.raises(archive.ArchiveRefused, match="run 'nope' not found"):
        archive.archive_run("nope")
    for status in ("failed", "running", "interactive"):
        _fake_record(f"20260101-000000_toy_{status}", status)
        with pytest.raises(archive.ArchiveRefused, match=f"status '{status}': only completed runs"):
            archive.archive_run(f"20260101-000000_toy_{status}")
    assert not any(archive.archive_dir().iterdir())

    archive.archive_run(runs_copy)
    entry = archive.archive_dir() / runs_copy
    (entry / "metrics.json").write_text('{"edited": 1}')
    with pytest.raises(archive.ArchiveRefused, match="already exists: pass --force"):
        archive.archive_run(runs_copy)
    assert (entry / "metrics.json").read_text() == '{"edited": 1}'
    archive.archive_run(runs_copy, force=True)
    assert json.loads((entry / "metrics.json").read_text()) == {"psnr_db": 30.5}
    assert sorted(p.name for p in archive.archive_dir().iterdir()) == [runs_copy]


def test_archive_command_checks_every_id_first(runs_copy, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(paths, "repo_root", lambda: tmp_path)  # the index it rewrites
    _fake_record("20260101-000000_toy_dead", "failed")
    assert cli.main(["archive", runs_copy, "20260101-000000_toy_dead"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "ctlib archive: run '20260101-000000_toy_dead' has status 'failed': only completed runs are archived"
    ]
    assert not any(archive.archive_dir().iterdir())  # nothing copied when one id is refused

    assert cli.main(["archive", runs_copy]) == 0
    out = capsys.readouterr().out
    assert f"archived {runs_copy} -> " in out and "left out checkpoints/" in out
    assert runs_copy in (tmp_path / "EXPERIMENTS_INDEX.md").read_text()
    assert cli.main(["archive", runs_copy]) == 2 and "--force" in capsys.readouterr().err
    assert cli.main(["archive", "--force", runs_copy]) == 0
