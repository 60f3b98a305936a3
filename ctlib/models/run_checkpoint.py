"""Finding and opening the checkpoint of a run: by run id, by run folder, or by ``.pt`` file.

Every run-kind loader (``ctlib.models.vae_run.VAERun``, the studies' ``run_kinds``) goes through here,
so a missing run, a run that did not complete, a missing file, or a checkpoint of another kind is
refused once, the same way, with a ``CTInputError`` naming the run or the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from ctlib import checkpoint as checkpoint_io
from ctlib import runs
from ctlib.errors import CTInputError


def locate(run_id_or_path: str | os.PathLike, name: str, what: str) -> Path:
    """The checkpoint ``<run dir>/checkpoints/<name>.pt`` named by a run id, a run folder, or a ``.pt`` file.

    A run id must name a completed run (``runs.run_dir_of``); ``what`` names the kind in errors.
    """
    candidate = Path(run_id_or_path)
    if candidate.is_file() or candidate.suffix == ".pt":
        return candidate
    if candidate.is_dir():
        return checkpoint_io.checkpoint_file(candidate, name)
    try:
        run_dir = runs.run_dir_of(str(run_id_or_path))
    except (FileNotFoundError, RuntimeError) as err:
        raise CTInputError(None, f"{what} run {run_id_or_path!r}: {err}") from None
    return checkpoint_io.checkpoint_file(run_dir, name)


def run_folder(path: Path) -> Path | None:
    """The run folder of checkpoint ``path`` (``<run>/checkpoints/<name>.pt``); None for a loose file."""
    return path.parent.parent if path.parent.name == checkpoint_io.CHECKPOINT_FOLDER else None


def require(ckpt: dict[str, Any], path: Path, keys: tuple[str, ...], what: str) -> None:
    """``CTInputError`` unless every dotted key (``"extra.scale_factor"``) is present in ``ckpt``."""
    for key in keys:
        node: Any = ckpt
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise CTInputError(path, f"checkpoint lacks {key!r}: not a {what} checkpoint of this suite?")
            node = node[part]


def open_run(
    run_id_or_path: str | os.PathLike, name: str, what: str, keys: tuple[str, ...] = (),
    map_location: str | torch.device = "cpu",
) -> tuple[Path, dict[str, Any]]:
    """Locate, read (``weights_only=True``) and check a run's checkpoint: ``(path, checkpoint dict)``."""
    path = locate(run_id_or_path, name, what)
    ckpt = checkpoint_io.load_checkpoint(path, map_location)
    require(ckpt, path, keys, what)
    return path, ckpt


def ema_weights(
    state: dict[str, torch.Tensor], ckpt: dict[str, Any], use_ema: bool, prefix: str = ""
) -> tuple[dict[str, torch.Tensor], bool]:
    """Model weights with the EMA shadow of ``ckpt`` (if ``use_ema`` and stored), and whether it was used.

    Shadow names lose ``prefix`` (the EMA tracked the training module); buffers are not averaged, so
    they keep the model's values.
    """
    ema = ckpt.get("ema_state")
    if not use_ema or not ema or not ema.get("shadow"):
        return state, False
    state = dict(state)
    for name, value in ema["shadow"].items():
        key = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if key not in state:
            raise ValueError(f"EMA weight {name!r} matches no model parameter")
        state[key] = value.to(state[key].dtype)
    return state, True


class RunKind:
    """Base of the typed run loaders (one per run kind); ``NAME`` names the checkpoint file."""

    NAME: ClassVar[str]

    @classmethod
    def checkpoint_file(cls, run_dir: str | os.PathLike) -> Path:
        """Where a run of this kind keeps its checkpoint: ``<run_dir>/checkpoints/<NAME>.pt``."""
        return checkpoint_io.checkpoint_file(run_dir, cls.NAME)
