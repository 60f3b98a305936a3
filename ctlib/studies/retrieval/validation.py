"""Validation during training: embeddings of the validation split (no augmentation), metrics, the best
checkpoint, and TensorBoard event files.

At every ``every``-th log step of ``ctlib.train.loop`` the callback embeds the validation split and the
``train_eval`` subset of the training split, and records ``val_micro_f1`` (head in micro-F1 mode, else a
``knn_k``-nearest-neighbour label vote over ``train_eval``), ``val_mAP@k`` and ``val_NDCG@k``
(validation as its own gallery, query excluded). The best weights are selected by micro-F1, then mAP@k,
and written (by rank 0 under DDP) to ``best_model.safetensors`` with a JSON sidecar (step, metrics,
embedder config); loading never unpickles.
TensorBoard (``torch.utils.tensorboard``): the training losses, these metrics, and the micro-averaged PR
curve of the label scores, under ``log_dir``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ctlib import atomic
from ctlib.metrics import multilabel, retrieval
from ctlib.models.volume_embedder import VolumeEmbedder, from_config, get_embeddings, unwrap
from ctlib.studies.retrieval.dataset import RetrievalSplit
from ctlib.studies.retrieval.evaluation import knn_label_scores
from ctlib.train import distributed

BEST_WEIGHTS = "best_model.safetensors"


def label_scores(
    model: nn.Module,
    split: RetrievalSplit,
    reference: RetrievalSplit,
    *,
    use_head: bool,
    k: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (N, E), label scores (N, C) in [0, 1])`` of ``split``: head sigmoid, or the kNN vote."""
    embeddings, logits = get_embeddings(model, split.volumes, return_logits=True)
    if use_head and logits is not None:
        return embeddings, 1.0 / (1.0 + np.exp(-logits))
    reference_embeddings = get_embeddings(model, reference.volumes)
    return embeddings, knn_label_scores(embeddings, reference_embeddings, reference.labels, k)


def save_best(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Embedder weights (safetensors, atomic) and ``<path>.json`` (config, step, metrics)."""
    embedder = unwrap(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in embedder.state_dict().items()}
    with atomic.atomic_path(path) as tmp:
        save_file(state, str(tmp))
    atomic.write_json(f"{path}.json", {**meta, "embedder": embedder.config.to_dict()})


def load_best(path: str | os.PathLike, device: str = "cpu") -> tuple[VolumeEmbedder, dict[str, Any]]:
    """The embedder saved by ``save_best`` (no pickle), and its sidecar."""
    path = Path(path)
    sidecar = Path(f"{path}.json")
    if not path.is_file() or not sidecar.is_file():
        raise FileNotFoundError(f"{path}: no best-model weights (or no {sidecar.name} beside them)")
    meta = json.loads(sidecar.read_text())
    embedder = from_config(meta["embedder"])
    try:
        state = load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path}: unreadable safetensors file ({err})") from None
    try:
        embedder.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: weights do not fit the embedder config of {sidecar.name} ({err})"
        ) from None
    return embedder.to(device).eval(), meta


class RetrievalValidation:
    """``train`` callback (see the module docstring); ``history`` holds one dict per validation."""

    def __init__(
        self,
        validation: RetrievalSplit,
        train_eval: RetrievalSplit,
        *,
        use_head: bool,
        best_path: str | os.PathLike,
        every: int = 1,
        k: int = 10,
        knn_k: int = 5,
        log_dir: str | os.PathLike | None = None,
    ) -> None:
        self.validation, self.train_eval, self.use_head = validation, train_eval, bool(use_head)
        self.best_path, self.every, self.k, self.knn_k = (
            Path(best_path),
            max(1, int(every)),
            int(k),
            int(knn_k),
        )
        self.calls, self.history, self.best_key = 0, [], (-np.inf, -np.inf)
        # under DDP every rank validates (the records stay equal); rank 0 alone writes files
        self.is_main = distributed.world_from_env().rank == 0
        self.writer = None
        if log_dir is not None and self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], np.ndarray]:
        """Validation metrics of ``model`` now, and its label scores."""
        embeddings, scores = label_scores(
            model, self.validation, self.train_eval, use_head=self.use_head, k=self.knn_k
        )
        relevance = retrieval.jaccard_relevance(self.validation.labels)
        similarity = embeddings.astype(np.float64) @ embeddings.T.astype(np.float64)
        f1 = multilabel.f1_scores(self.validation.labels > 0, scores >= 0.5)
        metrics = {
            "val_micro_f1": float(f1["micro"]),
            f"val_mAP@{self.k}": retrieval.average_precision_at_k(similarity, relevance, self.k),
            f"val_NDCG@{self.k}": retrieval.ndcg_at_k(similarity, relevance, self.k),
        }
        return metrics, scores

    def __call__(self, record: dict[str, float], model: nn.Module) -> bool:
        self.calls += 1
        step = int(record.get("step", self.calls))
        if self.writer is not None:
            for name, value in record.items():
                if name != "step" and np.isfinite(value):
                    self.writer.add_scalar(f"train/{name}", value, step)
        if self.calls % self.every:
            return False
        metrics, scores = self.evaluate(model)
        record.update(metrics)
        key = (metrics["val_micro_f1"], metrics[f"val_mAP@{self.k}"])
        improved = key > self.best_key
        if improved:
            self.best_key = key
            if self.is_main:
                save_best(self.best_path, model, {"step": step, **metrics})
        self.history.append({"step": step, **metrics, "best": improved})
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"validation/{name.removeprefix('val_')}", value, step)
            self.writer.add_pr_curve(
                "validation/micro_pr", torch.from_numpy(self.validation.labels.ravel() > 0),
                torch.from_numpy(scores.ravel().astype(np.float32)), step,
            )  # fmt: skip
            self.writer.flush()
        return False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
