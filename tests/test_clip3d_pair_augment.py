"""Pair augmentation for CT-CLIP training: sentence sampling keeps whole sentences (never none), the
volume shift moves content and fills with air, intensity jitter stays in range, and the dataset's
``sample`` is reproducible from its generator and equal to the stored study when nothing is active."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctlib.data import phantom
from ctlib.models import report_tokenizer
from ctlib.studies.clip3d import h5store, pair_augment, training

REPORT = "Chest CT was performed. There is a left pleural effusion. No emphysema. Pleural effusion."


def test_split_sentences():
    assert pair_augment.split_sentences(REPORT) == [
        "Chest CT was performed.",
        "There is a left pleural effusion.",
        "No emphysema.",
        "Pleural effusion.",
    ]
    assert pair_augment.split_sentences("  ") == []


def test_sentence_sampling_keeps_whole_sentences_and_never_none():
    sentences = pair_augment.split_sentences(REPORT)
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(300):
        kept = pair_augment.sample_sentences(sentences, 0.3, rng)
        assert kept and set(kept) <= set(sentences) and len(kept) == len(set(kept))
        lengths.append(len(kept))
    # each of 4 sentences kept with p 0.3 (empty draws fall back to one): mean about 1.4
    assert 1.2 < np.mean(lengths) < 1.6
    assert max(lengths) >= 3
    assert pair_augment.sample_sentences(sentences, 1.0, rng) == sentences


def test_shift_volume_moves_content_and_fills_with_air():
    volume = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    shifted = pair_augment.shift_volume(volume, (1, -2, 3))
    assert torch.equal(shifted[0, 1:, :3, 3:], volume[0, :3, 2:, :3])
    assert (
        (shifted[0, 0] == -1).all() and (shifted[0, :, 3:] == -1).all() and (shifted[0, :, :, :3] == -1).all()
    )
    assert torch.equal(pair_augment.shift_volume(volume, (0, 0, 0)), volume)
    assert (pair_augment.shift_volume(volume, (4, 0, 0)) == -1).all()


def test_augment_volume_ranges():
    config = pair_augment.PairAugment(shift_voxels=2, intensity_jitter=0.05)
    volume = torch.zeros(1, 8, 8, 8)
    rng = np.random.default_rng(1)
    for _ in range(50):
        out = pair_augment.augment_volume(volume, config, rng)
        assert out.shape == volume.shape
        # zeros become the offset, air fill becomes -(1 + gain) + offset
        assert out.max() <= 0.05 + 1e-6 and out.min() >= -1.05 - 0.05 - 1e-6
    with pytest.raises(ValueError, match="sentence_keep"):
        pair_augment.PairAugment(sentence_keep=0.0)


def _split(path):
    studies = []
    for i in range(3):
        volume = phantom.ct_phantom((12, 24, 24), (8.0, 10.0, 10.0), seed=i)
        labels = np.zeros(18, np.float32)
        studies.append(
            h5store.Study(f"s{i}", f"p{i}", lambda v=volume: v, f"s{i}", labels, REPORT, "Stable.")
        )
    h5store.write_split(path, studies, (8, 24, 24))
    return h5store.SplitFile(path)


def test_dataset_sample_is_seeded_and_identity_when_inactive(tmp_path):
    split = _split(tmp_path / "train.h5")
    tokenizer = report_tokenizer.train_tokenizer([REPORT, "Stable."], 200)
    plain = training.ClipDataset(split, tokenizer, 40)
    assert np.array_equal(split.volumes_uint8()[1], split.volume_uint8(1))
    stored = plain[1]
    drawn = plain.sample(1, np.random.default_rng(0))
    assert all(torch.equal(stored[k], drawn[k]) for k in stored)
    config = pair_augment.PairAugment(sentence_keep=0.4, shift_voxels=2, intensity_jitter=0.02)
    augmented = training.ClipDataset(split, tokenizer, 40, augment=config)
    first, again = (augmented.sample(1, np.random.default_rng(7)) for _ in range(2))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert first["ids"].shape == stored["ids"].shape == (40,)
    draws = [augmented.sample(1, np.random.default_rng(s)) for s in range(10)]
    assert any(int(d["mask"].sum()) < int(stored["mask"].sum()) for d in draws)
    assert any(not torch.equal(d["volume"], stored["volume"]) for d in draws)
