"""Label tables for the slice viewer: names, deterministic colours, and legends of what is in view.

Two kinds of label overlay share one type, ``LabelSet``:

- ``mode="ids"``: an integer label map (0 = background), e.g. the chest CT's TotalSegmentator-style
  ``mask.nii.gz`` with names from its ``structures.csv``.
- ``mode="bits"``: overlapping boolean masks (OpenKBP structures: PTVs overlap the parotids), packed
  one bit per structure so that no structure hides another. Bits are ordered by decreasing voxel
  count, so smaller structures are blended last and stay visible on top of larger ones.
"""

from __future__ import annotations

import csv
import html
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ctlib.viz import render, view_state

# Hues from colour-vision-deficiency-safe palettes: Okabe & Ito (2008) without black, then
# Paul Tol's "bright", "muted" and "light" qualitative schemes (duplicates dropped).
SAFE_HUES = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377",
    "#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255",
    "#77AADD", "#EE8866", "#EEDD88", "#FFAABB", "#99DDFF", "#44BB99", "#BBCC33", "#AAAA00",
)
# Beyond len(SAFE_HUES) labels the hues repeat in lighter and darker variants (mixed with white or
# black), which stay distinguishable by lightness even where hue discrimination fails.
_LIGHTNESS_VARIANTS = (0.0, 0.45, -0.35, 0.7)
MAX_BITS = 64


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` -> ``(r, g, b)`` in 0..255."""
    color = color.lstrip("#")
    if len(color) != 6:
        raise ValueError(f"expected a colour as #RRGGBB, got {color!r}")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


def rgb_to_hex(rgb: tuple[int, int, int] | np.ndarray) -> str:
    """``(r, g, b)`` in 0..255 -> ``"#rrggbb"``."""
    r, g, b = (int(c) for c in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def label_colors(n: int) -> np.ndarray:
    """Deterministic colours for labels ``1..n``: ``(n + 1, 3)`` uint8, row 0 (background) black.

    Label ``k`` gets hue ``SAFE_HUES[(k - 1) % 29]``, lightened or darkened once per full cycle, so
    neighbouring ids (the five lung lobes, left/right pairs) always get different hues.
    """
    if n < 0:
        raise ValueError(f"label count must be >= 0, got {n}")
    hues = np.array([hex_to_rgb(c) for c in SAFE_HUES], dtype=np.float64)
    out = np.zeros((n + 1, 3), dtype=np.uint8)
    for k in range(1, n + 1):
        hue = hues[(k - 1) % len(hues)]
        shift = _LIGHTNESS_VARIANTS[((k - 1) // len(hues)) % len(_LIGHTNESS_VARIANTS)]
        mixed = hue + (255.0 - hue) * shift if shift >= 0 else hue * (1.0 + shift)
        out[k] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def chest_ct_label_names(structures_csv: str | os.PathLike) -> dict[int, str]:
    """``{label id: structure name}`` from a TotalSegmentator-style ``structures.csv``
    (columns ``group,original_idx,structure,id``; ``id`` is the value in the label map)."""
    path = Path(structures_csv)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"structure", "id"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: expected columns 'structure' and 'id', found {reader.fieldnames}")
        names = {}
        for line, row in enumerate(reader, start=2):
            try:
                names[int(row["id"])] = row["structure"].strip()
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: id {row['id']!r} is not an integer") from None
    return names


def openkbp_label_names(structures: Mapping[str, np.ndarray]) -> list[str]:
    """Structure names of an OpenKBP patient, in the challenge's ROI order (absent ones left out)."""
    from ctlib.io.openkbp import ROI_NAMES

    known = [name for name in ROI_NAMES if name in structures]
    return known + [name for name in structures if name not in known]


@dataclass(frozen=True)
class LegendEntry:
    """One row of a legend: the label id (or bit), its name and its colour."""

    label: int
    name: str
    color: str


@dataclass
class LabelSet:
    """A label overlay on one volume's grid: ``array`` (z, y, x), names, and an RGBA lookup table.

    ``mode="ids"``: ``array`` holds label ids, ``lut_rgba[id]`` their colours.
    ``mode="bits"``: bit ``b`` of ``array`` marks structure ``names[b]``, ``lut_rgba[b]`` its colour.
    """

    array: np.ndarray
    names: dict[int, str]
    lut_rgba: np.ndarray
    mode: Literal["ids", "bits"] = "ids"

    @classmethod
    def from_label_map(
        cls, array: np.ndarray, names: Mapping[int, str] | None = None, alpha: float = 1.0
    ) -> LabelSet:
        """An integer label map (0 = background); unnamed ids are called ``label <id>``."""
        array = np.asarray(array)
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(np.equal(np.mod(array, 1), 0)):
                raise ValueError("label map holds non-integer values")
            array = array.astype(np.int32)
        if array.size and array.min() < 0:
            raise ValueError(f"label ids must be >= 0, found {int(array.min())}")
        top = int(array.max()) if array.size else 0
        names = dict(names or {})
        top = max([top, *names]) if names else top
        if array.dtype.itemsize > 2 or array.dtype.kind == "i":
            # bincount and LUT indexing want a small unsigned type.
            array = array.astype(np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32)
        lut = np.zeros((top + 1, 4), dtype=np.uint8)
        lut[:, :3] = label_colors(top)
        lut[1:, 3] = int(round(255 * alpha))
        return cls(array=array, names={k: names.get(k, f"label {k}") for k in range(1, top + 1)},
                   lut_rgba=lut, mode="ids")

    @classmethod
    def from_masks(cls, masks: Mapping[str, np.ndarray], alpha: float = 1.0) -> LabelSet:
        """Overlapping boolean masks ``{name: (z, y, x) bool}``, packed one bit per structure."""
        if not masks:
            raise ValueError("from_masks needs at least one mask")
        if len(masks) > MAX_BITS:
            raise ValueError(
                f"at most {MAX_BITS} overlapping masks, got {len(masks)}; pass a label map instead"
            )
        shapes = {np.shape(m) for m in masks.values()}
        if len(shapes) != 1:
            raise ValueError(f"masks must share one shape, found {sorted(shapes)}")
        # Colours follow the given order (stable per structure name order); blending order follows size.
        colors = label_colors(len(masks))[1:]
        color_of = dict(zip(masks, colors, strict=True))
        order = sorted(masks, key=lambda name: -int(np.count_nonzero(masks[name])))
        dtype = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if np.iinfo(t).bits >= len(masks))
        array = np.zeros(shapes.pop(), dtype=dtype)
        lut = np.zeros((len(masks), 4), dtype=np.uint8)
        for bit, name in enumerate(order):
            array |= np.asarray(masks[name], dtype=bool).astype(dtype) << dtype(bit)
            lut[bit, :3] = color_of[name]
            lut[bit, 3] = int(round(255 * alpha))
        return cls(array=array, names=dict(enumerate(order)), lut_rgba=lut, mode="bits")

    def present(self, plane: np.ndarray) -> list[int]:
        """Label ids (or bits) that occur in ``plane``, in increasing order."""
        if plane.size == 0:
            return []
        if self.mode == "bits":
            bits = int(np.bitwise_or.reduce(plane, axis=None))
            return [b for b in range(len(self.names)) if bits >> b & 1]
        counts = np.bincount(plane.ravel(), minlength=len(self.lut_rgba))
        return [int(k) for k in np.flatnonzero(counts[1:]) + 1]

    def legend(self, labels: list[int] | None = None) -> list[LegendEntry]:
        """Legend entries for ``labels`` (default: every label with a name), sorted by name."""
        labels = list(self.names) if labels is None else labels
        entries = [
            LegendEntry(k, self.names.get(k, f"label {k}"), rgb_to_hex(self.lut_rgba[k])) for k in labels
        ]
        return sorted(entries, key=lambda e: e.name.lower())

    def pick(self, value: int) -> list[str]:
        """Names of the labels at one voxel value (several in ``bits`` mode)."""
        value = int(value)
        if self.mode == "bits":
            return [self.names[b] for b in range(len(self.names)) if value >> b & 1]
        return [self.names.get(value, f"label {value}")] if value else []


def legend_html(entries: list[LegendEntry], title: str = "labels", empty: str = "none in view") -> str:
    """A compact HTML legend: colour swatch and name per entry (for an ``ipywidgets.HTML``)."""
    swatch = ("display:inline-block;width:0.9em;height:0.9em;margin-right:0.35em;"
              "vertical-align:middle;border:1px solid #444;background:{}")
    items = "".join(
        f'<div class="ctlib-viewer-legend-item" data-label="{e.label}" style="white-space:nowrap">'
        f'<span style="{swatch.format(e.color)}"></span>{html.escape(e.name)}</div>'
        for e in entries
    )
    body = items or f"<div><i>{html.escape(empty)}</i></div>"
    return (f'<div style="font-size:12px;line-height:1.35"><b>{html.escape(title)}</b>'
            f'<div style="max-height:420px;overflow-y:auto">{body}</div></div>')


def present_labels(state: view_state.ViewerState) -> list[int]:
    """Label ids (or bits) visible in any pane at the current state."""
    found: set[int] = set()
    for volume in range(len(state.volumes)):
        for axis in view_state.AXES:
            found.update(render.render_base(state, axis, volume).present)
    return sorted(found)


def legend_entries(state: view_state.ViewerState) -> list[LegendEntry]:
    """Legend of the labels visible in the current panes (empty when labels are off or absent)."""
    if state.labels is None or not state.show_labels:
        return []
    return state.labels.legend(present_labels(state))


def dose_legend_entries(state: view_state.ViewerState) -> list[LegendEntry]:
    """One entry per isodose level, named in Gy, coloured like its line."""
    if state.dose_gy is None or not state.isodose_levels_gy:
        return []
    colors = render.isodose_colors(state.isodose_levels_gy, state.dose_max_gy, state.dose_cmap)
    return [LegendEntry(i, f"{level:g} Gy", rgb_to_hex(c))
            for i, (level, c) in enumerate(zip(state.isodose_levels_gy, colors, strict=True))]


def state_legend_html(state: view_state.ViewerState) -> tuple[str, str]:
    """HTML of the label legend and of the isodose legend at the current state."""
    labels = legend_html(legend_entries(state), "labels in view") if state.labels is not None else ""
    dose = legend_html(dose_legend_entries(state), "isodose") if state.dose_gy is not None else ""
    return labels, dose
