"""Continuing a killed run: its checkpoint is copied to the new run's checkpoint path, refusals otherwise."""

from __future__ import annotations

import pytest
import torch

from ctlib import checkpoint, paths
from ctlib.errors import CTInputError
from ctlib.runs.record import RunRecord
from ctlib.train import resume


def _run(run_id: str, status: str) -> object:
    run_dir = paths.runs_dir() / run_id
    run_dir.mkdir(parents=True)
    RunRecord(run_id=run_id, status=status, notebook_stem="2026-11-23_02_vae").to_file(run_dir / "run.json")
    return run_dir


def test_resume_copies_the_checkpoint_of_a_killed_run(tmp_path):
    killed = _run("20261123-000000_vae_killed", "failed")
    source = checkpoint.save_checkpoint(
        checkpoint.checkpoint_file(killed, "vae"),
        model_state={"w": torch.ones(2)},
        config={},
        normalization={},
        extra={"step": 3},
        rng_state=False,
    )
    target = checkpoint.checkpoint_file(tmp_path / "new_run", "vae")
    assert resume.resume_from("", target) is None and not target.exists()
    assert resume.resume_from(killed.name, target) == target
    assert target.read_bytes() == source.read_bytes()
    assert checkpoint.load_checkpoint(target)["extra"]["step"] == 3


def test_resume_refuses_a_missing_run_or_checkpoint(tmp_path):
    target = checkpoint.checkpoint_file(tmp_path / "new_run", "vae")
    with pytest.raises(CTInputError, match="no_such_run"):
        resume.resume_from("no_such_run", target)
    empty = _run("20261123-000000_vae_empty", "failed")
    with pytest.raises(CTInputError, match="no checkpoint to resume from"):
        resume.resume_from(empty.name, target)
    assert not target.exists()


def test_resumed_run_names_the_run_it_resumed(tmp_path):
    """Issue 11: the new run's run.json and the index say which run it continued."""
    from ctlib.runs import index as experiments_index
    from ctlib.runs import record as record_io

    killed = _run("20261123-000000_vae_dead", "failed")
    checkpoint.save_checkpoint(
        checkpoint.checkpoint_file(killed, "vae"), model_state={"w": torch.ones(2)}, config={},
        normalization={}, extra={"step": 3}, rng_state=False,
    )
    new = _run("20261123-000001_vae_new", "completed")
    resume.resume_from(killed.name, checkpoint.checkpoint_file(new, "vae"))
    resumed = record_io.read_record(new).resumed_from
    assert resumed == {"run_id": killed.name, "checkpoint": "checkpoints/vae.pt"}
    table = experiments_index.render_table(experiments_index.build_index(paths.runs_dir(), tmp_path / "none"))
    assert f"completed (resumed from {killed.name})" in table
    rows = {row["run_id"]: row for row in experiments_index.parse_table(table)}
    assert rows[new.name]["status"] == "completed"
