"""Contrastive training of CT-CLIP on a split file: the dataset, the loss function for ``ctlib.train.loop``
and the zero-shot validation callback.

Volumes are held in memory as uint8 and mapped to [-1, 1] per batch (``value / 127.5 - 1``); the report
of a study is its findings followed by its impressions, tokenized once. With gradient accumulation the
contrastive negatives are those of each micro-batch (as in CT-CLIP), so the micro-batch size matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from ctlib.metrics import classification
from ctlib.models import report_tokenizer
from ctlib.models.ct_clip import CTClip, CTClipConfig, clip_loss
from ctlib.models.slice_fusion import SliceFusionConfig
from ctlib.models.text_encoder import TextEncoderConfig
from ctlib.studies.clip3d import h5store, pair_augment, zero_shot


def report_text(findings_text: str, impressions_text: str) -> str:
    """The text a study is paired with: findings, then impressions."""
    return " ".join(t for t in (findings_text.strip(), impressions_text.strip()) if t)


def tokenizer_for(split: h5store.SplitFile, vocab_size: int) -> Tokenizer:
    """A WordPiece tokenizer trained on the split's reports and every zero-shot prompt."""
    texts = [report_text(f, i) for f, i in zip(split.findings_text, split.impressions_text, strict=True)]
    return report_tokenizer.train_tokenizer(texts + zero_shot.prompt_texts(split.findings), vocab_size)


def model_input(volumes_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 volumes ``(..., D, H, W)`` as the model's float input in [-1, 1] (``run_kind.NORMALIZATION``)."""
    return volumes_uint8.float().div(127.5).sub(1.0)


class ClipDataset:
    """A split file as ``{"volume": (1, D, H, W) in [-1, 1], "ids": (T,), "mask": (T,)}`` samples.

    ``dataset[i]`` is the study as stored; ``sample(i, rng)`` (what ``BatchStream`` calls) applies
    ``augment`` (``pair_augment``: sentence sampling of the report, volume shift and intensity jitter)
    when it is active. Texts are padded to ``max_tokens``.
    """

    def __init__(
        self,
        split: h5store.SplitFile,
        tokenizer: Tokenizer,
        max_tokens: int = 128,
        augment: pair_augment.PairAugment | None = None,
    ) -> None:
        self.volumes = torch.from_numpy(split.volumes_uint8())
        texts = [report_text(f, i) for f, i in zip(split.findings_text, split.impressions_text, strict=True)]
        self.tokenizer, self.max_tokens = tokenizer, int(max_tokens)
        self.augment = augment or pair_augment.PairAugment()
        self.sentences = [pair_augment.split_sentences(t) for t in texts]
        self.ids, self.mask = self._tokenize(texts)

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = report_tokenizer.encode(self.tokenizer, texts, self.max_tokens)
        padded_ids = torch.full((len(texts), self.max_tokens), self.tokenizer.token_to_id("[PAD]"))
        padded_mask = torch.zeros((len(texts), self.max_tokens), dtype=torch.bool)
        padded_ids[:, : ids.shape[1]], padded_mask[:, : mask.shape[1]] = ids, mask
        return padded_ids, padded_mask

    def __len__(self) -> int:
        return int(self.volumes.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        volume = model_input(self.volumes[index])[None]
        return {"volume": volume, "ids": self.ids[index], "mask": self.mask[index]}

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Study ``index`` with ``augment``'s random sentence subset, shift and intensity change."""
        if not self.augment.active:
            return self[index]
        volume = pair_augment.augment_volume(model_input(self.volumes[index])[None], self.augment, rng)
        kept = pair_augment.sample_sentences(self.sentences[index], self.augment.sentence_keep, rng)
        ids, mask = self._tokenize([" ".join(kept)])
        return {"volume": volume, "ids": ids[0], "mask": mask[0]}


def loss_fn(batch: dict[str, torch.Tensor], model: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric contrastive loss of a micro-batch, with the in-batch matching accuracy and temperature."""
    logits = model(batch["volume"], batch["ids"], batch["mask"])
    loss = clip_loss(logits)
    target = torch.arange(logits.shape[0], device=logits.device)
    accuracy = float((logits.argmax(1) == target).float().mean())
    return loss, {
        "loss": float(loss.detach()),
        "batch_accuracy": accuracy,
        "temperature": 1.0 / float(unwrap(model).scale().detach()),
    }


def unwrap(model: nn.Module) -> CTClip:
    """The CTClip inside a DDP or compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model  # type: ignore[return-value]


@torch.no_grad()
def embed_volumes(
    model: CTClip, volumes_uint8: Sequence[np.ndarray] | torch.Tensor, batch_size: int = 4
) -> torch.Tensor:
    """``(N, E)`` unit volume embeddings (eval mode restored afterwards)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(volumes_uint8), batch_size):
        chunk = torch.as_tensor(np.stack([np.asarray(v) for v in volumes_uint8[start : start + batch_size]]))
        out.append(model.encode_volume(model_input(chunk)[:, None].to(device)).cpu())
    model.train(was_training)
    return torch.cat(out)


class ZeroShotValidation:
    """``train`` callback: every ``every`` log steps, the validation split's mean zero-shot AUROC over the
    findings that have both classes there (recorded as ``val_mean_auroc``)."""

    def __init__(
        self,
        dataset: ClipDataset,
        labels: np.ndarray,
        findings: Sequence[str],
        tokenizer: Tokenizer,
        every: int = 1,
    ) -> None:
        self.dataset, self.labels, self.findings, self.tokenizer = dataset, labels, list(findings), tokenizer
        self.every, self.calls, self.history = max(1, int(every)), 0, []

    def __call__(self, record: dict[str, float], model: nn.Module) -> bool:
        self.calls += 1
        if self.calls % self.every:
            return False
        clip = unwrap(model)
        was_training = clip.training
        clip.eval()
        embeddings = embed_volumes(clip, self.dataset.volumes)
        prompts = zero_shot.prompt_embeddings(clip, self.tokenizer, self.findings)
        scores = zero_shot.zero_shot_scores(clip, embeddings.to(prompts.device), prompts)
        clip.train(was_training)
        aurocs = [classification.auroc(self.labels[:, f], scores[:, f]) for f in range(len(self.findings))]
        value = float(np.nanmean(aurocs)) if np.isfinite(aurocs).any() else float("nan")
        record["val_mean_auroc"] = value
        self.history.append({"step": record.get("step", float("nan")), "val_mean_auroc": value})
        return False


MODEL_PARAMETERS = (
    "slice_net", "slice_group", "resnet_widths", "resnet_layers", "vit_patch", "vit_hidden", "vit_layers",
    "vit_heads", "feature_dim", "fusion_depth", "fusion_heads", "text_dim", "text_depth", "text_heads",
    "embed_dim", "local_weights_path",
)  # fmt: skip


def model_config(params: dict, vocab_size: int, slice_size: int) -> CTClipConfig:
    """The ``CTClipConfig`` that the training notebook's flat parameters (``MODEL_PARAMETERS``) describe."""
    missing = [k for k in MODEL_PARAMETERS if k not in params]
    if missing:
        raise ValueError(f"model parameters missing: {missing}")
    vision = SliceFusionConfig(
        slice_net=params["slice_net"], slice_group=int(params["slice_group"]),
        resnet_widths=tuple(params["resnet_widths"]), resnet_layers=tuple(params["resnet_layers"]),
        vit_image_size=int(slice_size), vit_patch=int(params["vit_patch"]),
        vit_hidden=int(params["vit_hidden"]), vit_layers=int(params["vit_layers"]),
        vit_heads=int(params["vit_heads"]),
        feature_dim=int(params["feature_dim"]), fusion_depth=int(params["fusion_depth"]),
        fusion_heads=int(params["fusion_heads"]), local_weights_path=str(params["local_weights_path"]),
    )  # fmt: skip
    text = TextEncoderConfig(
        vocab_size=int(vocab_size),
        dim=int(params["text_dim"]),
        depth=int(params["text_depth"]),
        heads=int(params["text_heads"]),
    )
    return CTClipConfig(vision=vision.to_dict(), text=text.to_dict(), embed_dim=int(params["embed_dim"]))
