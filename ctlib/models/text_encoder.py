"""Report text encoder: token embeddings, a rotary transformer (``rope_transformer``), the [CLS] output.

Input: token ids ``(B, T)`` and a padding mask ``(B, T)`` (True for real tokens) from
``report_tokenizer``; position 0 holds [CLS]. Output ``(B, dim)``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ctlib.config import ConfigDict
from ctlib.models.rope_transformer import RopeTransformer


@dataclasses.dataclass
class TextEncoderConfig(ConfigDict):
    """Hyper-parameters of ``TextEncoder``."""

    vocab_size: int = 2000
    dim: int = 128
    depth: int = 2
    heads: int = 4


class TextEncoder(nn.Module):
    """``(ids (B, T), mask (B, T)) -> (B, dim)``: the transformer output at the [CLS] position."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.transformer = RopeTransformer(config.dim, config.depth, config.heads)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token id {int(ids.max())} outside the vocabulary ({self.config.vocab_size})")
        return self.transformer(self.embed(ids), mask.bool())[:, 0]
