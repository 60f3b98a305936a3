"""What the X-ray-to-CT networks see: HU through a linear window to [-1, 1], stated per run.

The reconstruction window ``RECON`` is [-1000, 1000] HU: air at -1, water at 0, and 140 HU between fat
and muscle become 0.14 (0.07 in X2CT-GAN's 4095-wide full range), so soft-tissue contrast survives; bone
above 1000 HU saturates (a few voxels at 2-4 mm). A run may pick any named window (``ctlib.data.windows``,
e.g. ``full`` where bone matters); the checkpoint records it (``windows.normalization_record``). The
projection losses render the denormalized volume without clipping, so they stay differentiable.
"""

from __future__ import annotations

import torch

from ctlib.data import windows

RECON = windows.HUWindow("recon", 0.0, 2000.0)  # [-1000, 1000] HU
DATA_RANGE = (-1.0, 1.0)  # normalized values of the training volumes
CLIP_MARGIN = 0.05  # predicted x0 is clamped to the data range widened by this (bug 3 of issue 14)


def window_named(name: str) -> windows.HUWindow:
    """``RECON`` for ``"recon"``, else the named window of ``ctlib.data.windows``."""
    return RECON if name == RECON.name else windows.get_window(name)


def to_model(hu: torch.Tensor, window: windows.HUWindow) -> torch.Tensor:
    """HU -> [-1, 1] (clipped to the window)."""
    return windows.normalize(hu, window)


def to_hu(x: torch.Tensor, window: windows.HUWindow) -> torch.Tensor:
    """[-1, 1] -> HU, linear and unclipped (differentiable for the projection loss)."""
    return windows.denormalize(x, window)


def clip_range() -> tuple[float, float]:
    """Where the sampler clamps predicted x0: the data range plus ``CLIP_MARGIN`` on each side."""
    return DATA_RANGE[0] - CLIP_MARGIN, DATA_RANGE[1] + CLIP_MARGIN
