"""Self-describing checkpoints, written atomically and read with ``torch.load(weights_only=True)`` only.

A checkpoint is a dict of tensors and primitive containers (no pickled classes), so loading one can
never execute code. It carries everything needed to rebuild and interpret the model: ``config``
(model and training hyper-parameters), ``normalization`` (the HU-window record of
``ctlib.data.windows.normalization_record``), ``extra`` (scale factor, step, data position, ...),
optimizer / scheduler / EMA states, RNG states and provenance (ctlib version, git commit, torch).
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ctlib
from ctlib import provenance as run_provenance
from ctlib.atomic import atomic_path
from ctlib.errors import CTInputError

FORMAT = "ctlib.checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "model_state", "config", "normalization", "extra", "provenance")
# exact types: np.float64 or TorchVersion subclass them
_EXACT_PRIMITIVES = (str, int, float, bool, type(None))


# ------------------------------------------------------------------------------------------ RNG
def capture_rng() -> dict[str, Any]:
    """States of Python's, NumPy's (global), torch's and (if available) CUDA's generators, as tensors."""
    version, mt_state, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(mt_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng`` (a CUDA state is restored only where CUDA is available)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.to(torch.uint8).cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (global) and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------- provenance
def provenance() -> dict[str, Any]:
    """ctlib version, git commit / dirty flag, torch version and time of writing."""
    git = run_provenance.git_state()
    return {
        "ctlib_version": ctlib.__version__,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "torch_version": str(torch.__version__),
        "written_utc": run_provenance.iso(run_provenance.utc_now()),
    }


def check_storable(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first value ``torch.load(weights_only=True)`` could not read back."""
    if type(obj) in _EXACT_PRIMITIVES or isinstance(obj, torch.Tensor | torch.dtype | torch.device):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise TypeError(
                    f"{where}: dict key {key!r} of type {type(key).__name__} is not storable (use str or int)"
                )
            check_storable(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple | torch.Size):
        for i, value in enumerate(obj):
            check_storable(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where}: {type(obj).__name__} is not storable with weights_only=True; "
        "convert it to a tensor, a Python number / str, or a list / dict of those"
    )


# ---------------------------------------------------------------------------- where a run keeps it
CHECKPOINT_FOLDER = "checkpoints"


def checkpoint_file(run_dir: str | os.PathLike, name: str) -> Path:
    """``<run_dir>/checkpoints/<name>.pt``: the model file of a run of kind ``name`` (``vae``, ...)."""
    return Path(run_dir) / CHECKPOINT_FOLDER / f"{name}.pt"


# -------------------------------------------------------------------------------- save and load
def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    normalization: dict[str, Any],
    extra: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    scheduler_state: dict[str, Any] | None = None,
    ema_state: dict[str, Any] | None = None,
    rng_state: bool | dict[str, Any] | list[dict[str, Any]] = True,
    provenance_record: dict[str, Any] | None = None,
) -> Path:
    """Write a self-describing checkpoint atomically (temporary file, then rename).

    ``rng_state=True`` captures this process's generators; pass a state (or one per rank) instead,
    or ``False`` for none. Every value is checked to be readable with ``weights_only=True`` before
    anything is written.
    """
    if rng_state is True:
        rng_state = capture_rng()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_state": {k: v.detach().cpu() for k, v in model_state.items()},
        "config": config,
        "normalization": normalization,
        "extra": dict(extra or {}),
        "optimizer_state": optimizer_state,
        "scheduler_state": scheduler_state,
        "ema_state": ema_state,
        "rng": rng_state or None,
        "provenance": provenance_record or provenance(),
    }
    check_storable(payload)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


_BLOCKED = re.compile(r"(?:unsupported|Unsupported) (?:GLOBAL|global:?) (?:GLOBAL )?([\w.]+)")


def _load_failure(err: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, in one line, without torch's advice to unpickle.

    A pickle that calls anything outside tensors and plain containers (code, e.g. ``posix.system``)
    is named as blocked: ctlib never loads with ``weights_only=False``.
    """
    text = str(err)
    blocked = _BLOCKED.search(text)
    if blocked:
        return (
            f"it holds pickled code ({blocked.group(1)}), which ctlib never runs: checkpoints are read with "
            "weights_only=True only; re-save it from the code that wrote it as tensors and plain values"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return f"{type(err).__name__}: {lines[0][:300] if lines else 'unreadable'}"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; ``CTInputError`` for a missing,
    corrupt or incomplete file."""
    path = Path(path)
    if not path.is_file():
        raise CTInputError(path, "no checkpoint file here" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the refusal says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        raise CTInputError(path, f"not a readable checkpoint ({_load_failure(err)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CTInputError(path, f"not a ctlib checkpoint: expected format {FORMAT!r}, found {found!r}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CTInputError(path, f"checkpoint lacks key(s) {missing}")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CTInputError(
            path,
            f"checkpoint format version {ckpt['format_version']} is newer than this ctlib reads "
            f"({FORMAT_VERSION})",
        )
    return ckpt
