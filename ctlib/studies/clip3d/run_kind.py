"""The CT-CLIP training run (notebook ``clip3d/2026-12-03_02_clip_train``) as one object: ``ClipRun.load``.

A CLIP run keeps ``checkpoints/clip_model.pt``: the ``CTClip`` weights (and EMA weights when trained with
one), ``config["model"]`` (``CTClipConfig.to_dict()``), the input ``normalization`` (uint8 volumes of the
preprocessing run mapped to [-1, 1]) and ``extra = {preprocess_run_id, tokenizer_json, findings,
max_tokens, volume_shape, step}``. Every field is read here and nowhere else; the tokenizer travels as
its JSON text inside the checkpoint, so a run needs no other file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from tokenizers import Tokenizer

from ctlib.errors import CTInputError
from ctlib.models import report_tokenizer, run_checkpoint
from ctlib.models.ct_clip import CTClip, CTClipConfig

NORMALIZATION = {"kind": "uint8", "mapping": "x = value / 127.5 - 1 (uint8 of [-1000, 1000] HU)"}


@dataclasses.dataclass
class ClipRun(run_checkpoint.RunKind):
    """A trained CT-CLIP model (eval, no grad), its tokenizer and what it was trained on."""

    NAME: ClassVar[str] = "clip_model"  # checkpoints/clip_model.pt

    model: CTClip
    tokenizer: Tokenizer
    model_config: dict[str, Any]
    findings: tuple[str, ...]
    max_tokens: int
    volume_shape: tuple[int, int, int]
    preprocess_run_id: str | None
    step: int | None
    weights: str  # "ema" or "model"
    path: Path

    @classmethod
    def load(
        cls,
        run_id_or_path: str | os.PathLike,
        *,
        use_ema: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> ClipRun:
        """The model of a run id, run folder or ``.pt`` file (EMA weights when ``use_ema`` and stored)."""
        path, ckpt = run_checkpoint.open_run(
            run_id_or_path, cls.NAME, "CT-CLIP model", ("config.model", "extra"), map_location
        )
        try:
            model = CTClip(CTClipConfig.from_dict(ckpt["config"]["model"]))
            state, used_ema = run_checkpoint.ema_weights(dict(ckpt["model_state"]), ckpt, use_ema)
            model.load_state_dict(state)
            extra = ckpt["extra"]
            tokenizer = report_tokenizer.from_json(extra["tokenizer_json"])
        except Exception as err:  # noqa: BLE001  (tokenizers raises its own exception types)
            raise CTInputError(path, f"unusable CT-CLIP checkpoint ({type(err).__name__}: {err})") from None
        return cls(
            model=model.to(map_location).eval().requires_grad_(False),
            tokenizer=tokenizer,
            model_config=ckpt["config"]["model"],
            findings=tuple(extra["findings"]),
            max_tokens=int(extra["max_tokens"]),
            volume_shape=tuple(int(n) for n in extra["volume_shape"]),
            preprocess_run_id=extra.get("preprocess_run_id"),
            step=extra.get("step"),
            weights="ema" if used_ema else "model",
            path=path,
        )
