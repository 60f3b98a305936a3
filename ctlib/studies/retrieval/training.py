"""Training of the retrieval embedder for ``ctlib.train.loop``: both modes behind one parameter.

- ``mode="triplet"``: balanced batches of ``n_classes x n_samples`` (class = the label set), online mining
  (batch-hard or semi-hard; ``mining.triplet_loss``, plain torch or pytorch-metric-learning), margin.
- ``mode="micro_f1"``: a linear head on the embedding trained with the differentiable (graded) micro-F1
  loss (``f1_loss.micro_f1_loss``); shuffled batches.

Augmentation runs on the batch on its device (GPU-side when there is one): a random 3D affine (kornia
``RandomAffine3D``; air fills the border) and Gaussian noise, in training only. Volumes stay uint8 in
memory and become [-1, 1] per batch (``volume_embedder.volumes_to_input``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

from ctlib.config import ConfigDict
from ctlib.models.volume_embedder import VolumeEmbedder, volumes_to_input
from ctlib.studies.retrieval import f1_loss, mining
from ctlib.studies.retrieval.dataset import RetrievalSplit

Mode = Literal["triplet", "micro_f1"]


@dataclasses.dataclass
class LossConfig(ConfigDict):
    """How the embedder is trained (stored with the checkpoint)."""

    mode: Mode = "triplet"
    margin: float = 0.2  # triplet margin (distances between unit embeddings)
    mining: str = "batch_hard"  # "batch_hard" or "semi_hard"
    backend: str = "torch"  # "torch" (plain) or "pml" (pytorch-metric-learning; exact label-set classes)
    pos_threshold: float = 0.5  # triplet positives: Jaccard >= this
    n_classes: int = 4  # triplet batches: label-set classes per batch
    n_samples: int = 2  # triplet batches: volumes per class
    augment_degrees: float = 8.0  # random rotation about each axis, degrees (0: off)
    augment_translate: float = 0.05  # fraction of each side
    augment_scale: float = 0.08  # +- relative zoom
    noise_std: float = 0.02  # Gaussian noise on the [-1, 1] input

    def __post_init__(self) -> None:
        if self.mode not in ("triplet", "micro_f1"):
            raise ValueError(f"mode must be 'triplet' or 'micro_f1', got {self.mode!r}")

    @property
    def batch_size(self) -> int:
        """Micro-batch size implied by the triplet sampler (``n_classes * n_samples``)."""
        return int(self.n_classes * self.n_samples)


def label_set_classes(labels: np.ndarray) -> np.ndarray:
    """``(N,)`` class id per row: rows with the same label set share a class (first-seen order)."""
    keys: dict[bytes, int] = {}
    return np.array([keys.setdefault(np.asarray(row, np.uint8).tobytes(), len(keys)) for row in labels], int)


class RetrievalDataset:
    """Samples ``{"volume": (D, H, W) uint8, "labels": (C,) float}``; with ``order`` item ``j`` is case
    ``order[j]`` (a precomputed balanced-batch order, read by ``BatchStream`` with ``shuffle=False``)."""

    def __init__(self, split: RetrievalSplit, order: Sequence[int] | None = None) -> None:
        self.volumes = torch.from_numpy(np.ascontiguousarray(split.volumes))
        self.labels = torch.from_numpy(split.labels.astype(np.float32))
        self.order = None if order is None else np.asarray(order, int)

    def __len__(self) -> int:
        return len(self.volumes) if self.order is None else len(self.order)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case = int(index if self.order is None else self.order[index])
        return {"volume": self.volumes[case], "labels": self.labels[case]}


def balanced_order(labels: np.ndarray, config: LossConfig, batches: int, seed: int) -> np.ndarray:
    """Case indices for ``batches`` triplet batches of ``n_classes x n_samples`` (class = label set)."""
    classes = label_set_classes(labels)
    groups = mining.balanced_batches(classes, config.n_classes, config.n_samples, seed=seed, batches=batches)
    return np.concatenate([np.asarray(batch, int) for batch in groups])


class Augment(nn.Module):
    """Random 3D affine (kornia) and Gaussian noise on ``(B, 1, D, H, W)`` in [-1, 1]; identity in eval."""

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.noise_std = float(config.noise_std)
        self.affine = None
        if config.augment_degrees > 0 or config.augment_translate > 0 or config.augment_scale > 0:
            t, s = float(config.augment_translate), float(config.augment_scale)
            self.affine = K.RandomAffine3D(
                degrees=float(config.augment_degrees), translate=(t, t, t) if t > 0 else None,
                scale=(1.0 - s, 1.0 + s) if s > 0 else None, p=1.0,
            )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.affine is not None:
            x = self.affine(x + 1.0) - 1.0  # the border fills with 0 -> -1 (air at the window's low end)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return x


class RetrievalTrainer(nn.Module):
    """The embedder and its loss: ``trainer(batch) -> (loss, metrics)`` for ``ctlib.train.loop``."""

    def __init__(self, embedder: VolumeEmbedder, config: LossConfig) -> None:
        super().__init__()
        if config.mode == "micro_f1" and embedder.head is None:
            raise ValueError("micro_f1 mode needs an embedder with a classification head (n_classes > 0)")
        self.embedder, self.config, self.augment = embedder, config, Augment(config)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        x = self.augment(volumes_to_input(batch["volume"]))
        labels = batch["labels"].float()
        embedding, logits = self.embedder(x)
        if self.config.mode == "micro_f1":
            loss = f1_loss.micro_f1_loss(logits.float(), labels)
            return loss, {"micro_f1_soft": float(1.0 - loss.detach())}
        loss, info = mining.triplet_loss(
            embedding.float(), labels, margin=self.config.margin, mining=self.config.mining,
            backend=self.config.backend, pos_threshold=self.config.pos_threshold,
        )  # fmt: skip
        return loss, {k: float(v) for k, v in info.items()}


def loss_fn(batch: dict[str, torch.Tensor], model: nn.Module) -> tuple[torch.Tensor, dict[str, Any]]:
    """``ctlib.train.loop`` loss function: the trainer's own forward."""
    return model(batch)
