"""Exponential moving average of model weights (Polyak averaging),
the weights diffusion models sample with."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class EMA:
    """EMA of a model's floating-point parameters: ``shadow <- d * shadow + (1 - d) * param``.

    With ``warmup`` the decay after n updates is ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's
    ExponentialMovingAverage ``num_updates``, used by LDM, Rombach et al. 2022), so early weights are
    not frozen in. Buffers (e.g. norm statistics) are not averaged: ``copy_to`` leaves them as they
    are. Shadows of half / bfloat16 parameters are kept in float32. Parameters are matched by name, so a
    DDP- or compile-wrapped model and its plain module share one EMA.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: self._shadow_copy(p)
            for name, p in _unwrap(model).named_parameters()
            if p.is_floating_point()
        }

    @staticmethod
    def _shadow_copy(p: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
        return p.detach().to(dtype=dtype, copy=True)

    def current_decay(self) -> float:
        """Decay the next ``update`` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def _params(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = {name: p for name, p in _unwrap(model).named_parameters() if name in self.shadow}
        if params.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - params.keys())[:5]
            raise ValueError(f"EMA: the model lacks parameters the EMA tracks, e.g. {missing}")
        return params

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards the model's current parameters (call after ``optimizer.step()``)."""
        d = self.current_decay()
        for name, p in self._params(model).items():
            self.shadow[name].lerp_(p.detach().to(self.shadow[name].dtype), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the averaged ones."""
        for name, p in self._params(model).items():
            p.copy_(self.shadow[name].to(p.dtype))

    @contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context manager: the model holds the EMA weights inside the block, its own weights after it."""
        params = self._params(model)
        backup = {name: p.detach().clone() for name, p in params.items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(backup[name])

    def to(self, device: torch.device | str) -> EMA:
        """Move the shadow weights (e.g. to CPU to save GPU memory); returns self."""
        self.shadow = {name: v.to(device) for name, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: decay, warmup, update count and the shadow weights."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": {name: v.detach().clone() for name, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``; the parameter names must match the tracked ones."""
        shadow = state["shadow"]
        if shadow.keys() != self.shadow.keys():
            diff = sorted(shadow.keys() ^ self.shadow.keys())[:5]
            raise ValueError(f"EMA.load_state_dict: parameter names differ from the model's, e.g. {diff}")
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for name, value in shadow.items():
            if value.shape != self.shadow[name].shape:
                raise ValueError(
                    f"EMA.load_state_dict: {name} has shape {tuple(value.shape)}, expected "
                    f"{tuple(self.shadow[name].shape)}"
                )
            self.shadow[name] = value.to(
                device=self.shadow[name].device, dtype=self.shadow[name].dtype
            ).clone()
