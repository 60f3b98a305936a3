"""Multi-process training through torchrun's c10d rendezvous (CPU, gloo): two workers train one DDP model, a
worker killed mid-run makes torchrun restart both, and they resume from the checkpoint to the same weights;
the run ids of a notebook run launched by torchrun (one ``ctlib run`` per rank, restarts resuming)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctlib import paths
from ctlib.runs import torchrun_ids

WORKER = Path(__file__).with_name("torchrun_train.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(rdzv_id: str, *program: str, max_restarts: int = 0) -> subprocess.CompletedProcess:
    """torchrun as a SLURM node would start it: c10d rendezvous on an endpoint (one node, 2 workers here)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", rdzv_id,
               "--max-restarts", str(max_restarts), "--monitor-interval", "0.5", *program]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(paths.repo_root()))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def _torchrun(out: Path, kill_at: int) -> subprocess.CompletedProcess:
    out.mkdir()
    return torchrun(out.name, str(WORKER), str(out), str(kill_at), max_restarts=1)


@pytest.mark.slow
def test_two_workers_through_c10d_and_a_killed_worker_resumes(tmp_path):
    whole = _torchrun(tmp_path / "whole", kill_at=0)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _torchrun(tmp_path / "killed", kill_at=5)
    assert killed.returncode == 0, killed.stderr[-3000:]
    ranks = {
        name: [torch.load(tmp_path / name / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
        for name in ("whole", "killed")
    }
    for name, results in ranks.items():
        assert all(r["world_size"] == 2 and r["distributed"] for r in results), name  # one DDP job of 2
        for a, b in zip(results[0]["params"], results[1]["params"], strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)  # DDP keeps the ranks' weights identical
    assert [r["attempt"] for r in ranks["whole"]] == [0, 0]
    assert [r["attempt"] for r in ranks["killed"]] == [1, 1]  # torchrun restarted both workers once
    assert ranks["killed"][0]["steps"] == [1, 2, 3, 4, 5, 6]  # history 1-4 from the checkpoint, 5-6 after
    for a, b in zip(ranks["whole"][0]["params"], ranks["killed"][0]["params"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # resumed exactly: the same weights as unbroken
    assert "SIGKILL" in killed.stderr or "Signals.SIGKILL" in killed.stderr or "-9" in killed.stderr


def test_run_ids_of_a_notebook_run_under_torchrun(tmp_path):
    env = {"WORLD_SIZE": "4", "RANK": "0", "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_RUN_ID": "job42"}
    assert torchrun_ids.under_torchrun(env) and not torchrun_ids.under_torchrun({"WORLD_SIZE": "1"})
    stem = "2026-11-23_02_dose_train"
    assert torchrun_ids.torchrun_run_id(None, stem, True, env) == ("dose_train_job42", {})
    assert torchrun_ids.torchrun_run_id("base", stem, True, {**env, "RANK": "3"}) == ("base-rank3", {})
    restarted = {**env, "TORCHELASTIC_RESTART_COUNT": "2", "RANK": "1"}
    assert torchrun_ids.torchrun_run_id("base", stem, True, restarted) == ("base-restart2-rank1", {})
    (paths.runs_dir() / "base-restart1" / "checkpoints").mkdir(parents=True)
    (paths.runs_dir() / "base-restart1" / "checkpoints" / "last.pt").write_bytes(b"")
    assert torchrun_ids.torchrun_run_id("base", stem, True, restarted) == (
        "base-restart2-rank1",
        {"resume_run_id": "base-restart1"},
    )
    assert torchrun_ids.torchrun_run_id("base", stem, False, restarted) == ("base-restart2-rank1", {})
    with pytest.raises(ValueError, match="--rdzv-id"):
        torchrun_ids.torchrun_run_id(None, stem, True, {**env, "TORCHELASTIC_RUN_ID": "none"})


NOTEBOOK_PARAMETERS = 'steps = 4  # int\nresume_run_id = ""  # str\n'
NOTEBOOK_BODY = """\
import torch
from ctlib import runs
from ctlib.data import windows
from ctlib.train import distributed, loop, resume
from ctlib.train.streams import TensorDataset
torch.set_num_threads(1)
checkpoint_path = runs.current_run_dir() / "checkpoints" / "last.pt"
resume.resume_from(resume_run_id, checkpoint_path)
config = loop.TrainConfig(steps=steps, batch_size=4, lr=0.05, log_every=1, checkpoint_every=2, device="cpu")
x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
data = loop.batch_stream(TensorDataset(x, x.sum(1, keepdim=True)), config)  # sharded by rank
torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
loop.train(model, lambda b, net: ((net(b[0]) - b[1]).pow(2).mean(), {}), data, config,
           checkpoint_path=checkpoint_path, normalization=windows.normalization_record("full"))
world = distributed.world_from_env()
runs.save_metrics({"world_size": world.world_size, "joined": world.distributed,
                   "weight_sum": float(sum(p.sum() for p in model.parameters()))})
"""


@pytest.mark.slow
def test_a_notebook_run_as_two_ranks_of_one_ddp_job(tmp_path):
    from test_runs import write_notebook

    notebook = write_notebook(
        tmp_path / "nb" / "2026-01-01_01_ddp_toy.ipynb", NOTEBOOK_PARAMETERS, NOTEBOOK_BODY
    )
    done = torchrun("toyjob", "-m", "ctlib.cli", "run", str(notebook))
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    metrics = [runs_metrics(paths.runs_dir() / rid) for rid in ("ddp_toy_toyjob", "ddp_toy_toyjob-rank1")]
    assert [m["world_size"] for m in metrics] == [2, 2] and all(m["joined"] for m in metrics)
    assert metrics[0]["weight_sum"] == metrics[1]["weight_sum"]  # one model trained by both ranks
    assert (paths.runs_dir() / "ddp_toy_toyjob" / "checkpoints" / "last.pt").is_file()  # rank 0 checkpoints
    assert not (paths.runs_dir() / "ddp_toy_toyjob-rank1" / "checkpoints" / "last.pt").exists()


def runs_metrics(run_dir: Path) -> dict:
    import json

    from ctlib.runs import record as run_record

    assert run_record.read_record(run_dir).status == "completed"
    return json.loads((run_dir / "metrics.json").read_text())
