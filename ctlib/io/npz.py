"""Reading ``.npz`` archives of arrays (never pickles) with one-line refusals naming the file."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ctlib.errors import CTInputError


def read_npz(path: str | os.PathLike, required: Iterable[str], kind: str) -> dict[str, np.ndarray]:
    """Every array of ``path``; ``CTInputError`` when it is missing, unreadable, or lacks a ``required`` key.

    ``kind`` names what the file should be (e.g. ``"an OpenKBP patient file"``) in the refusal.
    """
    path = Path(path)
    if not path.is_file():
        raise CTInputError(path, "no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as err:
        raise CTInputError(path, f"not a readable .npz file ({type(err).__name__}: {err})") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise CTInputError(path, f"not {kind}: missing keys {missing}")
    return arrays
