"""CT-CLIP: a 3D volume encoder and a report encoder trained contrastively (Radford et al. 2021 CLIP;
Hamamci et al. 2024 CT-CLIP).

Both towers project to ``embed_dim`` and are L2-normalized; ``logit_scale`` is the learned inverse
temperature (initialised at 1 / 0.07, clamped at 100 as in CLIP). ``clip_loss`` is the symmetric
cross-entropy over the batch's volume-report similarity matrix.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ctlib.config import ConfigDict
from ctlib.models.slice_fusion import SliceFusionConfig, SliceFusionEncoder
from ctlib.models.text_encoder import TextEncoder, TextEncoderConfig

MAX_LOGIT_SCALE = 100.0


@dataclasses.dataclass
class CTClipConfig(ConfigDict):
    """The two towers and the shared embedding."""

    vision: dict = dataclasses.field(default_factory=lambda: SliceFusionConfig().to_dict())
    text: dict = dataclasses.field(default_factory=lambda: TextEncoderConfig().to_dict())
    embed_dim: int = 128
    init_temperature: float = 0.07


class CTClip(nn.Module):
    """Volume ``(B, 1, D, H, W)`` and report ``(ids, mask)`` encoders into one normalized space."""

    def __init__(self, config: CTClipConfig) -> None:
        super().__init__()
        self.config = config
        vision, text = SliceFusionConfig.from_dict(config.vision), TextEncoderConfig.from_dict(config.text)
        self.vision = SliceFusionEncoder(vision)
        self.text = TextEncoder(text)
        self.vision_proj = nn.Linear(vision.feature_dim, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(text.dim, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    def encode_volume(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim)`` unit vectors."""
        return F.normalize(self.vision_proj(self.vision(volume)), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim)`` unit vectors."""
        return F.normalize(self.text_proj(self.text(ids, mask)), dim=-1)

    def scale(self) -> torch.Tensor:
        """The inverse temperature ``exp(logit_scale)``, at most 100."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, volume: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, B)`` logits: scaled cosine similarity of volume i and report j."""
        return self.scale() * self.encode_volume(volume) @ self.encode_text(ids, mask).T


def clip_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: mean of volume->report and report->volume cross-entropy (matches: diagonal)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
