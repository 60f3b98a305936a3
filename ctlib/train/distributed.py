"""Multi-GPU hooks for ``torchrun``: world info from the environment, DDP wrapping, index sharding.

``torchrun --nproc_per_node=N script.py`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
``setup_distributed()`` reads them and initializes the process group (NCCL on CUDA, gloo on CPU).
Single-process runs (a notebook, no variables set) get ``WorldInfo(rank=0, world_size=1)`` and no
process group. Each rank reads its own shard of every epoch's permutation (``shard_indices``, the
``DistributedSampler`` rule: pad the order to a multiple of the world size, take every N-th), only
rank 0 writes checkpoints, and DDP averages gradients (Li et al. 2020, PyTorch Distributed).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ctlib import device as devices


@dataclasses.dataclass(frozen=True)
class WorldInfo:
    """Where this process sits: global ``rank``, ``local_rank`` on its node, ``world_size``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False  # a process group is initialized

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0


def world_from_env(env: Mapping[str, str] | None = None) -> WorldInfo:
    """Read ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` (as set by ``torchrun``); defaults: one process."""
    env = os.environ if env is None else env
    try:
        rank = int(env.get("RANK", 0))
        world_size = int(env.get("WORLD_SIZE", 1))
        local_rank = int(env.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise ValueError(f"RANK / LOCAL_RANK / WORLD_SIZE must be integers: {err}") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"inconsistent torchrun environment: RANK={rank}, LOCAL_RANK={local_rank}, "
            f"WORLD_SIZE={world_size}"
        )
    initialized = dist.is_available() and dist.is_initialized()
    return WorldInfo(rank, local_rank, world_size, initialized)


def setup_distributed(
    backend: str | None = None, *, init_single: bool = False, timeout_s: float = 1800.0
) -> WorldInfo:
    """Initialize the process group from the ``torchrun`` environment when ``WORLD_SIZE > 1``.

    ``backend`` defaults to ``nccl`` with CUDA and ``gloo`` otherwise; with CUDA each process is bound
    to ``cuda:LOCAL_RANK``. ``init_single`` also initializes a group of one (to test the DDP path).
    """
    world = world_from_env()
    if world.distributed or (world.world_size == 1 and not init_single):
        return world
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"setup_distributed: {missing} not set; launch with torchrun or set them")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(world.local_rank)
    timeout = dt.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend=backend or ("nccl" if cuda else "gloo"),
        rank=world.rank,
        world_size=world.world_size,
        timeout=timeout,
        store=_attempt_store(world, timeout),
    )
    return dataclasses.replace(world, distributed=True)


def _attempt_store(world: WorldInfo, timeout: dt.timedelta) -> Any:
    """Under torchrun, the ``env://`` store behind a prefix of this attempt (``TORCHELASTIC_RESTART_COUNT``).

    After torchrun restarts its workers (a worker died), the agent's store can still hold the addresses the
    dead attempt's ranks published, and a new rank that reads one first fails with "Gloo connectFullMesh
    failed ... Connection refused" (seen on torch 2.13 with the c10d rendezvous, 1 run in 3). A prefix per
    attempt keeps each attempt to its own keys. ``None`` (plain ``env://``) outside torchrun."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    rendezvous = dist.rendezvous("env://", rank=world.rank, world_size=world.world_size, timeout=timeout)
    store, _, _ = next(rendezvous)
    return dist.PrefixStore(f"/ctlib/attempt_{attempt}", store)


def cleanup_distributed() -> None:
    """Destroy the process group if one is initialized."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(device: str, world: WorldInfo) -> torch.device:
    """``ctlib.device.resolve_device`` for this process's rank: ``"auto"`` is ``cuda:LOCAL_RANK`` or CPU."""
    return devices.resolve_device(device, local_rank=world.local_rank)


def wrap_model(model: nn.Module, world: WorldInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` when a process group is initialized, else ``model`` itself."""
    if not world.distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``DistributedDataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def shard_indices(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of an epoch order: pad cyclically to a multiple of ``world_size``, take every N-th.

    The shards of all ranks are disjoint when ``len(order)`` is a multiple of ``world_size``; otherwise
    at most ``world_size - 1`` indices appear twice (as in ``torch.utils.data.DistributedSampler``).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    order = np.asarray(order)
    total = -(-len(order) // world_size) * world_size
    if total > len(order):
        order = np.concatenate([order, np.resize(order, total - len(order))])
    return order[rank::world_size]


def all_reduce_mean(values: dict[str, float], world: WorldInfo) -> dict[str, float]:
    """Average scalar metrics over ranks (identity in a single process)."""
    if not world.distributed or not values:
        return values
    keys = sorted(values)
    device = torch.device(f"cuda:{world.local_rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))


def gather_objects(obj: Any, world: WorldInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier(world: WorldInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world.distributed:
        dist.barrier()
