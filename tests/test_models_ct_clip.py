"""CT-CLIP networks: rotary attention, the slice-fusion encoder (ResNet and ViT), the report tokenizer and
text encoder, the symmetric contrastive loss, and zero-shot scoring; tiny sizes on CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ctlib.models import ct_clip, report_tokenizer, rope_transformer
from ctlib.models.slice_fusion import SliceFusionConfig, SliceFusionEncoder
from ctlib.models.text_encoder import TextEncoder, TextEncoderConfig
from ctlib.studies.clip3d import zero_shot

TINY_VISION = {"resnet_widths": [8, 8, 16, 16], "feature_dim": 32, "fusion_heads": 4, "fusion_depth": 1}


def test_rotary_scores_depend_only_on_the_position_difference():
    torch.manual_seed(0)
    q, k = torch.randn(8), torch.randn(8)
    cos, sin = rope_transformer.rotary_cos_sin(12, 8, torch.device("cpu"))

    def score(i, j):
        return float(
            rope_transformer.apply_rotary(q, cos[i], sin[i])
            @ rope_transformer.apply_rotary(k, cos[j], sin[j])
        )

    assert score(2, 5) == pytest.approx(score(6, 9), abs=1e-5)
    assert score(2, 5) != pytest.approx(score(2, 6), abs=1e-3)
    rotated = rope_transformer.apply_rotary(q, cos[7], sin[7])
    assert float(rotated.norm()) == pytest.approx(float(q.norm()), rel=1e-5)


def test_sdpa_forward_agrees_with_the_explicit_weights_and_respects_the_mask():
    torch.manual_seed(1)
    attn = rope_transformer.RopeAttention(16, 4)
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    weights = attn.weights(x, mask)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 6), atol=1e-6)
    assert (weights[1, :, :, 4:] == 0).all()
    q, k, v = attn._qkv(x)
    explicit = attn.out((weights @ v).transpose(1, 2).reshape(2, 6, 16))
    assert torch.allclose(attn(x, mask), explicit, atol=1e-5)
    changed = x.clone()
    changed[1, 4:] += 5.0  # masked tokens must not change what the others see
    assert torch.allclose(attn(changed, mask)[1, :4], attn(x, mask)[1, :4], atol=1e-5)


@pytest.mark.parametrize("net", ["resnet", "vit"])
def test_slice_fusion_shapes_and_slice_attention(net):
    torch.manual_seed(0)
    config = SliceFusionConfig(
        slice_net=net,
        vit_image_size=32,
        vit_patch=16,
        vit_hidden=24,
        vit_heads=2,
        vit_layers=1,
        **TINY_VISION,
    )
    encoder = SliceFusionEncoder(config)
    volume = torch.rand(2, 1, 8, 32, 32) * 2 - 1
    assert encoder(volume).shape == (2, 32)
    attention = encoder.slice_attention(volume)
    assert attention.shape == (2, 4) and bool((attention > 0).all()) and bool((attention.sum(1) < 1).all())
    with pytest.raises(ValueError, match="multiple of 2"):
        encoder(torch.zeros(1, 1, 7, 32, 32))


def test_local_weights_load_strictly(tmp_path):
    torch.manual_seed(0)
    first = SliceFusionEncoder(SliceFusionConfig(**TINY_VISION))
    path = tmp_path / "slice_net.safetensors"
    save_file({k: v.contiguous() for k, v in first.slice_net.state_dict().items()}, str(path))
    second = SliceFusionEncoder(SliceFusionConfig(local_weights_path=str(path), **TINY_VISION))
    for key, value in first.slice_net.state_dict().items():
        assert torch.equal(value, second.slice_net.state_dict()[key])
    other = dict(TINY_VISION, resnet_widths=[8, 8, 16, 32])
    with pytest.raises(ValueError, match="slice_net.safetensors: weights do not fit"):
        SliceFusionEncoder(SliceFusionConfig(local_weights_path=str(path), **other))
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        SliceFusionEncoder(SliceFusionConfig(local_weights_path=str(tmp_path / "none.pt"), **TINY_VISION))


REPORTS = [
    "A 6 mm nodule in the right upper lobe. No pleural effusion.",
    "Bilateral pleural effusion with atelectasis. Heart size is normal.",
    "Emphysematous changes in both lungs. No consolidation.",
]


def _tokenizer():
    return report_tokenizer.train_tokenizer(REPORTS + zero_shot.prompt_texts(), vocab_size=300)


def test_tokenizer_keeps_prompt_words_whole_and_round_trips():
    tokenizer = _tokenizer()
    tokens = tokenizer.encode("Lung nodule is not present.").tokens
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "not" in tokens and "present" in tokens
    again = report_tokenizer.from_json(tokenizer.to_str())
    assert again.encode(REPORTS[0]).ids == tokenizer.encode(REPORTS[0]).ids
    ids, mask = report_tokenizer.encode(tokenizer, ["Pleural effusion.", REPORTS[1]], max_tokens=8)
    assert ids.shape == (2, 8) and mask[0].sum() < 8 and mask[1].all()


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    encoder = TextEncoder(TextEncoderConfig(vocab_size=tokenizer.get_vocab_size(), dim=32, depth=2, heads=4))
    alone_ids, alone_mask = report_tokenizer.encode(tokenizer, [REPORTS[2]])
    padded_ids, padded_mask = report_tokenizer.encode(tokenizer, [REPORTS[2], REPORTS[0] + " " + REPORTS[1]])
    assert padded_ids.shape[1] > alone_ids.shape[1]
    assert torch.allclose(encoder(alone_ids, alone_mask)[0], encoder(padded_ids, padded_mask)[0], atol=1e-5)


def test_clip_loss_closed_forms():
    assert float(ct_clip.clip_loss(torch.zeros(4, 4))) == pytest.approx(math.log(4))
    assert float(ct_clip.clip_loss(100 * torch.eye(4))) == pytest.approx(0.0, abs=1e-6)
    asymmetric = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    rows = torch.nn.functional.cross_entropy(asymmetric, torch.arange(2))
    cols = torch.nn.functional.cross_entropy(asymmetric.T, torch.arange(2))
    assert float(ct_clip.clip_loss(asymmetric)) == pytest.approx(float(rows + cols) / 2)


def test_clip_model_learns_to_pair_a_toy_batch():
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    config = ct_clip.CTClipConfig(
        vision=SliceFusionConfig(**TINY_VISION).to_dict(),
        text=TextEncoderConfig(vocab_size=tokenizer.get_vocab_size(), dim=32, depth=1, heads=4).to_dict(),
        embed_dim=16,
    )
    model = ct_clip.CTClip(config)
    assert float(model.scale().detach()) == pytest.approx(1 / 0.07)
    volumes = torch.stack([torch.full((1, 4, 32, 32), v) for v in (-0.8, 0.0, 0.8)])
    ids, mask = report_tokenizer.encode(tokenizer, REPORTS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = ct_clip.clip_loss(model(volumes, ids, mask))
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.3 * first
    with torch.no_grad():
        assert (model(volumes, ids, mask).argmax(1) == torch.arange(3)).all()


def test_zero_shot_scores_follow_the_nearer_prompt():
    pairs = zero_shot.prompt_pairs(["Lung nodule"])
    assert pairs[0][0] == ("Lung nodule is present.", "Lung nodule is not present.")
    assert pairs[0][1] == ("There is lung nodule.", "There is no lung nodule.")

    class Scale:
        def scale(self):
            return torch.tensor(10.0)

    prompts = torch.zeros(2, 3, 2, 4)
    prompts[:, :, 0, 0] = 1.0  # positive prompts along e0
    prompts[:, :, 1, 1] = 1.0  # negative prompts along e1
    volumes = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.6, 0.8, 0, 0]])
    scores = zero_shot.zero_shot_scores(Scale(), volumes, prompts)
    expected = 1 / (1 + np.exp(-10 * (volumes[:, 0] - volumes[:, 1]).numpy()))
    np.testing.assert_allclose(scores, np.repeat(expected[:, None], 2, 1), rtol=1e-5)


def test_tokenizer_vocabulary_is_the_same_in_every_process():
    """Seeded training must reproduce: the library trainer gave a new vocabulary in every process."""
    import subprocess
    import sys

    code = (
        "from ctlib.models import report_tokenizer as r; from ctlib.studies.clip3d import zero_shot as z; "
        f"print(r.train_tokenizer({REPORTS!r} + z.prompt_texts(), 300).to_str())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2)
    }
    assert len(outputs) == 1
    assert (
        _tokenizer().encode("Emphysematous changes.").tokens[1] == "emphysematous"
    )  # whole words stay whole
