"""Triplet mining and loss against pytorch-metric-learning, a brute-force loop, and Jaccard thresholds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pytorch_metric_learning import distances, miners

from ctlib.metrics import retrieval as retrieval_metrics
from ctlib.studies.retrieval import mining

# Rows: {0,1}, {0}, {0,1,2}, {}, {}, {2,3}
ROWS = torch.tensor(
    [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.uint8
)


def single_label_batch(
    seed: int, batch: int = 24, dim: int = 8, *, clustered: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and class ids where classes 6 and 7 have a single member (anchors without positive).

    ``clustered``: class centres plus noise, so that some mined triplets already satisfy the margin.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.arange(6).repeat((batch - 2) // 6), torch.tensor([6, 7])])
    ids = ids[torch.randperm(len(ids), generator=g)]
    emb = torch.randn(len(ids), dim, generator=g, dtype=torch.float32)
    if clustered:
        emb = emb + 2.5 * torch.randn(8, dim, generator=g)[ids]
    return emb.requires_grad_(), ids


def brute_force_loss(emb, labels, margin, mining_kind, distance, pos_t, neg_t) -> float:
    """Loop over every (a, p, n): the loss with the module's conventions, from scratch in float64 numpy."""
    x = emb.detach().double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.linalg.norm(x[:, None] - x[None], axis=2) if distance == "euclidean" else 1 - x @ x.T
    rel = retrieval_metrics.jaccard_relevance(np.asarray(labels))
    n = len(x)
    pos = [[p for p in range(n) if p != a and rel[a, p] >= pos_t] for a in range(n)]
    neg = [[q for q in range(n) if rel[a, q] < neg_t] for a in range(n)]
    losses = []
    for a in range(n):
        if not pos[a] or not neg[a]:
            continue
        if mining_kind == "batch_hard":
            p, q = max(pos[a], key=lambda i: d[a, i]), min(neg[a], key=lambda i: d[a, i])
            losses.append(max(d[a, p] - d[a, q] + margin, 0.0))
        else:
            losses += [
                d[a, p] - d[a, q] + margin
                for p, q in itertools.product(pos[a], neg[a])
                if 0 < d[a, q] - d[a, p] <= margin
            ]
    active = [v for v in losses if v > 0]
    return float(np.mean(active)) if active else 0.0


def test_relevance_is_jaccard_with_empty_sets():
    rel = mining.relevance(ROWS)
    np.testing.assert_allclose(rel.numpy(), retrieval_metrics.jaccard_relevance(ROWS.numpy()))
    assert rel[0, 1] == 0.5 and rel[0, 2] == pytest.approx(2 / 3) and rel[1, 2] == pytest.approx(1 / 3)
    assert rel[3, 4] == 1.0 and rel[0, 3] == 0.0 and rel[2, 5] == 0.25


def test_pair_masks_threshold_jaccard():
    pos = mining.positive_mask(ROWS, pos_threshold=0.5)
    neg = mining.negative_mask(ROWS, neg_threshold=0.5)
    assert pos[0, 1] and pos[0, 2] and pos[3, 4] and not pos[1, 2] and not pos[2, 5]
    assert neg[1, 2] and neg[2, 5] and neg[0, 3] and not neg[0, 1] and not neg[3, 4]
    assert not pos.diagonal().any() and not neg.diagonal().any()
    assert torch.equal(pos, pos.T) and not (pos & neg).any()
    # A gap between the thresholds leaves {0,1}-{0} (0.5) and {0}-{0,1,2} (1/3) neither positive nor negative.
    pos, neg = mining.positive_mask(ROWS, pos_threshold=0.6), mining.negative_mask(ROWS, neg_threshold=0.3)
    assert not pos[0, 1] and not neg[0, 1] and not pos[1, 2] and not neg[1, 2] and pos[0, 2] and neg[2, 5]


def test_one_hot_rows_mean_same_class():
    ids = torch.tensor([0, 2, 1, 2, 0, 3])
    one_hot = torch.nn.functional.one_hot(ids, 4)
    same = (ids[:, None] == ids[None]).fill_diagonal_(False)
    for threshold in (0.1, 0.5, 1.0):
        assert torch.equal(mining.positive_mask(one_hot, pos_threshold=threshold), same)
        assert torch.equal(mining.negative_mask(one_hot, neg_threshold=threshold), ids[:, None] != ids[None])
    set_ids = mining.label_set_ids(one_hot)  # a relabelling: the same partition of the batch
    assert torch.equal(set_ids[:, None] == set_ids[None], ids[:, None] == ids[None])


def test_label_set_ids_are_exact_identity():
    ids = mining.label_set_ids(ROWS)
    assert ids[3] == ids[4] and len(set(ids.tolist())) == 5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_batch_hard_triplets_equal_pml(seed, distance):
    emb, ids = single_label_batch(seed)
    dist = (
        distances.LpDistance(normalize_embeddings=True)
        if distance == "euclidean"
        else distances.CosineSimilarity()
    )
    expected = miners.BatchHardMiner(distance=dist)(emb, ids)
    got = mining.batch_hard_triplets(emb, ids, distance=distance)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    singletons = torch.nonzero((ids == 6) | (ids == 7)).flatten()
    assert not torch.isin(singletons, got[0]).any() and len(got[0]) == len(ids) - 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semi_hard_triplets_equal_pml(seed):
    emb, ids = single_label_batch(seed)
    dist = distances.LpDistance(normalize_embeddings=True)
    expected = miners.TripletMarginMiner(margin=0.3, type_of_triplets="semihard", distance=dist)(emb, ids)
    got = mining.semi_hard_triplets(emb, ids, margin=0.3)
    assert len(got[0]) > 0
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("kind", ["batch_hard", "semi_hard"])
@pytest.mark.parametrize("clustered", [False, True])
def test_triplet_loss_equals_pml(seed, distance, kind, clustered):
    emb, ids = single_label_batch(seed, clustered=clustered)
    loss, info = mining.triplet_loss(emb, ids, margin=0.2, mining=kind, distance=distance)
    ref, ref_info = mining.triplet_loss(emb, ids, margin=0.2, mining=kind, distance=distance, backend="pml")
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6) and loss.item() > 0
    assert info == ref_info and info["active"] > 0
    if clustered and kind == "batch_hard":  # zero-loss triplets are left out of the mean, as PML's reducer
        assert info["active"] < info["triplets"]
    grad, ref_grad = torch.autograd.grad(loss, emb)[0], torch.autograd.grad(ref, emb)[0]
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)


def test_semi_hard_chunks_do_not_change_the_loss(monkeypatch):
    emb, ids = single_label_batch(5)
    whole, _ = mining.triplet_loss(emb, ids, margin=0.2, mining="semi_hard")
    whole_triplets = torch.stack(mining.semi_hard_triplets(emb, ids, margin=0.2))
    monkeypatch.setattr(
        mining, "_CHUNK_ELEMENTS", len(ids) * 7
    )  # chunks of 7 positive pairs, the last shorter
    split, _ = mining.triplet_loss(emb, ids, margin=0.2, mining="semi_hard")
    assert split.item() == pytest.approx(whole.item(), abs=1e-7)
    assert torch.equal(torch.stack(mining.semi_hard_triplets(emb, ids, margin=0.2)), whole_triplets)


def test_no_triplets_gives_zero_loss_with_a_graph():
    emb = torch.randn(5, 4, requires_grad=True)
    for backend in ("torch", "pml"):
        for kind in ("batch_hard", "semi_hard"):
            loss, info = mining.triplet_loss(emb, torch.zeros(5, dtype=torch.long), margin=0.2, mining=kind,
                                             backend=backend)  # fmt: skip
            assert loss.item() == 0.0 and info["triplets"] == 0
            loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["batch_hard", "semi_hard"])
@pytest.mark.parametrize(("pos_t", "neg_t"), [(0.5, 0.5), (0.6, 0.2)])
def test_multi_label_loss_equals_brute_force(seed, kind, pos_t, neg_t):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(16, 4, generator=g) < 0.4).to(torch.uint8)
    emb = torch.randn(16, 6, generator=g)
    for distance in ("euclidean", "cosine"):
        loss, _ = mining.triplet_loss(emb, labels, margin=0.3, mining=kind, distance=distance,
                                      pos_threshold=pos_t, neg_threshold=neg_t)  # fmt: skip
        expected = brute_force_loss(emb, labels, 0.3, kind, distance, pos_t, neg_t)
        assert expected > 0 and loss.item() == pytest.approx(expected, abs=1e-5)


def test_mined_multi_label_triplets_respect_the_thresholds():
    g = torch.Generator().manual_seed(3)
    labels = (torch.rand(20, 5, generator=g) < 0.4).to(torch.uint8)
    emb = torch.randn(20, 6, generator=g)
    rel = mining.relevance(labels)
    for a, p, n in (
        mining.batch_hard_triplets(emb, labels),
        mining.semi_hard_triplets(emb, labels, margin=0.5),
    ):
        assert len(a) > 0 and (a != p).all()
        assert (rel[a, p] >= 0.5).all() and (rel[a, n] < 0.5).all()


def test_pml_backend_refuses_jaccard_thresholds():
    emb = torch.randn(6, 4)
    with pytest.raises(ValueError, match="pml.*label-set identity"):
        mining.triplet_loss(emb, ROWS, margin=0.2, backend="pml")
    loss, _ = mining.triplet_loss(emb, ROWS, margin=0.2, backend="pml", pos_threshold=1.0)
    ref, _ = mining.triplet_loss(emb, ROWS, margin=0.2, pos_threshold=1.0)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)


def test_bad_arguments_are_refused():
    emb = torch.randn(6, 4)
    with pytest.raises(ValueError, match="mining must be one of"):
        mining.triplet_loss(emb, ROWS, margin=0.2, mining="hardest")
    with pytest.raises(ValueError, match="neg_threshold <= pos_threshold"):
        mining.triplet_loss(emb, ROWS, margin=0.2, pos_threshold=0.3, neg_threshold=0.6)
    with pytest.raises(ValueError, match="5 label rows for 6 embeddings"):
        mining.triplet_loss(emb, ROWS[:5], margin=0.2)


@pytest.mark.parametrize("kind", ["batch_hard", "semi_hard"])
def test_loss_decreases_under_sgd(kind):
    torch.manual_seed(0)
    ids = torch.arange(4).repeat(8)
    x = torch.randn(4, 16)[ids] + 0.8 * torch.randn(32, 16)  # 4 noisy class centres
    head = torch.nn.Linear(16, 8)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    with torch.no_grad():
        start, _ = mining.triplet_loss(head(x), ids, margin=0.2, mining="batch_hard")
    for _ in range(30):
        loss, _ = mining.triplet_loss(head(x), ids, margin=0.2, mining=kind)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        end, _ = mining.triplet_loss(head(x), ids, margin=0.2, mining="batch_hard")
    assert end.item() < 0.7 * start.item()


def test_balanced_batches():
    ids = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3] * 7)
    batches = list(mining.balanced_batches(ids, 3, 4, seed=0, batches=20))
    assert batches == list(mining.balanced_batches(ids, 3, 4, seed=0, batches=20))
    assert batches != list(mining.balanced_batches(ids, 3, 4, seed=1, batches=20))
    seen = set()
    for batch in batches:
        classes = ids[batch]
        assert len(batch) == 12 and len(set(classes.tolist())) == 3
        assert all((classes == c).sum() == 4 for c in set(classes.tolist()))
        for c in set(classes.tolist()):
            members = [i for i in batch if ids[i] == c]
            if c == 2:  # 2 members: drawn with replacement
                assert set(members) <= {15, 16}
            else:
                assert len(set(members)) == 4
        seen |= set(classes.tolist())
    assert seen == {0, 1, 2, 3}
    rows_batch = next(mining.balanced_batches(ROWS, 2, 2, seed=0, batches=1))
    assert len(rows_batch) == 4
    with pytest.raises(ValueError, match="cannot draw 5 classes x 1 samples from 4 classes"):
        next(mining.balanced_batches(ids, 5, 1, seed=0, batches=1))
