"""Dataclass configs that round-trip through plain dicts (checkpoints, JSON, papermill parameters).

``to_dict`` gives only primitives and lists, so the dict is JSON-able and loadable with
``torch.load(weights_only=True)``; ``from_dict`` refuses unknown keys (a typo must not silently fall
back to a default) and turns lists back into tuples.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C", bound="ConfigDict")


def to_plain(value: Any) -> Any:
    """Tuples to lists, recursively, and dict keys to str: the form configs take in JSON and checkpoints."""
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


def _tupled(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_tupled(v) for v in value)
    return value


class ConfigDict:
    """Mixin for dataclasses: ``to_dict`` / ``from_dict`` with unknown-key checks."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as a primitive (tuples become lists)."""
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Inverse of ``to_dict``; missing keys take their defaults, unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; expected some of {sorted(names)}")
        return cls(**{k: _tupled(v) if isinstance(v, list) else v for k, v in values.items()})
