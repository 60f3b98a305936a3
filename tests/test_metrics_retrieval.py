"""Retrieval metrics against closed forms and sklearn (ndcg_score) on small cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from ctlib.metrics import retrieval


def test_ranking_excludes_the_query():
    sim = np.array([[9.0, 1, 2], [1, 9, 3], [5, 4, 9]])
    np.testing.assert_array_equal(retrieval.ranking(sim, exclude_self=True), [[2, 1], [2, 0], [0, 1]])
    with pytest.raises(ValueError, match="square"):
        retrieval.ranking(np.zeros((2, 3)), exclude_self=True)


def test_recall_at_k_paired():
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.3, 0.2, 0.1]])  # ranks of the match: 1, 2, 3
    assert retrieval.recall_at_k(sim, 1) == pytest.approx(1 / 3)
    assert retrieval.recall_at_k(sim, 2) == pytest.approx(2 / 3)
    assert retrieval.recall_at_k(sim, 3) == 1.0


def test_jaccard_relevance():
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    rel = retrieval.jaccard_relevance(labels)
    assert rel[0, 1] == 0.5 and rel[0, 2] == 0.0 and rel[2, 3] == 1.0 and rel[0, 0] == 1.0


def test_precision_and_map_closed_form():
    # Query 0 ranks its gallery (itself excluded) [1, 2, 3, 4] with relevance [1, 0, 1, 0].
    sim = np.vstack([[10.0, 4, 3, 2, 1], np.zeros((4, 5))])
    rel = np.zeros((5, 5))
    rel[0, [1, 3]] = 1
    np.testing.assert_array_equal(retrieval.ranking(sim, exclude_self=True)[0], [1, 2, 3, 4])
    assert retrieval.precision_at_k(sim[:1], rel[:1], 2, exclude_self=False) == pytest.approx(0.5)  # [0, 1]
    assert retrieval.precision_at_k(sim, rel, 2) == pytest.approx(0.5 / 5)
    # AP@4 of query 0 = (1/1 + 2/3) / 2; queries 1..4 have no relevant item (AP 0).
    assert retrieval.average_precision_at_k(sim, rel, 4) == pytest.approx((1 + 2 / 3) / 2 / 5)
    # AP@1: one relevant hit at rank 1, denominator min(1, 2) = 1.
    assert retrieval.average_precision_at_k(sim, rel, 1) == pytest.approx(1 / 5)


def test_ndcg_matches_sklearn():
    rng = np.random.default_rng(0)
    n = 12
    sim = rng.normal(size=(n, n))
    rel = retrieval.jaccard_relevance(rng.random((n, 5)) < 0.4)
    ours = retrieval.ndcg_at_k(sim, rel, 5)
    off = ~np.eye(n, dtype=bool)
    theirs = sk.ndcg_score(rel[off].reshape(n, n - 1), sim[off].reshape(n, n - 1), k=5)
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_map_matches_a_direct_loop():
    rng = np.random.default_rng(1)
    n, k = 15, 6
    sim = rng.normal(size=(n, n))
    rel = retrieval.jaccard_relevance(rng.random((n, 4)) < 0.5)
    aps = []
    for q in range(n):
        gallery = [g for g in np.argsort(-sim[q], kind="stable") if g != q]
        hits = [rel[q, g] >= 0.5 for g in gallery]
        found, total = 0, 0.0
        for i, hit in enumerate(hits[:k]):
            if hit:
                found += 1
                total += found / (i + 1)
        denominator = min(k, sum(hits))
        aps.append(total / denominator if denominator else 0.0)
    assert retrieval.average_precision_at_k(sim, rel, k) == pytest.approx(np.mean(aps))
