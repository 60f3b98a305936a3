"""ctlib.metrics.retrieval against torchmetrics 1.9 (RetrievalPrecision/Recall/MAP/NormalizedDCG) and sklearn
(ndcg_score), and one test per convention where they differ (listed in retrieval.py's module docstring).

References always get the gallery without the query (``_off_diagonal``) and targets binarised with the same
threshold as ctlib; scores are kept > 0 because torchmetrics treats items scored <= 0 as not relevant
(pinned in ``test_torchmetrics_drops_relevant_items_with_a_score_at_or_below_zero``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as sk
from torchmetrics import retrieval as tm
from torchmetrics.functional import retrieval as tmf

from ctlib.metrics import retrieval

THRESHOLD = 0.5
KS = (1, 3, 5, 13, 20)  # 14 studies: 13 gallery items without the query, so 13 and 20 reach past the end


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """(n, n) -> (n, n - 1): each query's gallery without the query itself."""
    n = matrix.shape[0]
    return matrix[~np.eye(n, dtype=bool)].reshape(n, n - 1)


def _torchmetrics(metric: tm.RetrievalMetric, preds: np.ndarray, target: np.ndarray) -> float:
    """A torchmetrics retrieval metric over (Q, G) preds and targets, one query per row."""
    indexes = torch.arange(preds.shape[0]).repeat_interleave(preds.shape[1])
    preds_t, target_t = torch.from_numpy(preds).flatten(), torch.from_numpy(target).flatten()
    return float(metric(preds_t, target_t, indexes=indexes))


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """14 studies: positive similarities without ties, Jaccard relevance of random labels; the last study has
    a finding nobody else has, so its graded relevance is 0 everywhere (no relevant item, NDCG 0)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((14, 6), dtype=bool)
    labels[:13, :5] = rng.random((13, 5)) < 0.35
    labels[13, 5] = True
    return rng.random((14, 14)) + 0.1, retrieval.jaccard_relevance(labels)


def _stable_ranks(similarity: np.ndarray) -> np.ndarray:
    """Scores that spell out ctlib's tie break (gallery index) as distinct positive values."""
    position = np.argsort(np.argsort(-similarity, axis=1, kind="stable"), axis=1)
    return (similarity.shape[1] - position).astype(np.float64)


@pytest.mark.parametrize("seed", range(4))
def test_p_r_ndcg_match_torchmetrics_and_sklearn(seed):
    sim, rel = _case(seed)
    scores = retrieval.retrieval_scores(sim, rel, KS, threshold=THRESHOLD)
    preds, graded = _off_diagonal(sim), _off_diagonal(rel)
    target = (graded >= THRESHOLD).astype(np.int64)
    assert scores["queries_without_relevant"] == int((target.sum(1) == 0).sum()) >= 1
    for k in KS:
        # adaptive_k: ctlib's P@k divides by min(k, gallery size); see test_precision_past_the_gallery_end.
        assert scores[f"P@{k}"] == pytest.approx(
            _torchmetrics(tm.RetrievalPrecision(top_k=k, adaptive_k=True), preds, target), abs=1e-6
        )
        recall_tm = _torchmetrics(tm.RetrievalRecall(top_k=k), preds, target)
        assert scores[f"R@{k}"] == pytest.approx(recall_tm, abs=1e-6)
        ndcg_tm = _torchmetrics(tm.RetrievalNormalizedDCG(top_k=k), preds, graded)
        assert scores[f"NDCG@{k}"] == pytest.approx(ndcg_tm, abs=1e-6)
        assert scores[f"NDCG@{k}"] == pytest.approx(sk.ndcg_score(graded, preds, k=k), abs=1e-12)  # float64


@pytest.mark.parametrize("seed", range(4))
def test_map_matches_torchmetrics_up_to_its_denominator(seed):
    """torchmetrics' AP@k divides by the relevant items found in the top k, ctlib's by min(k, relevant)."""
    sim, rel = _case(seed)
    preds, target = _off_diagonal(sim), (_off_diagonal(rel) >= THRESHOLD).astype(np.int64)
    n_relevant = target.sum(1)
    for k in KS:
        expected = []
        for p, t, r in zip(torch.from_numpy(preds), torch.from_numpy(target), n_relevant, strict=True):
            found = float(tmf.retrieval_recall(p, t, top_k=k)) * r
            ap_tm = float(tmf.retrieval_average_precision(p, t, top_k=k))
            expected.append(ap_tm * found / min(k, r) if r else 0.0)
        ours = retrieval.average_precision_at_k(sim, rel, k, threshold=THRESHOLD)
        assert ours == pytest.approx(np.mean(expected), abs=1e-6)
        theirs = _torchmetrics(tm.RetrievalMAP(top_k=k), preds, target)
        if k >= preds.shape[1]:  # the whole gallery is retrieved: both denominators are the relevant count
            assert ours == pytest.approx(theirs, abs=1e-6)
        elif k > 1:  # some query found fewer than min(k, relevant) items: torchmetrics scores it higher
            assert ours < theirs - 1e-3


def test_ap_at_k_denominator_differs_from_torchmetrics():
    """Relevant items at ranks 1, 4, 5: ctlib AP@2 = (1/1) / min(2, 3) = 0.5; torchmetrics gives 1.0 (it only
    counts the relevant items it found, so missing two of three is not penalised). The full AP agrees: 0.7."""
    sim = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    rel = np.array([[1.0, 0, 0, 1, 1]])
    p, t = torch.from_numpy(sim[0]), torch.from_numpy(rel[0]).long()
    assert retrieval.average_precision_at_k(sim, rel, 2, exclude_self=False) == pytest.approx(0.5)
    assert float(tmf.retrieval_average_precision(p, t, top_k=2)) == pytest.approx(1.0)
    assert retrieval.average_precision_at_k(sim, rel, 5, exclude_self=False) == pytest.approx(0.7)
    assert float(tmf.retrieval_average_precision(p, t, top_k=5)) == pytest.approx(0.7)


def test_precision_past_the_gallery_end():
    """3 gallery items, 2 relevant, k = 5: ctlib P@5 = 2/3 (torchmetrics adaptive_k=True); its default 2/5."""
    sim, rel = np.array([[0.9, 0.8, 0.7]]), np.array([[1.0, 1, 0]])
    p, t = torch.from_numpy(sim[0]), torch.from_numpy(rel[0]).long()
    assert retrieval.precision_at_k(sim, rel, 5, exclude_self=False) == pytest.approx(2 / 3)
    assert float(tmf.retrieval_precision(p, t, top_k=5, adaptive_k=True)) == pytest.approx(2 / 3)
    assert float(tmf.retrieval_precision(p, t, top_k=5)) == pytest.approx(2 / 5)


def test_graded_targets_must_be_binarised_before_torchmetrics():
    """Jaccard 0.2, 0.6, 0, 1 in ranked order, threshold 0.5. torchmetrics accepts floats in [0, 1] as binary
    targets: RetrievalMAP counts any target > 0 as relevant (AP@4 = (1 + 1 + 3/4) / 3 = 0.917) and
    RetrievalPrecision / RetrievalRecall sum the graded values (P@2 = 0.8 / 2 = 0.4, R@2 = 0.8 / 1.8 = 0.444).
    ctlib binarises: AP@4 = (1/2 + 2/4) / 2 = 0.5, P@2 = 0.5, R@2 = 0.5, as torchmetrics on 0/1 targets."""
    sim, rel = np.array([[0.9, 0.8, 0.7, 0.6]]), np.array([[0.2, 0.6, 0.0, 1.0]])
    graded = rel.astype(np.float32)
    binary = (rel >= THRESHOLD).astype(np.int64)
    assert _torchmetrics(tm.RetrievalMAP(top_k=4), sim, graded) == pytest.approx(2.75 / 3, abs=1e-6)
    assert _torchmetrics(tm.RetrievalPrecision(top_k=2), sim, graded) == pytest.approx(0.4, abs=1e-6)
    assert _torchmetrics(tm.RetrievalRecall(top_k=2), sim, graded) == pytest.approx(0.8 / 1.8, abs=1e-6)
    scores = retrieval.retrieval_scores(sim, rel, (2, 4), threshold=THRESHOLD, exclude_self=False)
    assert scores["mAP@4"] == pytest.approx(0.5) == _torchmetrics(tm.RetrievalMAP(top_k=4), sim, binary)
    assert scores["P@2"] == pytest.approx(0.5) == _torchmetrics(tm.RetrievalPrecision(top_k=2), sim, binary)
    assert scores["R@2"] == pytest.approx(0.5) == _torchmetrics(tm.RetrievalRecall(top_k=2), sim, binary)


def test_torchmetrics_drops_relevant_items_with_a_score_at_or_below_zero():
    """Cosine similarities can be negative. Relevant items at ranks 1 and 3, scored 0.9 and -0.1: torchmetrics
    zeroes the target of every item scored <= 0 (AP 1.0, R@4 0.5, P@4 0.25); ctlib uses the ranking only
    (AP (1 + 2/3) / 2 = 0.833, R@4 1, P@4 0.5) and agrees with torchmetrics once the scores are shifted up."""
    sim, rel = np.array([[0.9, 0.8, -0.1, -0.2]]), np.array([[1.0, 0, 1, 0]])
    p, t = torch.from_numpy(sim[0]), torch.from_numpy(rel[0]).long()
    assert float(tmf.retrieval_average_precision(p, t, top_k=4)) == pytest.approx(1.0)
    assert float(tmf.retrieval_recall(p, t, top_k=4)) == pytest.approx(0.5)
    assert float(tmf.retrieval_precision(p, t, top_k=4)) == pytest.approx(0.25)
    for shift in (0.0, 1.0):
        scores = retrieval.retrieval_scores(sim + shift, rel, (4,), exclude_self=False)
        assert scores["mAP@4"] == pytest.approx(5 / 6) and scores["R@4"] == 1.0 and scores["P@4"] == 0.5
    assert float(tmf.retrieval_average_precision(p + 1, t, top_k=4)) == pytest.approx(5 / 6)


def test_queries_without_relevant_items_score_zero():
    """ctlib = torchmetrics' empty_target_action="neg"; the mean over the other queries ("skip") is recovered
    from queries_without_relevant: score * Q / (Q - empty)."""
    sim, rel = _case(0)
    preds, target = _off_diagonal(sim), (_off_diagonal(rel) >= THRESHOLD).astype(np.int64)
    scores = retrieval.retrieval_scores(sim, rel, (3, 13), threshold=THRESHOLD)
    q, empty = sim.shape[0], scores["queries_without_relevant"]
    assert empty >= 1
    # mAP over the whole gallery (13), where the AP denominators agree (test_ap_at_k_denominator_differs...).
    for name, metric, k in (("R@3", tm.RetrievalRecall, 3), ("mAP@13", tm.RetrievalMAP, 13)):
        assert scores[name] == pytest.approx(_torchmetrics(metric(top_k=k), preds, target), abs=1e-6)
        skipped = _torchmetrics(metric(top_k=k, empty_target_action="skip"), preds, target)
        assert scores[name] * q / (q - empty) == pytest.approx(skipped, abs=1e-6)
    # The study sharing no finding with anyone has graded relevance 0 everywhere: NDCG 0, as sklearn.
    ndcg_last = retrieval.ndcg_at_k(sim[-1:], rel[-1:], 3, exclude_self=False)
    assert ndcg_last == 0.0 and rel[-1, :-1].max() == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_ties_are_broken_by_gallery_index(seed):
    """Similarities in {1, 2, 3} (many ties): ctlib equals the references fed ctlib's order (ties by gallery
    index) as distinct scores. torchmetrics itself orders ties as torch.topk/argsort return them, which is
    not stable (torch 2 CPU: of 4 equal scores topk returned index 2 first)."""
    rng = np.random.default_rng(seed)
    sim = rng.integers(1, 4, size=(14, 14)).astype(np.float64)
    rel = retrieval.jaccard_relevance(rng.random((14, 5)) < 0.35)
    preds = _stable_ranks(_off_diagonal(sim))
    graded = _off_diagonal(rel)
    target = (graded >= THRESHOLD).astype(np.int64)
    scores = retrieval.retrieval_scores(sim, rel, (1, 3, 5), threshold=THRESHOLD)
    for k in (1, 3, 5):
        assert scores[f"P@{k}"] == pytest.approx(_torchmetrics(tm.RetrievalPrecision(top_k=k), preds, target))
        assert scores[f"R@{k}"] == pytest.approx(_torchmetrics(tm.RetrievalRecall(top_k=k), preds, target))
        assert scores[f"NDCG@{k}"] == pytest.approx(sk.ndcg_score(graded, preds, k=k, ignore_ties=True))
    # The ties matter here: sklearn's tie-averaged NDCG@1 on the raw similarities is another number.
    assert abs(scores["NDCG@1"] - sk.ndcg_score(graded, _off_diagonal(sim), k=1)) > 1e-3


def test_ndcg_tie_averaging_differs():
    """Gains 1, 0, 0.5 scored 1, 1, 0.2, k = 1. sklearn and torchmetrics average the gain of the tied
    group: (1 + 0) / 2 / 1 = 0.5. ctlib takes the lower gallery index first: 1.0; 0.0 when the pair swaps."""
    gains, sim = np.array([[1.0, 0.0, 0.5]]), np.array([[1.0, 1.0, 0.2]])
    assert sk.ndcg_score(gains, sim, k=1) == pytest.approx(0.5)
    ndcg_tm = tmf.retrieval_normalized_dcg(torch.from_numpy(sim[0]), torch.from_numpy(gains[0]), top_k=1)
    assert float(ndcg_tm) == pytest.approx(0.5)
    assert retrieval.ndcg_at_k(sim, gains, 1, exclude_self=False) == 1.0
    assert retrieval.ndcg_at_k(sim, gains[:, [1, 0, 2]], 1, exclude_self=False) == 0.0


def test_self_exclusion_matches_the_off_diagonal_reference():
    """With exclude_self the reference gets the gallery without the query; without it, the full matrix (and
    the query, most similar to itself and relevant to itself, is its own first hit)."""
    sim, rel = _case(1)
    np.fill_diagonal(sim, 2.0)
    for exclude_self, (preds, graded) in (
        (True, (_off_diagonal(sim), _off_diagonal(rel))),
        (False, (sim, rel)),
    ):
        target = (graded >= THRESHOLD).astype(np.int64)
        scores = retrieval.retrieval_scores(sim, rel, (1, 5), exclude_self=exclude_self)
        for k in (1, 5):
            precision_tm = _torchmetrics(tm.RetrievalPrecision(top_k=k), preds, target)
            assert scores[f"P@{k}"] == pytest.approx(precision_tm)
            assert scores[f"NDCG@{k}"] == pytest.approx(sk.ndcg_score(graded, preds, k=k), abs=1e-12)
        assert (scores["P@1"] == 1.0) is not exclude_self
