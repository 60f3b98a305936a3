"""Which torch device a run uses: the one resolver of the ``device`` parameter
("auto", "cpu", "cuda:1", ...)."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto", *, local_rank: int | None = None) -> torch.device:
    """``"auto"``: CUDA when available (``cuda:local_rank`` when a rank is given, else ``cuda``), else CPU;
    anything else as ``torch.device`` understands it."""
    if str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
    return torch.device(device)
