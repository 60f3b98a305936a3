"""Resumable data order: an index stream that is a pure function of (seed, epoch, position), and batches of
it.

``IndexStream`` yields dataset indices forever: epoch ``e`` is the permutation drawn from
``numpy.random.default_rng([seed, e])``, sharded by rank (``distributed.shard_indices``). Its whole
state is one integer, ``position``, so a resumed run fast-forwards in O(1) and sees exactly the
samples a straight run would have seen. ``BatchStream`` collates ``batch_size`` samples per ``next``
and hands each sample a generator seeded by ``(seed, rank, position)``, so random crops are
reproducible too.

Locality: with ``groups`` (consecutive index ranges, e.g. the slices of one volume) an epoch shuffles
the groups, cuts them into windows of ``groups_per_window`` groups and shuffles indices within each
window, so a small LRU of loaded volumes is enough while batches still mix several volumes.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from ctlib.train.distributed import shard_indices


class IndexStream:
    """Endless, seeded, shardable stream of indices in ``[0, n)``; state = ``position`` (indices consumed)."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        groups: Sequence[int] | None = None,
        groups_per_window: int = 4,
    ) -> None:
        if n < 1:
            raise ValueError(f"IndexStream: need at least one index, got n={n}")
        if groups is not None and (sum(groups) != n or min(groups) < 1):
            raise ValueError(
                f"IndexStream: groups must be positive sizes summing to n={n}, got sum {sum(groups)}"
            )
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        shard_indices(np.arange(1), self.rank, self.world_size)  # validates rank / world_size
        self.groups = None if groups is None else [int(g) for g in groups]
        self.groups_per_window = max(1, int(groups_per_window))
        self.epoch_length = -(-self.n // self.world_size)  # indices per rank and epoch
        self.position = 0
        self._cached: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of epoch ``epoch`` (all ranks, before sharding)."""
        if not self.shuffle:
            return np.arange(self.n)
        rng = np.random.default_rng([self.seed, int(epoch)])
        if self.groups is None:
            return rng.permutation(self.n)
        starts = np.concatenate([[0], np.cumsum(self.groups)[:-1]])
        group_order = rng.permutation(len(self.groups))
        parts = []
        for w in range(0, len(group_order), self.groups_per_window):
            window = group_order[w : w + self.groups_per_window]
            members = np.concatenate([np.arange(starts[g], starts[g] + self.groups[g]) for g in window])
            parts.append(rng.permutation(members))
        return np.concatenate(parts)

    def rank_order(self, epoch: int) -> np.ndarray:
        """This rank's indices of epoch ``epoch`` (``epoch_length`` of them)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, shard_indices(self.epoch_order(epoch), self.rank, self.world_size))
        return self._cached[1]

    @property
    def epoch(self) -> int:
        """Epoch of the next index."""
        return self.position // self.epoch_length

    def __iter__(self) -> IndexStream:
        return self

    def __next__(self) -> int:
        index = int(self.rank_order(self.epoch)[self.position % self.epoch_length])
        self.position += 1
        return index

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices."""
        return [next(self) for _ in range(k)]

    def fast_forward(self, position: int) -> None:
        """Jump to ``position`` (indices consumed by this rank) without drawing the skipped ones."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        self.position = int(position)

    def state_dict(self) -> dict[str, int]:
        """``position`` plus what must match on resume (n, seed, rank, world size)."""
        return {
            "position": self.position,
            "n": self.n,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Fast-forward to a saved position; refuse a state from another dataset size, seed or world size."""
        for key in ("n", "seed", "world_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"IndexStream: saved {key}={state[key]} but this stream has {key}={getattr(self, key)}; "
                    "resuming would not reproduce the data order"
                )
        self.fast_forward(int(state["position"]))


class BatchStream:
    """Resumable iterator of collated batches from a dataset, in ``IndexStream`` order.

    A dataset with ``sample(index, rng)`` gets a ``numpy`` generator seeded by ``(seed, rank,
    position)`` for its random choices; otherwise ``dataset[index]`` is used. With ``locality`` the
    dataset's ``groups`` and ``lru_size`` shape the order (see the module docstring). ``num_workers``
    threads load the samples of one batch in parallel; the result does not depend on it.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        locality: bool = True,
        collate: Callable[[list[Any]], Any] = default_collate,
        num_workers: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        groups = getattr(dataset, "groups", None) if locality else None
        self.dataset, self.batch_size, self.seed, self.collate = dataset, int(batch_size), int(seed), collate
        self.indices = IndexStream(
            len(dataset), seed=seed, shuffle=shuffle, rank=rank, world_size=world_size,
            groups=groups, groups_per_window=getattr(dataset, "lru_size", 4),
        )
        self.num_workers = int(num_workers)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def rank(self) -> int:
        return self.indices.rank

    @property
    def world_size(self) -> int:
        return self.indices.world_size

    def _load(self, index: int, position: int) -> Any:
        if hasattr(self.dataset, "sample"):
            return self.dataset.sample(index, np.random.default_rng([self.seed, self.rank, position]))
        return self.dataset[index]

    def next_indices(self) -> list[tuple[int, int]]:
        """``(index, position)`` of the next batch's samples (advances the stream)."""
        out = []
        for _ in range(self.batch_size):
            position = self.indices.position
            out.append((next(self.indices), position))
        return out

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Any:
        todo = self.next_indices()
        if self.num_workers > 0:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.num_workers, thread_name_prefix="batch"
                )
            items = list(self._pool.map(lambda ip: self._load(*ip), todo))
        else:
            items = [self._load(i, p) for i, p in todo]
        return self.collate(items)

    def state_dict(self) -> dict[str, int]:
        """The index stream's state."""
        return self.indices.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at a saved position."""
        self.indices.load_state_dict(state)

    def close(self) -> None:
        """Stop the loader threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class TensorDataset:
    """Rows of tensors as a dataset (``dataset[i] = tensors[i]``), for tests and small in-memory data."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("TensorDataset: needs tensors with the same first dimension")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> Any:
        items = tuple(t[index] for t in self.tensors)
        return items[0] if len(items) == 1 else items
