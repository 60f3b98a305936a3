"""Held-out evaluation of retrieval embeddings: the gallery index, label prediction, baselines.

Protocol: the gallery is one split (validation or test), every case of it is a query, and the query is
excluded from its own gallery. Relevance is the Jaccard index of the label sets (graded; NDCG keeps the
grades, P@k / R@k / mAP@k binarise it at ``threshold``). Searching goes through ``GalleryIndex`` (faiss),
the same code a user runs on a large gallery. Labels are predicted from the embedding by the classification
head (micro-F1 mode) or by a k-nearest-neighbour vote in a reference gallery (both modes).
Baselines: random unit embeddings (seeded), and the label oracle (similarity = relevance: the best ranking
any embedding could give, up to ties).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ctlib.metrics import multilabel, retrieval
from ctlib.studies.retrieval.gallery_index import GalleryIndex

KS: tuple[int, ...] = (1, 3, 5, 10, 20)


def similarity_via_index(
    embeddings: np.ndarray, ids: Sequence[str], *, kind: str = "flat", exclude_self: bool = True, **params
) -> np.ndarray:
    """``(N, N)`` similarity of every case to every other through a ``GalleryIndex`` search of all
    neighbours; pairs the index did not return (approximate kinds) are ``-inf``; the diagonal is ``+inf``
    (the metrics drop it with ``exclude_self``)."""
    ids = [str(i) for i in ids]
    index = GalleryIndex.build(np.asarray(embeddings, np.float32), ids, kind=kind, **params)
    k = len(ids) - 1 if exclude_self else len(ids)
    scores, found = index.search(
        np.asarray(embeddings, np.float32), k, exclude_ids=ids if exclude_self else None
    )
    position = {name: j for j, name in enumerate(ids)}
    columns = np.array([[position.get(name, -1) for name in row] for row in found], int).reshape(scores.shape)
    rows = np.broadcast_to(np.arange(len(ids))[:, None], columns.shape)
    returned = columns >= 0  # approximate kinds may return fewer than k (faiss pads with id -1)
    sim = np.full((len(ids), len(ids)), -np.inf)
    sim[rows[returned], columns[returned]] = np.asarray(scores)[returned]
    if exclude_self:
        np.fill_diagonal(sim, np.inf)
    return sim


def knn_label_scores(
    queries: np.ndarray,
    reference: np.ndarray,
    reference_labels: np.ndarray,
    k: int = 10,
    *,
    exclude_self: bool = False,
) -> np.ndarray:
    """``(Q, C)`` fraction of each query's ``k`` nearest reference cases (cosine) that carry each label."""
    sim = np.asarray(queries, np.float64) @ np.asarray(reference, np.float64).T
    order = retrieval.ranking(sim, exclude_self=exclude_self)[:, :k]
    return np.asarray(reference_labels, np.float64)[order].mean(axis=1)


def random_embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    """``(n, dim)`` seeded random unit vectors: the chance baseline."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def retrieval_metrics(
    similarity: np.ndarray, labels: np.ndarray, *, ks: Sequence[int] = KS, threshold: float = 0.5
) -> dict[str, float]:
    """P@k, R@k, mAP@k, NDCG@k of a self-retrieval similarity over ``labels`` (query excluded)."""
    relevance = retrieval.jaccard_relevance(labels)
    return retrieval.retrieval_scores(
        similarity, relevance, ks=tuple(ks), threshold=threshold, exclude_self=True
    )


def classification_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Micro / macro / weighted F1 (and per class) of ``scores >= threshold`` against 0/1 ``labels``."""
    return multilabel.f1_scores(np.asarray(labels) > 0.5, np.asarray(scores) >= threshold)


def evaluate_method(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ids: Sequence[str],
    label_scores: np.ndarray | None,
    *,
    ks: Sequence[int] = KS,
    threshold: float = 0.5,
    index_kind: str = "flat",
) -> tuple[dict[str, float], np.ndarray]:
    """Retrieval metrics (through the index) and, given ``label_scores`` (probabilities), F1 scores;
    also returns the similarity matrix used."""
    similarity = similarity_via_index(embeddings, ids, kind=index_kind)
    out = retrieval_metrics(similarity, labels, ks=ks, threshold=threshold)
    if label_scores is not None:
        f1 = classification_metrics(labels, label_scores)
        out.update({k: v for k, v in f1.items() if not isinstance(v, dict | list | np.ndarray)})
    return out, similarity


def oracle_similarity(labels: np.ndarray) -> np.ndarray:
    """The label oracle: similarity = Jaccard relevance itself."""
    return retrieval.jaccard_relevance(labels).astype(np.float64)


def within_source_metrics(
    similarity: np.ndarray,
    labels: np.ndarray,
    sources: Sequence[str],
    *,
    min_cases: int = 5,
    ks: Sequence[int] = KS,
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Retrieval metrics with the gallery restricted to each source of at least ``min_cases`` cases (queries
    and gallery of one source: e.g. OpenKBP patients among themselves), from the full similarity matrix."""
    sources = np.asarray(sources)
    out = {}
    for source in sorted(set(sources.tolist())):
        pick = np.flatnonzero(sources == source)
        if len(pick) >= min_cases:
            sub = np.asarray(similarity)[np.ix_(pick, pick)]
            out[str(source)] = {
                "cases": len(pick),
                **retrieval_metrics(sub, np.asarray(labels)[pick], ks=ks, threshold=threshold),
            }
    return out
