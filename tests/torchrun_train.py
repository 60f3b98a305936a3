"""Worker program of tests/test_train_torchrun.py, launched by ``torchrun`` (one process per rank).

``python -m torch.distributed.run ... tests/torchrun_train.py OUT KILL_AT`` trains a tiny model for 6 steps
with ``ctlib.train.loop.train`` (which joins torchrun's process group: gloo on CPU), checkpointing every 2
steps into ``OUT/ckpt.pt``; on torchrun's first attempt, rank 1 SIGKILLs itself at step ``KILL_AT`` (0:
never), so torchrun (``--max-restarts``) restarts both workers, which resume from the checkpoint. Each rank
writes ``OUT/rank<r>.pt``: its final parameters, the attempt and the world it trained in.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from ctlib.data import windows
from ctlib.train import distributed, loop
from ctlib.train.streams import TensorDataset


def main(out: Path, kill_at: int) -> None:
    torch.set_num_threads(1)
    config = loop.TrainConfig(
        steps=6,
        batch_size=4,
        lr=0.05,
        log_every=1,
        checkpoint_every=2,
        checkpoint_minutes=60.0,
        device="cpu",
        seed=1,
    )
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    data = loop.batch_stream(TensorDataset(x, x.sum(1, keepdim=True)), config)  # sharded by the torchrun env
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    attempt, rank = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(os.environ["RANK"])

    def loss(batch, net):
        inputs, target = batch
        return (net(inputs) - target).pow(2).mean(), {}

    def kill_on_first_attempt(record, net):
        if kill_at and attempt == 0 and rank == 1 and record["step"] >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    history = loop.train(
        model,
        loss,
        data,
        config,
        checkpoint_path=out / "ckpt.pt",
        normalization=windows.normalization_record("full"),
        callback=kill_on_first_attempt,
    )
    world = distributed.world_from_env()
    torch.save(
        {
            "params": [p.detach() for p in model.parameters()],
            "attempt": attempt,
            "world_size": world.world_size,
            "distributed": world.distributed,
            "steps": [int(r["step"]) for r in history],
        },
        out / f"rank{rank}.pt",
    )
    distributed.cleanup_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
