"""3D CT volume embedders for retrieval: a plain 3D CNN, or per-slice 2D ResNet features reduced in 3D.

``cnn3d`` (as in 3D content-based CT retrieval baselines): blocks of two 3x3x3 convolutions (GroupNorm,
LeakyReLU) and a 2x max-pool; the feature map is flattened, with its size computed from ``input_shape``
(``pooling="flatten"``), or averaged (``pooling="global"``), then projected to ``embedding_dim``.
``slice_resnet``: every axial slice goes through a 2D MONAI ResNet (random init; ``local_weights_path``
loads a user's own pretrained 2D weights, never a download), the per-slice features ``(B, F, D)`` are
reduced along z by 1D convolutions and pooled, then projected. Both can carry a linear classification head
(``n_classes`` > 0) on the embedding, for the micro-F1 training mode.

Input ``(B, 1, D, H, W)`` in [-1, 1]; ``forward`` returns ``(embedding (B, E), logits (B, C) or None)``;
embeddings are not normalised here (``get_embeddings`` returns unit vectors).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from ctlib.config import ConfigDict
from ctlib.models.slice_fusion import SliceFusionConfig, load_local_weights, slice_network

Backbone = Literal["cnn3d", "slice_resnet"]
Pooling = Literal["flatten", "global"]


@dataclasses.dataclass
class VolumeEmbedderConfig(ConfigDict):
    """Hyper-parameters of ``VolumeEmbedder``."""

    backbone: Backbone = "cnn3d"
    input_shape: tuple[int, int, int] = (32, 64, 64)  # (D, H, W) of the stored volumes
    widths: tuple[int, ...] = (16, 32, 64, 64)  # cnn3d: channels per block (each block halves D, H, W)
    pooling: Pooling = "flatten"  # cnn3d: flatten the last feature map (size from input_shape) or average it
    resnet_widths: tuple[int, ...] = (16, 32, 64, 128)  # slice_resnet: 2D ResNet widths
    resnet_layers: tuple[int, ...] = (1, 1, 1, 1)  # slice_resnet: basic blocks per stage
    embedding_dim: int = 128  # 1024 in the GPU sets
    n_classes: int = 0  # > 0: a linear classification head on the embedding (micro-F1 mode)
    dropout: float = 0.1
    local_weights_path: str = ""  # slice_resnet: the user's own 2D ResNet weights (safetensors or torch)

    def __post_init__(self) -> None:
        if self.backbone not in ("cnn3d", "slice_resnet"):
            raise ValueError(f"backbone must be 'cnn3d' or 'slice_resnet', got {self.backbone!r}")
        if self.pooling not in ("flatten", "global"):
            raise ValueError(f"pooling must be 'flatten' or 'global', got {self.pooling!r}")
        self.input_shape = tuple(int(s) for s in self.input_shape)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1 or self.embedding_dim < 1:
            raise ValueError(f"need a (D, H, W) input_shape and embedding_dim >= 1, got {self}")
        if self.backbone == "cnn3d" and min(self.input_shape) < 2 ** len(self.widths):
            raise ValueError(
                f"input_shape {self.input_shape} is too small for {len(self.widths)} pooling blocks "
                f"(each side needs >= {2 ** len(self.widths)})"
            )


def _block(c_in: int, c_out: int) -> nn.Sequential:
    groups = math.gcd(8, c_out)
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.LeakyReLU(0.1, inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.LeakyReLU(0.1, inplace=True),
        nn.MaxPool3d(2),
    )  # fmt: skip


def flattened_size(input_shape: Sequence[int], widths: Sequence[int]) -> int:
    """Features after ``len(widths)`` blocks of 2x max-pooling (floor division per block)."""
    sizes = list(input_shape)
    for _ in widths:
        sizes = [s // 2 for s in sizes]
    return int(widths[-1] * np.prod(sizes))


class VolumeEmbedder(nn.Module):
    """``(B, 1, D, H, W) -> (embedding (B, E), logits (B, C) | None)``; see the module docstring."""

    def __init__(self, config: VolumeEmbedderConfig) -> None:
        super().__init__()
        self.config = config
        if config.backbone == "cnn3d":
            blocks, c_in = [], 1
            for width in config.widths:
                blocks.append(_block(c_in, width))
                c_in = width
            self.features = nn.Sequential(*blocks)
            if config.pooling == "global":
                self.reduce = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten())
                width = config.widths[-1]
            else:
                self.reduce = nn.Flatten()
                width = flattened_size(config.input_shape, config.widths)
        else:
            slice_config = SliceFusionConfig(
                slice_net="resnet", slice_group=1, resnet_widths=config.resnet_widths,
                resnet_layers=config.resnet_layers,
            )  # fmt: skip
            self.slice_net, feature = slice_network(slice_config)
            if config.local_weights_path:
                load_local_weights(self.slice_net, config.local_weights_path)
            self.features = None
            self.reduce = nn.Sequential(  # along z: (B, F, D) -> (B, F)
                nn.Conv1d(feature, feature, 3, padding=1), nn.GroupNorm(math.gcd(8, feature), feature),
                nn.LeakyReLU(0.1, inplace=True), nn.Conv1d(feature, feature, 3, padding=1, stride=2),
                nn.LeakyReLU(0.1, inplace=True), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
            )  # fmt: skip
            width = feature
        self.project = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, config.embedding_dim))
        self.head = nn.Linear(config.embedding_dim, config.n_classes) if config.n_classes > 0 else None

    def embed(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, E)`` raw embedding of ``(B, 1, D, H, W)`` volumes."""
        if volume.ndim != 5 or volume.shape[1] != 1 or tuple(volume.shape[2:]) != self.config.input_shape:
            raise ValueError(
                f"expected (B, 1, *{self.config.input_shape}) volumes, got {tuple(volume.shape)}"
            )
        if self.features is not None:
            return self.project(self.reduce(self.features(volume)))
        b, _, d, h, w = volume.shape
        per_slice = self.slice_net(volume.permute(0, 2, 1, 3, 4).reshape(b * d, 1, h, w))
        per_slice = per_slice.reshape(b, d, -1).transpose(1, 2)
        return self.project(self.reduce(per_slice))

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        embedding = self.embed(volume)
        logits = self.head(embedding) if self.head is not None else None
        return embedding, logits


def from_config(config: VolumeEmbedderConfig | dict) -> VolumeEmbedder:
    """An embedder to load trained weights into: built without reading ``local_weights_path`` (the stored
    weights replace them; the file may be gone), with the config as trained."""
    config = config if isinstance(config, VolumeEmbedderConfig) else VolumeEmbedderConfig.from_dict(config)
    embedder = VolumeEmbedder(dataclasses.replace(config, local_weights_path=""))
    embedder.config = config
    return embedder


def unwrap(model: nn.Module) -> VolumeEmbedder:
    """The ``VolumeEmbedder`` inside DDP, compile or training wrappers (attribute ``embedder``)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "embedder"):
            model = model.embedder
        else:
            return model  # type: ignore[return-value]


def volumes_to_input(volumes_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, D, H, W)`` (0..255 over the recorded HU window) -> float ``(B, 1, D, H, W)`` in [-1, 1]."""
    return volumes_uint8.float().div(127.5).sub(1.0).unsqueeze(1)


@torch.no_grad()
def get_embeddings(
    model: nn.Module,
    volumes_uint8: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 8,
    amp: bool = True,
    return_logits: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """``(N, E)`` unit-norm float32 embeddings (eval mode, no augmentation, bf16 autocast on CUDA when
    ``amp``); with ``return_logits`` also the ``(N, C)`` head logits (``None`` without a head)."""
    embedder = unwrap(model)
    was_training = embedder.training
    embedder.eval()
    device = next(embedder.parameters()).device
    use_amp = bool(amp) and device.type == "cuda"
    embeddings, logits = [], []
    for start in range(0, len(volumes_uint8), batch_size):
        chunk = torch.as_tensor(np.asarray(volumes_uint8[start : start + batch_size]))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            emb, logit = embedder(volumes_to_input(chunk).to(device))
        embeddings.append(nn.functional.normalize(emb.float(), dim=1).cpu())
        if logit is not None:
            logits.append(logit.float().cpu())
    embedder.train(was_training)
    out = torch.cat(embeddings).numpy() if embeddings else np.zeros((0, embedder.config.embedding_dim), "f4")
    if return_logits:
        return out, (torch.cat(logits).numpy() if logits else None)
    return out
