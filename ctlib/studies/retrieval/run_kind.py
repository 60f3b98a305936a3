"""The retrieval training run (notebook ``retrieval/2026-12-04_02_retrieval_train``) as one object.

A run keeps ``checkpoints/retrieval_model.pt`` (the last state, for resuming: the ``RetrievalTrainer``
weights, ``config["model"]`` = ``VolumeEmbedderConfig.to_dict()``, the input ``normalization`` and
``extra = {loss, label_names, window_hu, input_shape, preprocess_run_id}``) and, when validation ran,
``checkpoints/best_model.safetensors`` (the embedder selected by validation micro-F1, then mAP@k; see
``validation``). ``RetrievalRun.load`` returns the selected embedder when there is one, the last otherwise.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from ctlib.errors import CTInputError
from ctlib.models import run_checkpoint
from ctlib.models.volume_embedder import VolumeEmbedder, from_config
from ctlib.studies.retrieval.validation import BEST_WEIGHTS, load_best

NORMALIZATION = {"kind": "uint8", "mapping": "x = value / 127.5 - 1 (uint8 of the recorded window_hu)"}


@dataclasses.dataclass
class RetrievalRun(run_checkpoint.RunKind):
    """A trained volume embedder (eval, no grad) and what it was trained on."""

    NAME: ClassVar[str] = "retrieval_model"  # checkpoints/retrieval_model.pt

    model: VolumeEmbedder
    embedder_config: dict[str, Any]
    loss: dict[str, Any]
    label_names: tuple[str, ...]
    window_hu: tuple[float, float]
    input_shape: tuple[int, int, int]
    preprocess_run_id: str | None
    step: int | None
    weights: str  # "best" (validation-selected) or "last"
    path: Path

    @classmethod
    def load(
        cls,
        run_id_or_path: str | os.PathLike,
        *,
        prefer_best: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> RetrievalRun:
        """The embedder of a run id, run folder or ``.pt`` file (the validation-selected one if stored)."""
        path, ckpt = run_checkpoint.open_run(
            run_id_or_path, cls.NAME, "retrieval model", ("config.model", "extra.loss", "extra.label_names"),
            map_location,
        )  # fmt: skip
        extra = ckpt["extra"]
        best = path.parent / BEST_WEIGHTS
        try:
            if prefer_best and best.is_file():
                model, meta = load_best(best, str(map_location))
                step, weights = meta.get("step"), "best"
            else:
                model = from_config(ckpt["config"]["model"])
                state = {k.removeprefix("embedder."): v for k, v in ckpt["model_state"].items()
                         if k.startswith("embedder.")}  # fmt: skip
                model.load_state_dict(state)
                step, weights = extra.get("step"), "last"
        except (KeyError, ValueError, RuntimeError) as err:
            raise CTInputError(path, f"unusable retrieval checkpoint ({type(err).__name__}: {err})") from None
        return cls(
            model=model.to(map_location).eval().requires_grad_(False),
            embedder_config=model.config.to_dict(),
            loss=dict(extra["loss"]),
            label_names=tuple(extra["label_names"]),
            window_hu=tuple(float(w) for w in extra["window_hu"]),
            input_shape=tuple(int(n) for n in extra["input_shape"]),
            preprocess_run_id=extra.get("preprocess_run_id"),
            step=step,
            weights=weights,
            path=path,
        )


TRAIN_NOTEBOOK = "notebooks/retrieval/2026-12-04_02_retrieval_train.ipynb"


def newest_run_of_mode(mode: str) -> str | None:
    """Id of the newest completed training run whose ``mode`` parameter is ``mode`` (``None`` if none)."""
    from ctlib import runs

    return runs.latest_run(Path(TRAIN_NOTEBOOK).stem, where={"mode": mode})
