"""Retrieval metrics over a query x gallery similarity matrix: R@k, P@k, mAP@k and NDCG@k.

Conventions (DESIGN.md, "Retrieval"), each pinned by a test in tests/test_metrics_retrieval_references.py:

- Self-retrieval (``exclude_self=True``, query i is gallery item i): the query is removed from its gallery,
  so a gallery has ``G - 1`` items.
- Relevance: graded, the Jaccard index of two studies' label sets (two studies without any finding are fully
  relevant to each other). NDCG uses the graded values; P@k, R@k and mAP@k use ``relevance >= threshold``.
  torchmetrics 1.9 accepts graded float targets in [0, 1] in its binary metrics and then counts any target
  > 0 as relevant (RetrievalMAP) or sums the graded values (RetrievalPrecision, RetrievalRecall): binarise
  before handing targets to it.
- Ties in similarity are broken by gallery index (stable sort), so results are deterministic. torchmetrics
  orders ties as ``torch.topk``/``argsort`` happen to (not stable); sklearn's ``ndcg_score`` and torchmetrics'
  NDCG average the gain over a tied group instead.
- A query with no relevant gallery item scores 0 in P@k, R@k and mAP@k (torchmetrics' default
  ``empty_target_action="neg"``), and a query whose graded relevance is all 0 scores 0 in NDCG@k (as sklearn).
  ``retrieval_scores`` reports how many queries had no relevant item, so the mean over the other queries is
  ``score * Q / (Q - queries_without_relevant)`` for R@k and mAP@k (torchmetrics' ``"skip"``).
- AP@k divides by ``min(k, number of relevant items)``: a perfect top k scores 1, and a query that finds one
  of three relevant items, at rank 1, scores 1/min(k, 3). torchmetrics divides by the relevant items found in
  the top k (that query scores 1.0).
- P@k divides by ``min(k, gallery size)`` (torchmetrics' ``adaptive_k=True``; its default divides by k).
- Scores are used as given, negative ones included. torchmetrics 1.9 (P, R, AP) treats an item whose score is
  <= 0 as not relevant, which drops relevant items with a negative cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranking(similarity: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
    """``(Q, G)`` gallery indices by decreasing similarity; with ``exclude_self`` ``(Q, G - 1)`` without i."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be (queries, gallery), got shape {sim.shape}")
    order = np.argsort(-sim, axis=1, kind="stable")
    if exclude_self:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(f"exclude_self needs a square similarity, got {sim.shape}")
        keep = order != np.arange(sim.shape[0])[:, None]
        order = order[keep].reshape(sim.shape[0], sim.shape[1] - 1)
    return order


def jaccard_relevance(labels: np.ndarray) -> np.ndarray:
    """``(N, N)`` Jaccard index of the 0/1 label rows (1 between two rows without any label)."""
    y = np.asarray(labels, dtype=bool)
    inter = y.astype(np.int64) @ y.T.astype(np.int64)
    sizes = y.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def recall_at_k(similarity: np.ndarray, k: int) -> float:
    """Paired retrieval (query i's one match is gallery item i, e.g. report -> volume): found in the top k."""
    order = ranking(similarity)
    return float((order[:, :k] == np.arange(order.shape[0])[:, None]).any(1).mean())


def _gains(similarity: np.ndarray, relevance: np.ndarray, exclude_self: bool) -> np.ndarray:
    """``(Q, G')`` graded relevance in ranked order (``G' = G - 1`` with ``exclude_self``)."""
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.shape != np.shape(similarity):
        raise ValueError(f"relevance {rel.shape} and similarity {np.shape(similarity)} differ")
    if np.isnan(rel).any() or np.isnan(np.asarray(similarity, dtype=np.float64)).any():
        raise ValueError("relevance and similarity must not contain NaN")
    order = ranking(similarity, exclude_self=exclude_self)
    if order.shape[1] == 0:
        raise ValueError(f"empty gallery: similarity {np.shape(similarity)} with exclude_self={exclude_self}")
    return np.take_along_axis(rel, order, axis=1)


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _binarise(gains: np.ndarray, threshold: float) -> np.ndarray:
    """Relevant means graded relevance >= ``threshold`` > 0."""
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (relevance 0 is never relevant), got {threshold}")
    return gains >= threshold


# Per-query kernels on ranked gains: ``hits`` (Q, G') bool, ``n_relevant`` (Q,) relevant items per gallery.


def _precision(hits: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].mean(1)


def _recall(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    found = hits[:, :k].sum(1)
    return np.where(n_relevant > 0, found / np.maximum(n_relevant, 1), 0.0)


def _average_precision(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    top = hits[:, :k].astype(np.float64)
    precision = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
    denominator = np.minimum(k, n_relevant)
    return np.where(denominator > 0, (precision * top).sum(1) / np.maximum(denominator, 1), 0.0)


def _ndcg(gains: np.ndarray, ideal: np.ndarray, k: int) -> np.ndarray:
    discount = 1.0 / np.log2(np.arange(2, min(k, gains.shape[1]) + 2))
    dcg = (gains[:, :k] * discount).sum(1)
    idcg = (ideal[:, :k] * discount).sum(1)
    return np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0.0)


def precision_at_k(
    similarity: np.ndarray,
    relevance: np.ndarray,
    k: int,
    *,
    threshold: float = 0.5,
    exclude_self: bool = True,
) -> float:
    """Mean over queries of the fraction of the top k whose relevance is at least ``threshold``."""
    _check_k(k)
    return float(_precision(_binarise(_gains(similarity, relevance, exclude_self), threshold), k).mean())


def recall_at_k_graded(
    similarity: np.ndarray,
    relevance: np.ndarray,
    k: int,
    *,
    threshold: float = 0.5,
    exclude_self: bool = True,
) -> float:
    """R@k: mean over queries of the fraction of their relevant gallery items (relevance >= ``threshold``)
    found in the top k.

    Queries with no relevant gallery item score 0 (as in ``average_precision_at_k``).
    """
    _check_k(k)
    hits = _binarise(_gains(similarity, relevance, exclude_self), threshold)
    return float(_recall(hits, hits.sum(1), k).mean())


def average_precision_at_k(
    similarity: np.ndarray,
    relevance: np.ndarray,
    k: int,
    *,
    threshold: float = 0.5,
    exclude_self: bool = True,
) -> float:
    """mAP@k: mean over queries of sum_i P@i * rel_i / min(k, number of relevant items) (binary relevance).

    Queries with no relevant item in the gallery score 0.
    """
    _check_k(k)
    hits = _binarise(_gains(similarity, relevance, exclude_self), threshold)
    return float(_average_precision(hits, hits.sum(1), k).mean())


def ndcg_at_k(similarity: np.ndarray, relevance: np.ndarray, k: int, *, exclude_self: bool = True) -> float:
    """NDCG@k, graded gains (Jarvelin & Kekalainen 2002): sum rel_i / log2(i + 1) over the ideal order's.

    Queries whose graded relevance is 0 for the whole gallery score 0.
    """
    _check_k(k)
    gains = _gains(similarity, relevance, exclude_self)
    return float(_ndcg(gains, -np.sort(-gains, axis=1), k).mean())


def retrieval_scores(
    similarity: np.ndarray,
    relevance: np.ndarray,
    ks: Sequence[int] = (1, 3, 5, 10, 20),
    *,
    threshold: float = 0.5,
    exclude_self: bool = True,
) -> dict[str, float]:
    """P@k, R@k, mAP@k (relevance >= ``threshold``) and graded NDCG@k for every k, from one ranking.

    ``similarity`` and ``relevance`` are ``(Q, G)``. Keys ``"P@5"``, ``"R@5"``, ``"mAP@5"``, ``"NDCG@5"``, ...
    and ``"queries_without_relevant"``: the queries with no gallery item at or above ``threshold`` (they
    score 0 in P, R and mAP; see the module docstring).
    """
    for k in ks:
        _check_k(k)
    gains = _gains(similarity, relevance, exclude_self)
    hits = _binarise(gains, threshold)
    ideal = -np.sort(-gains, axis=1)
    n_relevant = hits.sum(1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"P@{k}"] = float(_precision(hits, k).mean())
        out[f"R@{k}"] = float(_recall(hits, n_relevant, k).mean())
        out[f"mAP@{k}"] = float(_average_precision(hits, n_relevant, k).mean())
        out[f"NDCG@{k}"] = float(_ndcg(gains, ideal, k).mean())
    out["queries_without_relevant"] = int((n_relevant == 0).sum())
    return out
