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


def test_recall_at_k_graded_closed_form():
    # Query 0 ranks [1, 2, 3, 4] with relevance [0.6, 0.2, 1.0, 0.5]: relevant (>= 0.5) at ranks 1, 3, 4.
    sim = np.vstack([[10.0, 4, 3, 2, 1], np.zeros((4, 5))])
    rel = np.zeros((5, 5))
    rel[0, 1:] = [0.6, 0.2, 1.0, 0.5]
    rel[1, 0] = 1.0  # query 1 ranks [0, 2, 3, 4] (ties by index): its one relevant item first
    r = [retrieval.recall_at_k_graded(sim, rel, k) for k in (1, 2, 3, 4, 9)]
    # Queries 2..4 have no relevant item and score 0 (as in mAP); k past the gallery end is the whole gallery.
    np.testing.assert_allclose(r, np.array([1 / 3 + 1, 1 / 3 + 1, 2 / 3 + 1, 1 + 1, 1 + 1]) / 5)
    assert retrieval.recall_at_k_graded(sim, rel, 1, threshold=0.55) == pytest.approx((1 / 2 + 1) / 5)


def test_retrieval_scores_equal_the_single_metrics():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(11, 11))
    rel = retrieval.jaccard_relevance(rng.random((11, 4)) < 0.4)
    for exclude_self in (True, False):
        scores = retrieval.retrieval_scores(sim, rel, (1, 4, 30), threshold=0.4, exclude_self=exclude_self)
        kwargs = {"threshold": 0.4, "exclude_self": exclude_self}
        for k in (1, 4, 30):
            assert scores[f"P@{k}"] == retrieval.precision_at_k(sim, rel, k, **kwargs)
            assert scores[f"R@{k}"] == retrieval.recall_at_k_graded(sim, rel, k, **kwargs)
            assert scores[f"mAP@{k}"] == retrieval.average_precision_at_k(sim, rel, k, **kwargs)
            assert scores[f"NDCG@{k}"] == retrieval.ndcg_at_k(sim, rel, k, exclude_self=exclude_self)
    assert sorted(retrieval.retrieval_scores(sim, rel)) == sorted(
        [f"{m}@{k}" for m in ("P", "R", "mAP", "NDCG") for k in (1, 3, 5, 10, 20)]
        + ["queries_without_relevant"]
    )


def test_queries_without_relevant_are_counted():
    sim = -np.arange(16.0).reshape(4, 4)  # every query ranks its gallery by index
    rel = np.eye(4)
    rel[0, 1] = rel[1, 0] = 0.5
    rel[2, 3] = 0.3  # graded but below the threshold: no relevant item for P/R/mAP, yet NDCG > 0
    scores = retrieval.retrieval_scores(sim, rel, (3,))
    assert scores["queries_without_relevant"] == 2
    assert scores["R@3"] == scores["mAP@3"] == pytest.approx(2 / 4)
    assert scores["P@3"] == pytest.approx(2 / 3 / 4)
    # Query 2: gain 0.3 at rank 3 of 3: 0.3 / log2(4) / 0.3 = 0.5. Query 3: graded relevance 0 everywhere.
    assert scores["NDCG@3"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s, r: retrieval.retrieval_scores(s, r, (0, 5)), "positive integer"),
        (lambda s, r: retrieval.recall_at_k_graded(s, r, 2.5), "positive integer"),
        (lambda s, r: retrieval.precision_at_k(s, r, 1, threshold=0.0), "threshold"),
        (lambda s, r: retrieval.ndcg_at_k(s, r[:2], 1), "differ"),
        (lambda s, r: retrieval.average_precision_at_k(s * np.nan, r, 1), "NaN"),
        (lambda s, r: retrieval.retrieval_scores(s[:1, :1], r[:1, :1]), "empty"),
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.eye(3), np.eye(3))
