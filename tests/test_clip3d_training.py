"""CT-CLIP training and evaluation glue on a tiny generated split: the loop trains (loss falls, zero-shot
validation recorded), the evaluation table follows the protocol (non-evaluable findings named, thresholds
from validation) and the retrieval metrics are computed on the paired reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctlib.data import phantom
from ctlib.models.ct_clip import CTClip, CTClipConfig
from ctlib.models.slice_fusion import SliceFusionConfig
from ctlib.models.text_encoder import TextEncoderConfig
from ctlib.studies.clip3d import evaluation, findings, h5store, training
from ctlib.train import loop

NODULE = findings.FINDINGS.index("Lung nodule")
EFFUSION = findings.FINDINGS.index("Pleural effusion")


def _split(path, n, seed):
    rng = np.random.default_rng(seed)
    studies = []
    for i in range(n):
        volume = phantom.ct_phantom((16, 32, 32), (8.0, 10.0, 10.0), seed=seed * 100 + i)
        labels = np.zeros(18, np.float32)
        labels[NODULE] = i % 2
        labels[EFFUSION] = 0.0
        if labels[NODULE]:
            array = volume.array.copy()
            array[6:10, 10:16, 10:16] = 800.0
            volume = volume.with_array(array)
        text = "Lung nodule is present." if labels[NODULE] else "Lung nodule is not present."
        studies.append(
            h5store.Study(
                f"s{seed}_{i}",
                f"p{seed}_{i // 2}",
                lambda v=volume: v,
                f"s{i}",
                labels,
                text,
                ["Stable.", "Unremarkable."][int(rng.integers(2))],
            )
        )
    h5store.write_split(path, studies, (8, 32, 32))
    return h5store.SplitFile(path)


@pytest.fixture(scope="module")
def splits(tmp_path_factory, one_torch_thread):
    folder = tmp_path_factory.mktemp("clip")
    return (
        _split(folder / "train.h5", 16, 0),
        _split(folder / "val.h5", 8, 1),
        _split(folder / "test.h5", 8, 2),
    )


def test_train_then_evaluate(splits, tmp_path):
    train_split, val_split, test_split = splits
    torch.manual_seed(0)
    tokenizer = training.tokenizer_for(train_split, vocab_size=200)
    config = CTClipConfig(
        vision=SliceFusionConfig(resnet_widths=(8, 8, 16, 16), feature_dim=32, fusion_depth=1).to_dict(),
        text=TextEncoderConfig(vocab_size=tokenizer.get_vocab_size(), dim=32, depth=1).to_dict(),
        embed_dim=16,
    )
    model = CTClip(config)
    data = loop.batch_stream(training.ClipDataset(train_split, tokenizer, 24), loop.TrainConfig(batch_size=8))
    validation = training.ZeroShotValidation(
        training.ClipDataset(val_split, tokenizer, 24),
        val_split.labels,
        findings.FINDINGS,
        tokenizer,
        every=2,
    )
    config_train = loop.TrainConfig(steps=40, batch_size=8, lr=2e-3, log_every=10, checkpoint_every=1000)
    history = loop.train(
        model,
        training.loss_fn,
        data,
        config_train,
        checkpoint_path=tmp_path / "ckpt.pt",
        normalization={},
        callback=validation,
    )
    assert history[-1]["loss"] < history[0]["loss"]
    assert len(validation.history) == 2 and np.isfinite(validation.history[-1]["val_mean_auroc"])

    val_scores, _ = evaluation.split_scores(model, tokenizer, val_split, findings.FINDINGS)
    test_scores, embeddings = evaluation.split_scores(model, tokenizer, test_split, findings.FINDINGS)
    assert test_scores.shape == (8, 18) and ((test_scores > 0) & (test_scores < 1)).all()
    table = evaluation.finding_table(
        val_split.labels,
        val_scores,
        val_split.volume_names,
        test_split.labels,
        test_scores,
        test_split.volume_names,
        test_split.patient_ids,
        findings.FINDINGS,
        n_bootstrap=200,
    )
    assert table.set_index("finding").loc["Lung nodule", "evaluable"]
    assert not table.set_index("finding").loc["Pleural effusion", "evaluable"]  # one class: not a 0.5
    row = table.set_index("finding").loc["Lung nodule"]
    assert row.auroc_ci_low <= row.auroc <= row.auroc_ci_high and {"f1_positive", "f1_weighted"} <= set(
        row.index
    )
    metrics = evaluation.retrieval_metrics(model, tokenizer, test_split, embeddings)
    assert set(metrics) >= {"report_to_volume_R@1", "volume_to_volume_mAP@5", "volume_to_volume_NDCG@10"}
    assert metrics["report_to_volume_R@10"] == 1.0  # 8 studies: every match is in the top 10
