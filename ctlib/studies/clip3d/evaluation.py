"""The zero-shot evaluation protocol of the CT-CLIP study, stated once:

1. Scores: template-averaged 2-way softmax per finding (``zero_shot``), for the validation and test splits.
2. AUROC per finding on test, with a 95% percentile CI from a bootstrap that resamples patients (1,000
   seeded replicates; single-class replicates counted and left out); findings with one class on test are
   reported as not evaluable, never as 0.5. On the generated set, whose test split is one base anatomy
   (one "patient"), the unit is the study, and the CI then covers the generated studies of that anatomy.
3. Decision thresholds per finding fitted on the validation split only (Youden's J or the positive-class
   F1), then applied to test: precision, recall, specificity, positive-class F1 and support-weighted F1,
   each named.
4. Retrieval on test: report -> volume R@1/5/10 (the paired report is the one match) and volume ->
   volume mAP@k / NDCG@k with Jaccard label relevance, the query excluded from its gallery.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer

from ctlib.metrics import classification, retrieval
from ctlib.models import report_tokenizer
from ctlib.models.ct_clip import CTClip
from ctlib.studies.clip3d import h5store, training, zero_shot

PROTOCOL = (
    "zero-shot, template-averaged 2-way softmax; AUROC with 95% CI from {n} bootstrap replicates resampling "
    "test {unit} (seed {seed}); thresholds fitted on validation ({rule}), applied to test"
)


def split_scores(
    model: CTClip, tokenizer: Tokenizer, split: h5store.SplitFile, findings: Sequence[str]
) -> tuple[np.ndarray, torch.Tensor]:
    """``(N, F)`` zero-shot probabilities and ``(N, E)`` volume embeddings of a split."""
    embeddings = training.embed_volumes(model, split.volumes_uint8())
    prompts = zero_shot.prompt_embeddings(model, tokenizer, findings)
    return zero_shot.zero_shot_scores(model, embeddings.to(prompts.device), prompts), embeddings


def finding_table(
    val_labels: np.ndarray,
    val_scores: np.ndarray,
    val_ids: Sequence[str],
    test_labels: np.ndarray,
    test_scores: np.ndarray,
    test_ids: Sequence[str],
    test_patients: Sequence[str],
    findings: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    rule: classification.ThresholdRule = "youden",
) -> pd.DataFrame:
    """One row per finding: AUROC with CI, then the validation threshold's metrics on test."""
    rows = []
    for f, name in enumerate(findings):
        y, s = test_labels[:, f], test_scores[:, f]
        row: dict[str, object] = {"finding": name, "n_test": len(y), "n_positive_test": int(np.nansum(y))}
        if not np.isfinite(y).all() or y.min() == y.max():
            rows.append({**row, "evaluable": False})
            continue
        boot = classification.bootstrap_auroc(y, s, test_patients, n_replicates=n_bootstrap, seed=seed)
        row.update(
            evaluable=True,
            auroc=boot.estimate,
            auroc_ci_low=boot.low,
            auroc_ci_high=boot.high,
            bootstrap_single_class=boot.n_single_class,
        )
        yv = val_labels[:, f]
        if np.isfinite(yv).all() and yv.min() != yv.max():
            threshold = classification.fit_threshold(
                yv, val_scores[:, f], val_ids, split="validation", rule=rule
            )
            row.update(classification.binary_metrics(y, s, threshold, test_ids, split="test"))
        rows.append(row)
    return pd.DataFrame(rows)


def retrieval_metrics(
    model: CTClip,
    tokenizer: Tokenizer,
    split: h5store.SplitFile,
    embeddings: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Report -> volume R@k and volume -> volume mAP@k / NDCG@k (Jaccard relevance) on one split."""
    texts = [
        training.report_text(f, i) for f, i in zip(split.findings_text, split.impressions_text, strict=True)
    ]
    ids, mask = report_tokenizer.encode(tokenizer, texts)
    device = next(model.parameters()).device
    with torch.no_grad():
        text = model.encode_text(ids.to(device), mask.to(device)).cpu()
    volumes = embeddings.cpu()
    report_to_volume = (text @ volumes.T).numpy()
    volume_to_volume = (volumes @ volumes.T).numpy()
    relevance = retrieval.jaccard_relevance(np.nan_to_num(split.labels) > 0.5)
    out = {}
    for k in ks:
        out[f"report_to_volume_R@{k}"] = retrieval.recall_at_k(report_to_volume, k)
        out[f"volume_to_volume_mAP@{k}"] = retrieval.average_precision_at_k(volume_to_volume, relevance, k)
        out[f"volume_to_volume_NDCG@{k}"] = retrieval.ndcg_at_k(volume_to_volume, relevance, k)
    return out
