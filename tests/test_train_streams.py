"""Index and batch streams: seeded epochs, O(1) fast-forward, locality groups, resumable batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctlib.train.streams import BatchStream, IndexStream, TensorDataset


def test_epochs_are_seeded_permutations():
    stream = IndexStream(10, seed=3)
    first, second = stream.take(10), stream.take(10)
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second and stream.epoch == 2
    assert IndexStream(10, seed=3).take(20) == first + second
    assert IndexStream(10, seed=4).take(10) != first
    assert IndexStream(5, shuffle=False).take(7) == [0, 1, 2, 3, 4, 0, 1]


def test_fast_forward_and_state_round_trip():
    straight = IndexStream(7, seed=1)
    seen = straight.take(23)
    resumed = IndexStream(7, seed=1)
    resumed.load_state_dict({"position": 9, "n": 7, "seed": 1, "world_size": 1})
    assert resumed.take(14) == seen[9:]
    assert straight.state_dict()["position"] == 23
    with pytest.raises(ValueError, match="seed"):
        IndexStream(7, seed=2).load_state_dict(straight.state_dict())
    with pytest.raises(ValueError, match="n=7"):
        IndexStream(8, seed=1).load_state_dict(straight.state_dict())


def test_groups_keep_locality_and_cover_everything():
    groups = [5, 3, 8, 4, 6, 2]
    owner = np.repeat(np.arange(len(groups)), groups)
    stream = IndexStream(sum(groups), seed=0, groups=groups, groups_per_window=2)
    order = stream.epoch_order(0)
    assert sorted(order.tolist()) == list(range(sum(groups)))
    # consecutive windows of two groups: at most two volumes are live at any time
    owners = owner[order]
    changes = [i for i in range(1, len(owners)) if set(owners[:i]) & set(owners[i:]) == set()]
    spans = np.split(owners, changes)
    assert all(len(set(span.tolist())) <= 2 for span in spans)
    with pytest.raises(ValueError, match="summing"):
        IndexStream(10, groups=[3, 3])


class _Noisy:
    """A dataset whose samples use the generator they are given."""

    def __len__(self) -> int:
        return 6

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        return {"index": index, "noise": torch.tensor(rng.normal(size=2), dtype=torch.float32)}


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_stream_resumes_with_identical_batches(workers):
    straight = BatchStream(_Noisy(), batch_size=4, seed=5, num_workers=workers)
    batches = [next(straight) for _ in range(5)]
    assert batches[0]["index"].shape == (4,) and batches[0]["noise"].shape == (4, 2)
    resumed = BatchStream(_Noisy(), batch_size=4, seed=5)
    for _ in range(2):
        next(resumed)
    state = resumed.state_dict()
    again = BatchStream(_Noisy(), batch_size=4, seed=5)
    again.load_state_dict(state)
    for expected in batches[2:]:
        got = next(again)
        assert torch.equal(got["index"], expected["index"]) and torch.equal(got["noise"], expected["noise"])
    straight.close()


def test_tensor_dataset_batches():
    x, y = torch.arange(10.0)[:, None], torch.arange(10.0)
    stream = BatchStream(TensorDataset(x, y), batch_size=3, seed=0)
    xb, yb = next(stream)
    assert xb.shape == (3, 1) and torch.equal(xb[:, 0], yb)
