"""DDP hooks: torchrun environment, index sharding, the DDP code path (gloo on CPU, 1 and 2 processes)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ctlib import checkpoint
from ctlib.data import windows
from ctlib.train import distributed, loop
from ctlib.train.streams import BatchStream, IndexStream, TensorDataset


def test_world_from_env():
    assert distributed.world_from_env({}) == distributed.WorldInfo(0, 0, 1, False)
    world = distributed.world_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (world.rank, world.local_rank, world.world_size, world.is_main) == (3, 1, 4, False)
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.world_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="integers"):
        distributed.world_from_env({"RANK": "zero"})


def test_single_process_setup_is_a_no_op(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    world = distributed.setup_distributed()
    assert world == distributed.WorldInfo() and not torch.distributed.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(model, world, torch.device("cpu")) is model
    assert distributed.all_reduce_mean({"a": 1.5}, world) == {"a": 1.5}
    assert distributed.resolve_device("cpu", world) == torch.device("cpu")


@pytest.mark.parametrize("n,world_size", [(10, 2), (11, 2), (9, 3), (5, 4)])
def test_shards_partition_each_epoch(n, world_size):
    order = np.random.default_rng(0).permutation(n)
    shards = [distributed.shard_indices(order, r, world_size) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1
    merged = np.concatenate(shards)
    assert set(merged.tolist()) == set(range(n))
    assert len(merged) - n == (-n) % world_size  # only the padding repeats
    streams = [IndexStream(n, seed=2, rank=r, world_size=world_size) for r in range(world_size)]
    for epoch in range(2):
        per_rank = [s.take(s.epoch_length) for s in streams]
        assert set(sum(per_rank, [])) == set(range(n))
        if n % world_size == 0:
            assert sorted(sum(per_rank, [])) == list(range(n))
        assert all(s.epoch == epoch + 1 for s in streams)
    with pytest.raises(ValueError, match="rank"):
        IndexStream(4, rank=2, world_size=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(rank: int = 0, world_size: int = 1) -> BatchStream:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g)
    return BatchStream(
        TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, seed=1, rank=rank, world_size=world_size
    )


def _loss(batch, model):
    x, y = batch
    return (model(x) - y).pow(2).mean(), {}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


CONFIG = loop.TrainConfig(
    steps=3, batch_size=4, lr=0.05, grad_accum_steps=2, checkpoint_every=2, device="cpu", seed=1
)


def test_ddp_path_with_one_process_matches_plain_training(tmp_path, monkeypatch):
    plain = _model()
    loop.train(plain, _loss, _data(), CONFIG, checkpoint_path=tmp_path / "plain.pt",
               normalization=windows.normalization_record("full"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    world = distributed.setup_distributed(init_single=True)
    try:
        assert world.distributed and torch.distributed.get_backend() == "gloo"
        ddp_model = _model()
        wrapped = distributed.wrap_model(ddp_model, world, torch.device("cpu"))
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
        assert distributed.unwrap_model(wrapped) is ddp_model
        loop.train(ddp_model, _loss, _data(), CONFIG, checkpoint_path=tmp_path / "ddp.pt",
                   normalization=windows.normalization_record("full"), world=world)
    finally:
        distributed.cleanup_distributed()
    for a, b in zip(plain.parameters(), ddp_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    ckpt = checkpoint.load_checkpoint(tmp_path / "ddp.pt")
    assert isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 1
    assert not any(k.startswith("module.") for k in ckpt["model_state"])


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    world = distributed.setup_distributed()
    try:
        model, data, seen = _model(), _data(world.rank, world.world_size), []

        def loss(batch, net):
            seen.append(batch[0].clone())
            return _loss(batch, net)

        loop.train(model, loss, data, CONFIG, checkpoint_path=os.path.join(out_dir, "ckpt.pt"),
                   normalization=windows.normalization_record("full"), world=world)
        torch.save({"params": [p.detach() for p in model.parameters()], "seen": torch.cat(seen)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.cleanup_distributed()


@pytest.mark.slow
def test_two_processes_share_weights_and_split_the_data(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for a, b in zip(results[0]["params"], results[1]["params"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # DDP averaged the gradients
    seen = [r["seen"] for r in results]
    first_epoch = torch.cat([s[:8] for s in seen])  # 8 samples per rank = one epoch of 16
    assert len(torch.unique(first_epoch, dim=0)) == 16
    ckpt = checkpoint.load_checkpoint(tmp_path / "ckpt.pt")
    assert len(ckpt["rng"]) == 2 and ckpt["extra"]["world_size"] == 2 and ckpt["extra"]["step"] == 3
