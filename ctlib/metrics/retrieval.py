"""Retrieval metrics over a query x gallery similarity matrix: R@k, P@k, mAP@k and NDCG@k.

Conventions (DESIGN.md, "Retrieval"): in self-retrieval (``exclude_self=True``, query i is gallery
item i) the query is removed from its own gallery; graded relevance between two studies is the Jaccard
index of their label sets (two studies with no finding are fully relevant to each other). Ranking ties
are broken by gallery index (stable sort), so results are deterministic.
"""

from __future__ import annotations

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
    order = ranking(similarity, exclude_self=exclude_self)
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.shape != np.shape(similarity):
        raise ValueError(f"relevance {rel.shape} and similarity {np.shape(similarity)} differ")
    return np.take_along_axis(rel, order, axis=1)


def precision_at_k(
    similarity: np.ndarray,
    relevance: np.ndarray,
    k: int,
    *,
    threshold: float = 0.5,
    exclude_self: bool = True,
) -> float:
    """Mean over queries of the fraction of the top k whose relevance is at least ``threshold``."""
    hits = _gains(similarity, relevance, exclude_self)[:, :k] >= threshold
    return float(hits.mean())


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
    gains = _gains(similarity, relevance, exclude_self) >= threshold
    top = gains[:, :k].astype(np.float64)
    precision = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
    denominator = np.minimum(k, gains.sum(1))
    ap = np.where(denominator > 0, (precision * top).sum(1) / np.maximum(denominator, 1), 0.0)
    return float(ap.mean())


def ndcg_at_k(similarity: np.ndarray, relevance: np.ndarray, k: int, *, exclude_self: bool = True) -> float:
    """NDCG@k, graded gains (Jarvelin & Kekalainen 2002): sum rel_i / log2(i + 1) over the ideal order's."""
    gains = _gains(similarity, relevance, exclude_self)
    discount = 1.0 / np.log2(np.arange(2, gains.shape[1] + 2))
    dcg = (gains[:, :k] * discount[:k]).sum(1)
    ideal = (-np.sort(-gains, axis=1))[:, :k]
    idcg = (ideal * discount[:k]).sum(1)
    return float(np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0.0).mean())
