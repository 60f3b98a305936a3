"""Online triplet mining for CT retrieval: Jaccard pair masks, batch-hard and semi-hard miners, the triplet
loss (plain torch or pytorch-metric-learning) and balanced class batches.

Labels are ``(B, C)`` 0/1 label rows (or ``(B,)`` integer class ids). Two volumes are a positive pair when
the Jaccard index of their label sets is >= ``pos_threshold`` (two empty sets: 1), a negative pair when it
is < ``neg_threshold`` (default: ``pos_threshold``); pairs in between are ignored and a volume is never
its own positive. With one-hot labels this is "same class".

Conventions, chosen to match pytorch-metric-learning (PML) 2.x so that both backends give the same loss:
- Distances on L2-normalised embeddings: ``"euclidean"`` is ``||u - v||`` (``torch.cdist``, as PML's
  ``LpDistance``), ``"cosine"`` is ``1 - u.v`` (the triplet loss equals PML's with ``CosineSimilarity``).
- Batch-hard (Hermans et al. 2017, "In Defense of the Triplet Loss"): per anchor the farthest positive
  and the nearest negative; an anchor without a positive or without a negative gives no triplet.
- Semi-hard (Schroff et al. 2015, FaceNet), as PML's ``TripletMarginMiner(type_of_triplets="semihard")``:
  every triplet with ``0 < d_an - d_ap <= margin``. No fallback to the hardest negative: an anchor with
  no semi-hard negative gives no triplet.
- The loss is ``relu(d_ap - d_an + margin)`` averaged over the mined triplets whose loss is non-zero
  (PML's default ``AvgNonZeroReducer``); zero (still attached to the graph) when there is none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch

Distance = Literal["euclidean", "cosine"]
Mining = Literal["batch_hard", "semi_hard"]
Backend = Literal["torch", "pml"]
Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

_CHUNK_ELEMENTS = 1 << 22  # (pairs, B) entries per semi-hard chunk: bounds memory at large B


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"retrieval.mining: {name} must be one of {options}, got {value!r}")


def label_set_ids(labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(N,)`` class ids of ``(N, C)`` label rows by exact label-set identity; ``(N,)`` ids pass through."""
    labels = torch.as_tensor(labels)
    if labels.ndim == 1:
        return labels.long()
    if labels.ndim != 2:
        raise ValueError(
            f"retrieval.mining: labels must be (N,) ids or (N, C) rows, got shape {tuple(labels.shape)}"
        )
    return torch.unique(labels.bool(), dim=0, return_inverse=True)[1].long()


def relevance(labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(B, B)`` float64 Jaccard index of the label sets (1 between two empty sets; ids: same id or not)."""
    labels = torch.as_tensor(labels)
    if labels.ndim == 1:
        return (labels[:, None] == labels[None, :]).double()
    if labels.ndim != 2:
        raise ValueError(
            f"retrieval.mining: labels must be (B,) ids or (B, C) rows, got shape {tuple(labels.shape)}"
        )
    y = labels.bool().double()
    inter = y @ y.T
    sizes = y.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    return torch.where(union == 0, torch.ones_like(union), inter / union.clamp_min(1))


def _thresholds(pos_threshold: float, neg_threshold: float | None) -> tuple[float, float]:
    neg = pos_threshold if neg_threshold is None else neg_threshold
    if not 0 < neg <= pos_threshold <= 1:
        raise ValueError(
            f"retrieval.mining: need 0 < neg_threshold <= pos_threshold <= 1, got {neg} and {pos_threshold}"
        )
    return pos_threshold, neg


def positive_mask(labels: torch.Tensor | np.ndarray, *, pos_threshold: float = 0.5) -> torch.Tensor:
    """``(B, B)`` bool: Jaccard >= ``pos_threshold``, the diagonal excluded."""
    _thresholds(pos_threshold, None)
    mask = relevance(labels) >= pos_threshold
    return mask.fill_diagonal_(False)


def negative_mask(labels: torch.Tensor | np.ndarray, *, neg_threshold: float = 0.5) -> torch.Tensor:
    """``(B, B)`` bool: Jaccard < ``neg_threshold`` (never on the diagonal, whose Jaccard is 1)."""
    _thresholds(1.0, neg_threshold)
    return relevance(labels) < neg_threshold


def _dissimilarity(embeddings: torch.Tensor, distance: str) -> torch.Tensor:
    """``(B, B)``: larger is farther. Cosine uses ``-u.v``: differences equal those of ``1 - u.v`` exactly."""
    _choice("distance", distance, ("euclidean", "cosine"))
    if embeddings.ndim != 2:
        raise ValueError(f"retrieval.mining: embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
    unit = torch.nn.functional.normalize(embeddings, p=2, dim=1)
    if distance == "euclidean":
        return torch.cdist(unit, unit, p=2)
    return -(unit @ unit.T)


def _masks(
    labels: torch.Tensor | np.ndarray,
    batch: int,
    pos_threshold: float,
    neg_threshold: float | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    pos_t, neg_t = _thresholds(pos_threshold, neg_threshold)
    if torch.as_tensor(labels).shape[0] != batch:
        raise ValueError(
            f"retrieval.mining: {torch.as_tensor(labels).shape[0]} label rows for {batch} embeddings"
        )
    rel = relevance(labels).to(device)
    return (rel >= pos_t).fill_diagonal_(False), rel < neg_t


def _batch_hard(dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> Triplets:
    # The same masked max / min as PML's BatchEasyHardMiner, so ties resolve to the same index.
    far_pos = dist.detach().masked_fill(~pos, float("-inf")).max(dim=1).indices
    near_neg = dist.detach().masked_fill(~neg, float("inf")).min(dim=1).indices
    anchors = torch.nonzero(pos.any(1) & neg.any(1)).flatten()
    return anchors, far_pos[anchors], near_neg[anchors]


def _semi_hard_chunks(
    dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(anchors, positives, mined, active)`` per chunk of positive pairs; masks ``(pairs, B_n)``.

    Only the positive pairs are expanded over negatives, so the work is ``B * B * (positive fraction)``;
    ``active`` (loss > 0) is ``d_an - d_ap < margin``, which equals PML's ``(d_ap - d_an) + margin > 0``
    exactly in floating point.
    """
    d = dist.detach()
    anchors, positives = torch.nonzero(pos, as_tuple=True)  # row-major: triplets come out sorted (a, p, n)
    step = max(1, _CHUNK_ELEMENTS // d.shape[0])
    for start in range(0, len(anchors), step):
        a, p = anchors[start : start + step], positives[start : start + step]
        triplet_margin = d[a] - d[a, p][:, None]  # d_an - d_ap, PML's order of operations
        mined = neg[a] & (triplet_margin > 0) & (triplet_margin <= margin)
        yield a, p, mined, mined & (triplet_margin < margin)


def batch_hard_triplets(
    embeddings: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    *,
    distance: Distance = "euclidean",
    pos_threshold: float = 0.5,
    neg_threshold: float | None = None,
) -> Triplets:
    """Batch-hard mining (Hermans et al. 2017): ``(anchors, positives, negatives)``, one per anchor."""
    dist = _dissimilarity(embeddings, distance)
    pos, neg = _masks(labels, dist.shape[0], pos_threshold, neg_threshold, dist.device)
    return _batch_hard(dist, pos, neg)


def semi_hard_triplets(
    embeddings: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    *,
    margin: float,
    distance: Distance = "euclidean",
    pos_threshold: float = 0.5,
    neg_threshold: float | None = None,
) -> Triplets:
    """Semi-hard mining (Schroff et al. 2015): all triplets with ``0 < d_an - d_ap <= margin``, sorted."""
    dist = _dissimilarity(embeddings, distance)
    pos, neg = _masks(labels, dist.shape[0], pos_threshold, neg_threshold, dist.device)
    found = []
    for a, p, mined, _ in _semi_hard_chunks(dist, pos, neg, margin):
        pair, n = torch.nonzero(mined, as_tuple=True)
        found.append((a[pair], p[pair], n))
    if not found:
        empty = torch.zeros(0, dtype=torch.long, device=dist.device)
        return empty, empty, empty
    return tuple(torch.cat(parts) for parts in zip(*found, strict=True))  # type: ignore[return-value]


def triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    *,
    margin: float,
    mining: Mining = "batch_hard",
    distance: Distance = "euclidean",
    backend: Backend = "torch",
    pos_threshold: float = 0.5,
    neg_threshold: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Triplet margin loss (Schroff et al. 2015) over online-mined triplets; info: triplets, active, fraction.

    ``embeddings`` ``(B, D)``, ``labels`` ``(B, C)`` 0/1 rows or ``(B,)`` ids. Backend ``"pml"`` runs
    pytorch-metric-learning's miner and ``TripletMarginLoss`` on label-set class ids, so it only knows
    exact label-set identity: multi-label rows need ``pos_threshold = neg_threshold = 1``.
    """
    _choice("mining", mining, ("batch_hard", "semi_hard"))
    _choice("backend", backend, ("torch", "pml"))
    if margin < 0:
        raise ValueError(f"retrieval.mining: margin must be >= 0, got {margin}")
    if backend == "pml":
        return _pml_triplet_loss(embeddings, labels, margin, mining, distance, pos_threshold, neg_threshold)
    dist = _dissimilarity(embeddings, distance)
    pos, neg = _masks(labels, dist.shape[0], pos_threshold, neg_threshold, dist.device)
    if mining == "batch_hard":
        a, p, n = _batch_hard(dist, pos, neg)
        losses = torch.relu((dist[a, p] - dist[a, n]) + margin)
        active = losses > 0
        mined, n_active = len(a), int(active.sum())
        loss = losses[active].mean() if n_active else None
    else:
        # sum over active triplets of (d_ap - d_an + margin), written with per-pair counts so the
        # (B, B, B) triplet set is never materialised: d_ap weighted by its active negatives, d_an by its
        # active positives. Summed in float64: the two weighted sums are large and nearly cancel.
        neg_per_pair = torch.zeros(dist.shape, dtype=torch.float32, device=dist.device)  # counts <= B: exact
        pos_per_pair = torch.zeros_like(neg_per_pair)
        mined = 0
        for a, p, chunk_mined, chunk_active in _semi_hard_chunks(dist, pos, neg, margin):
            mined += int(chunk_mined.sum())
            active_float = chunk_active.float()
            neg_per_pair[a, p] = active_float.sum(1)  # each positive pair is in one chunk only
            pos_per_pair.index_add_(0, a, active_float)
        d64, neg_per_pair, pos_per_pair = dist.double(), neg_per_pair.double(), pos_per_pair.double()
        n_active = int(neg_per_pair.sum())  # in float64: the total can pass float32's 2**24
        total = (d64 * neg_per_pair).sum() - (d64 * pos_per_pair).sum() + margin * n_active
        loss = (total / n_active).to(dist.dtype) if n_active else None
    if loss is None:
        loss = (embeddings * 0).sum()
    return loss, {
        "triplets": mined,
        "active": n_active,
        "fraction_active": n_active / mined if mined else 0.0,
    }


def _pml_triplet_loss(embeddings, labels, margin, mining, distance, pos_threshold, neg_threshold):
    _choice("distance", distance, ("euclidean", "cosine"))
    neg_t = pos_threshold if neg_threshold is None else neg_threshold
    if torch.as_tensor(labels).ndim == 2 and (pos_threshold < 1 or neg_t < 1):
        raise ValueError(
            f"retrieval.mining: backend 'pml' knows only exact label-set identity (Jaccard = 1), got "
            f"pos_threshold={pos_threshold}, neg_threshold={neg_t}: use backend 'torch' or thresholds 1.0"
        )
    from pytorch_metric_learning import distances, losses, miners, reducers

    dist = (
        distances.LpDistance(normalize_embeddings=True)
        if distance == "euclidean"
        else distances.CosineSimilarity()
    )
    if mining == "batch_hard":
        miner = miners.BatchHardMiner(distance=dist)
    else:
        miner = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=dist)
    loss_fn = losses.TripletMarginLoss(
        margin=margin, distance=dist, reducer=reducers.AvgNonZeroReducer(collect_stats=True)
    )
    ids = label_set_ids(labels).to(embeddings.device)
    triplets = miner(embeddings, ids)
    loss = loss_fn(embeddings, ids, triplets)
    mined = len(triplets[0])
    n_active = int(loss_fn.reducer.num_past_filter) if mined else 0  # the loss holds a copy of the reducer
    return loss, {
        "triplets": mined,
        "active": n_active,
        "fraction_active": n_active / mined if mined else 0.0,
    }


def balanced_batches(
    class_ids: Sequence[int] | np.ndarray | torch.Tensor,
    n_classes: int,
    n_samples: int,
    *,
    seed: int,
    batches: int,
) -> Iterator[list[int]]:
    """P x K batches (Hermans et al. 2017): ``n_classes`` distinct classes, ``n_samples`` indices of each.

    ``class_ids`` ``(N,)`` ids or ``(N, C)`` label rows (class = label-set signature). Classes with fewer
    than ``n_samples`` members are drawn with replacement. Written here rather than PML's
    ``MPerClassSampler``, which draws from numpy's global random state and yields a flat index stream.
    """
    ids = label_set_ids(class_ids).cpu().numpy()
    classes, inverse = np.unique(ids, return_inverse=True)
    if not 1 <= n_classes <= len(classes) or n_samples < 1:
        raise ValueError(
            f"retrieval.mining: cannot draw {n_classes} classes x {n_samples} samples "
            f"from {len(classes)} classes"
        )
    members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        batch: list[int] = []
        for c in rng.choice(len(classes), size=n_classes, replace=False):
            pool = members[c]
            batch.extend(rng.choice(pool, size=n_samples, replace=len(pool) < n_samples).tolist())
        yield batch
