"""Named HU windows and the window-based intensity normalization used by every network.

A window (level L, width W) shows HU in ``[L - W/2, L + W/2]``. Networks see
``normalize(hu) = 2 * (clip(hu, low, high) - low) / W - 1`` in ``[-1, 1]``; metrics such as PSNR see
``to_unit(hu) = (clip(hu, low, high) - low) / W`` in ``[0, 1]``. Every checkpoint stores
``normalization_record(window)`` so that its outputs can be mapped back to HU exactly.

Clinical presets follow Radiopaedia, "Windowing (CT)" (lungs W:1500 L:-600; bone W:1800 L:400;
brain W:80 L:40; mediastinum W:350 L:50; soft tissues W:350-400 L:20-60). MEDIASTINUM uses the
equally common L:40 W:400 (the abdominal/mediastinal preset of most PACS); SOFT_TISSUE is kept as its
own window, L:50 W:350 (Radiopaedia's mediastinum / head-and-neck soft tissue), not an alias, so the
two can be reported separately. FULL, ``[-1024, 3071]`` HU (the 12-bit range of CT storage), is the
primary evaluation window of this project.

All functions accept numpy arrays (float dtypes are kept, integers become float32) and torch tensors
(same rule), and return the same kind they were given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

RECORD_KIND = "hu_window_linear"


@dataclass(frozen=True)
class HUWindow:
    """A CT display window: ``level`` (centre) and ``width``, both in HU."""

    name: str
    level: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.level) and math.isfinite(self.width)) or self.width <= 0:
            raise ValueError(
                f"HUWindow {self.name!r}: expected a finite level and a positive width (HU), "
                f"got level={self.level}, width={self.width}"
            )

    @property
    def low(self) -> float:
        """Lowest HU shown (maps to -1 / 0)."""
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        """Highest HU shown (maps to +1 / 1)."""
        return self.level + self.width / 2.0


LUNG = HUWindow("lung", -600.0, 1500.0)
MEDIASTINUM = HUWindow("mediastinum", 40.0, 400.0)
SOFT_TISSUE = HUWindow("soft_tissue", 50.0, 350.0)
BONE = HUWindow("bone", 400.0, 1800.0)
BRAIN = HUWindow("brain", 40.0, 80.0)
FULL = HUWindow("full", 1023.5, 4095.0)  # [-1024, 3071] HU

WINDOWS: dict[str, HUWindow] = {w.name: w for w in (LUNG, MEDIASTINUM, SOFT_TISSUE, BONE, BRAIN, FULL)}


def get_window(name: str | HUWindow) -> HUWindow:
    """The named window (case-insensitive; ``-`` and spaces count as ``_``); a window passes through."""
    if isinstance(name, HUWindow):
        return name
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in WINDOWS:
        raise ValueError(f"unknown HU window {name!r}; expected one of {sorted(WINDOWS)}")
    return WINDOWS[key]


def _as_float(x: ArrayT) -> ArrayT:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.float32)
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def _clip(x: ArrayT, low: float, high: float) -> ArrayT:
    if isinstance(x, torch.Tensor):
        return torch.clamp(x, low, high)
    return np.clip(x, low, high)


def normalize(hu: ArrayT, window: HUWindow | str) -> ArrayT:
    """Window normalization: clip HU to the window, then scale linearly to ``[-1, 1]``."""
    w = get_window(window)
    hu = _clip(_as_float(hu), w.low, w.high)
    return (hu - w.low) * (2.0 / w.width) - 1.0


def denormalize(x: ArrayT, window: HUWindow | str, clip: bool = False) -> ArrayT:
    """Inverse of ``normalize``: ``[-1, 1]`` -> HU
    (values outside ``[-1, 1]`` extrapolate unless ``clip``)."""
    w = get_window(window)
    x = _as_float(x)
    if clip:
        x = _clip(x, -1.0, 1.0)
    return (x + 1.0) * (w.width / 2.0) + w.low


def to_unit(hu: ArrayT, window: HUWindow | str) -> ArrayT:
    """Window to ``[0, 1]`` (clip, then scale) -- the intensity scale PSNR and SSIM are computed on."""
    w = get_window(window)
    hu = _clip(_as_float(hu), w.low, w.high)
    return (hu - w.low) * (1.0 / w.width)


def from_unit(u: ArrayT, window: HUWindow | str) -> ArrayT:
    """Inverse of ``to_unit``: ``[0, 1]`` -> HU."""
    w = get_window(window)
    return _as_float(u) * w.width + w.low


def normalization_record(window: HUWindow | str) -> dict[str, Any]:
    """JSON-able description of the normalization, stored with every checkpoint."""
    w = get_window(window)
    return {
        "kind": RECORD_KIND,
        "name": w.name,
        "level_hu": float(w.level),
        "width_hu": float(w.width),
        "low_hu": float(w.low),
        "high_hu": float(w.high),
        "output_range": [-1.0, 1.0],
    }


def window_from_record(record: dict[str, Any]) -> HUWindow:
    """The window a ``normalization_record`` describes (its numbers win over its name)."""
    if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
        found = record.get("kind") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"not a normalization record: expected kind={RECORD_KIND!r}, found {found!r}")
    missing = [k for k in ("name", "level_hu", "width_hu") if k not in record]
    if missing:
        raise ValueError(f"normalization record lacks {missing}: {record}")
    window = HUWindow(str(record["name"]), float(record["level_hu"]), float(record["width_hu"]))
    for key, value in (("low_hu", window.low), ("high_hu", window.high)):
        if key in record and not math.isclose(float(record[key]), value, abs_tol=1e-6):
            raise ValueError(
                f"inconsistent normalization record: {key}={record[key]} but level/width give {value}"
            )
    if list(record.get("output_range", [-1.0, 1.0])) != [-1.0, 1.0]:
        raise ValueError(f"normalization record output_range must be [-1, 1], got {record['output_range']}")
    return window
