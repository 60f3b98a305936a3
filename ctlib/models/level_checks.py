"""Validation shared by the configs of the multi-level MONAI networks (VAE, latent U-Net)."""

from __future__ import annotations

from collections.abc import Sequence


def check_levels(
    owner: str, channels: Sequence[int], attention_levels: Sequence[bool], norm_num_groups: int
) -> None:
    """One attention flag per level, and every level's channel count divisible by the GroupNorm group count;
    ``ValueError`` naming ``owner`` (the config class) otherwise."""
    if len(attention_levels) != len(channels):
        raise ValueError(
            f"{owner}: attention_levels has {len(attention_levels)} entries, channels has {len(channels)}"
        )
    bad = [c for c in channels if c % norm_num_groups]
    if bad:
        raise ValueError(
            f"{owner}: norm_num_groups={norm_num_groups} must divide every channel count, not {bad}"
        )
