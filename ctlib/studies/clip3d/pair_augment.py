"""Training-time augmentation of volume-report pairs for contrastive training (against memorisation).

Text: sentence sampling. The report is split into sentences; each is kept with probability
``sentence_keep`` (at least one is always kept) and the kept ones are shuffled. The text tower then
sees short texts of one or a few statements, the form of the zero-shot prompts, instead of one fixed
long string per study that it can learn by heart (sentence-level sampling of reports as in MedCLIP,
Wang et al. 2022, and the sentence shuffling of MGCA / ConVIRT-style report augmentation).
Volume: a random integer translation of up to ``shift_voxels`` per axis (the vacated border is air,
-1 in model units) and a random affine intensity change ``x * (1 + a) + b`` with ``|a|, |b| <=
intensity_jitter`` (model units: 0.01 is 10 HU). No flips: reports name sides.

All random choices come from the ``numpy`` generator that ``ctlib.train.streams.BatchStream`` seeds per
stream position, so a resumed run draws the same augmentations.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch

from ctlib.config import ConfigDict

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclasses.dataclass
class PairAugment(ConfigDict):
    """Probabilities and ranges of ``sample_sentences`` and ``augment_volume`` (module docstring)."""

    sentence_keep: float = 1.0
    shift_voxels: int = 0
    intensity_jitter: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.sentence_keep <= 1.0:
            raise ValueError(f"sentence_keep must be in (0, 1], got {self.sentence_keep}")
        if self.shift_voxels < 0 or self.intensity_jitter < 0:
            raise ValueError("shift_voxels and intensity_jitter must be >= 0")

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return self.sentence_keep < 1.0 or self.shift_voxels > 0 or self.intensity_jitter > 0


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (split after ``.``, ``!`` or ``?`` followed by white space)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def sample_sentences(sentences: list[str], keep: float, rng: np.random.Generator) -> list[str]:
    """A random subset of ``sentences`` (each kept with probability ``keep``, at least one), shuffled."""
    if keep >= 1.0 or len(sentences) <= 1:
        return list(sentences)
    kept = [s for s in sentences if rng.random() < keep]
    if not kept:
        kept = [sentences[int(rng.integers(len(sentences)))]]
    return [kept[i] for i in rng.permutation(len(kept))]


def shift_volume(volume: torch.Tensor, shifts: tuple[int, ...], fill: float = -1.0) -> torch.Tensor:
    """``volume (..., D, H, W)`` translated by integer ``shifts`` (one per last axis), ``fill`` behind."""
    out = torch.full_like(volume, fill)
    src, dst = [slice(None)] * volume.ndim, [slice(None)] * volume.ndim
    for axis, shift in zip(range(volume.ndim - len(shifts), volume.ndim), shifts, strict=True):
        n = volume.shape[axis]
        if abs(shift) >= n:
            return out
        src[axis] = slice(max(0, -shift), n - max(0, shift))
        dst[axis] = slice(max(0, shift), n - max(0, -shift))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def augment_volume(volume: torch.Tensor, config: PairAugment, rng: np.random.Generator) -> torch.Tensor:
    """``volume (..., D, H, W)`` in model units, shifted and intensity-jittered per ``config``."""
    if config.shift_voxels > 0:
        shifts = tuple(int(s) for s in rng.integers(-config.shift_voxels, config.shift_voxels + 1, size=3))
        volume = shift_volume(volume, shifts)
    if config.intensity_jitter > 0:
        gain, offset = rng.uniform(-config.intensity_jitter, config.intensity_jitter, size=2)
        volume = volume * float(1.0 + gain) + float(offset)
    return volume
