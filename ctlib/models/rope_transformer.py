"""A small pre-norm transformer encoder with rotary position embeddings (RoFormer, Su et al. 2021).

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels where the device has them); ``attention_maps`` recomputes the softmax weights explicitly for
inspection (the slice-attention map of the CT-CLIP fusion transformer). Shapes: tokens ``(B, N, C)``,
a key mask ``(B, N)`` bool with True for tokens to attend to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def rotary_cos_sin(
    n: int, dim_head: int, device: torch.device, base: float = 10000.0
) -> tuple[torch.Tensor, ...]:
    """``(cos, sin)``, each ``(n, dim_head)``: angle ``pos * base^(-2i / dim_head)`` per channel pair."""
    if dim_head % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {dim_head}")
    inv_freq = base ** (-torch.arange(0, dim_head, 2, device=device, dtype=torch.float32) / dim_head)
    angles = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(x_i, x_{i + d/2})`` of ``(..., n, d)`` by the position angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class RopeAttention(nn.Module):
    """Multi-head self-attention with rotary positions on queries and keys."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        cos, sin = rotary_cos_sin(x.shape[1], q.shape[-1], x.device)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(rearrange(out, "b h n d -> b n (h d)"))

    def weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention weights ``(B, heads, N, N)`` (the same ones ``forward`` applies)."""
        q, k, _ = self._qkv(x)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        return scores.softmax(dim=-1)


class RopeBlock(nn.Module):
    """Pre-norm block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU, 4x width)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RopeAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class RopeTransformer(nn.Module):
    """``depth`` pre-norm rotary blocks and a final LayerNorm: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(RopeBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every layer's attention weights ``(B, heads, N, N)``, in order."""
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.norm1(x), mask))
            x = block(x, mask)
        return maps
