"""Geometry of the slice viewer: the shared state, display volumes and how panes map to voxels.

Volumes are reoriented to LPS once (``ctlib.io.orientation``); every pane then reads a plain
``(z, y, x)`` array:

- axial pane: ``array[k]``, row 0 anterior, column 0 the patient's right (radiological);
- coronal pane: ``array[:, j, :]`` with superior up, column 0 the patient's right;
- sagittal pane: ``array[:, :, i]`` with superior up, column 0 anterior.

Panes keep the physical aspect ratio by nearest-neighbour repetition of the coarser axis up to the
finer pixel size (a 2.5 mm slice becomes about 3.6 rows of 0.7 mm), so any front-end that shows the
image at a uniform scale shows true proportions, and a click maps back to a voxel exactly. All rows
of a compare grid share one position in patient space (LPS mm), so volumes of different spacing or
extent stay in sync by physical position, not by index. The pixels are drawn by ``ctlib.viz.render``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ctlib.data.windows import HUWindow
from ctlib.io.volume import Volume

if TYPE_CHECKING:
    from ctlib.viz.labels import LabelSet

AXES = ("axial", "coronal", "sagittal")
MAX_PANE_PX = 2048


def aspect_index_map(n: int, spacing_mm: float, target_mm: float) -> np.ndarray:
    """Nearest-neighbour map from display pixels of size ``target_mm`` to the ``n`` source pixels."""
    n_out = max(1, int(round(n * spacing_mm / target_mm)))
    return np.minimum(((np.arange(n_out) + 0.5) * (n / n_out)).astype(np.intp), n - 1)


def aspect_target_mm(shape: tuple[int, int], spacing_mm: tuple[float, float]) -> float:
    """Display pixel size: the finer of the two spacings, coarsened only if a side would pass MAX_PANE_PX."""
    target = min(spacing_mm)
    extent = max(n * s for n, s in zip(shape, spacing_mm, strict=True))
    return max(target, extent / MAX_PANE_PX)


def plane_spacing_mm(view: str, spacing_mm: Sequence[float]) -> tuple[float, float]:
    """``(row, column)`` pixel size in mm of a ``view`` plane of a ``(z, y, x)`` volume of ``spacing_mm``
    ``(dz, dy, dx)``: axial ``(dy, dx)``, coronal ``(dz, dx)``, sagittal ``(dz, dy)``."""
    if view not in AXES:
        raise ValueError(f"view must be one of {AXES}, got {view!r}")
    dz, dy, dx = (float(s) for s in spacing_mm)
    return {"axial": (dy, dx), "coronal": (dz, dx), "sagittal": (dz, dy)}[view]


def reorient_array_like(array: np.ndarray, volume: Volume) -> np.ndarray:
    """Apply to ``array`` (on ``volume``'s grid) the axis permutation and flips of ``reorient_to_lps``."""
    direction = volume.direction
    lps_of_index = [int(np.argmax(np.abs(c))) for c in direction.T]
    if sorted(lps_of_index) != [0, 1, 2]:
        raise ValueError(f"direction too oblique to reorient unambiguously:\n{direction}")
    signs = [float(np.sign(direction[lps_of_index[a], a])) for a in range(3)]
    old_for_new = [lps_of_index.index(b) for b in range(3)]
    out = np.transpose(array, [2 - old_for_new[2 - k] for k in range(3)])
    for b in range(3):
        if signs[old_for_new[b]] < 0:
            out = np.flip(out, axis=2 - b)
    return np.ascontiguousarray(out)


def grid_index_maps(volume: Volume, grid: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each array axis (z, y, x): the nearest index on ``grid`` of every index of ``volume``
    (-1 outside), matched by LPS position. Both must share a direction (true after reorientation)."""
    if not np.allclose(volume.direction, grid.direction, atol=1e-3):
        raise ValueError("overlay grid and volume differ in direction; reorient both to LPS first")
    offset = np.diag(1.0 / np.array(grid.spacing[::-1])) @ grid.direction.T @ (
        np.asarray(volume.origin) - np.asarray(grid.origin))
    maps = []
    for axis in range(3):  # array axes z, y, x = index axes 2, 1, 0
        a = 2 - axis
        f = offset[a] + np.arange(volume.shape[axis]) * (volume.spacing[axis] / grid.spacing[axis])
        m = np.floor(f + 0.5).astype(np.intp)
        m[(m < 0) | (m >= grid.shape[axis])] = -1
        maps.append(m)
    return maps[0], maps[1], maps[2]


def _simplify(index: np.ndarray, n: int) -> np.ndarray | None:
    return None if len(index) == n and np.array_equal(index, np.arange(n)) else index


@dataclass
class PaneLayout:
    """How one volume's pane maps to display pixels (and its overlays to theirs)."""

    axis: str
    shape: tuple[int, int]            # display (rows, cols)
    pixel_mm: float                   # size of a display pixel (square)
    src_rows: np.ndarray              # display row -> source row (superior up for coronal/sagittal)
    src_cols: np.ndarray
    raw_rows: np.ndarray | None       # display row -> row of the raw array slice (None: identity)
    raw_cols: np.ndarray | None
    ovl_slice: np.ndarray | None = None  # volume slice index -> overlay slice index (-1 outside)
    ovl_rows: np.ndarray | None = None
    ovl_cols: np.ndarray | None = None

    def display_of(self, src_row: int, src_col: int) -> tuple[int | None, int | None]:
        """Display pixel at the centre of the block showing source pixel ``(src_row, src_col)``."""
        def centre(table: np.ndarray, value: int) -> int | None:
            lo, hi = np.searchsorted(table, value, "left"), np.searchsorted(table, value, "right")
            return None if lo == hi else int((lo + hi - 1) // 2)
        return centre(self.src_rows, src_row), centre(self.src_cols, src_col)


@dataclass
class DisplayVolume:
    """A volume ready for display: reoriented to LPS, with a fixed window if it has its own."""

    name: str
    volume: Volume
    window: HUWindow | None = None
    overlay_maps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # None: same grid
    overlay_shape: tuple[int, int, int] | None = None  # None: no overlay drawn on this volume
    _layouts: dict[str, PaneLayout] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        dz, dy, dx = self.volume.spacing
        self._to_lps = self.volume.direction @ np.diag([dx, dy, dz])
        self._from_lps = np.linalg.inv(self._to_lps)

    @property
    def has_overlay(self) -> bool:
        return self.overlay_shape is not None

    def index_float(self, position_mm: np.ndarray) -> np.ndarray:
        """Continuous ``(k, j, i)`` index of an LPS position."""
        return (self._from_lps @ (np.asarray(position_mm) - np.asarray(self.volume.origin)))[::-1]

    def index_of(self, position_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest voxel ``(k, j, i)`` (clipped) and, per axis,
        whether the position lies inside the volume."""
        f = self.index_float(position_mm)
        shape = np.array(self.volume.shape)
        inside = (f >= -0.5) & (f < shape - 0.5)
        return np.clip(np.floor(f + 0.5).astype(int), 0, shape - 1), inside

    def position_of(self, index_kji: Sequence[float]) -> np.ndarray:
        """LPS position of a (possibly fractional) ``(k, j, i)`` index."""
        return np.asarray(self.volume.origin) + self._to_lps @ np.asarray(index_kji, dtype=np.float64)[::-1]

    def centre_mm(self) -> np.ndarray:
        return self.position_of([(n - 1) / 2 for n in self.volume.shape])

    def layout(self, axis: str) -> PaneLayout:
        if axis not in self._layouts:
            self._layouts[axis] = _pane_layout(self, axis)
        return self._layouts[axis]


def _pane_layout(dv: DisplayVolume, axis: str) -> PaneLayout:
    nz, ny, nx = dv.volume.shape
    rows_n, cols_n = {"axial": (ny, nx), "coronal": (nz, nx), "sagittal": (nz, ny)}[axis]
    rows_mm, cols_mm = plane_spacing_mm(axis, dv.volume.spacing)
    target = aspect_target_mm((rows_n, cols_n), (rows_mm, cols_mm))
    src_rows = aspect_index_map(rows_n, rows_mm, target)
    src_cols = aspect_index_map(cols_n, cols_mm, target)
    raw_rows = src_rows if axis == "axial" else nz - 1 - src_rows  # superior up
    layout = PaneLayout(axis, (len(src_rows), len(src_cols)), target, src_rows, src_cols,
                        _simplify(raw_rows, rows_n), _simplify(src_cols, cols_n))
    if dv.has_overlay:
        mk, mj, mi = dv.overlay_maps or (np.arange(nz), np.arange(ny), np.arange(nx))
        slice_map, row_map, col_map = {
            "axial": (mk, mj, mi),
            "coronal": (mj, mk, mi),
            "sagittal": (mi, mk, mj),
        }[axis]
        oz, oy, ox = dv.overlay_shape
        layout.ovl_slice = slice_map
        layout.ovl_rows = _simplify(row_map[raw_rows], {"axial": oy}.get(axis, oz))
        layout.ovl_cols = _simplify(col_map[src_cols], {"sagittal": oy}.get(axis, ox))
    return layout


@dataclass
class ViewerState:
    """Everything a pane depends on: volumes, the shared LPS position and window, overlay settings."""

    volumes: list[DisplayVolume]
    position_mm: np.ndarray
    window: HUWindow
    labels: LabelSet | None = None            # on the grid of the volumes with has_overlay (reoriented)
    dose_gy: np.ndarray | None = None         # same grid as the labels
    show_labels: bool = True
    label_opacity: float = 0.4
    label_outline: bool = False               # outlines instead of filled labels
    show_dose: bool = True
    show_isodose: bool = True
    dose_opacity: float = 0.35
    dose_max_gy: float = 1.0
    dose_threshold_fraction: float = 0.1
    isodose_levels_gy: tuple[float, ...] = ()
    dose_cmap: str = "turbo"
    show_crosshair: bool = True
    crosshair_color: tuple[int, int, int] = (240, 228, 66)  # Okabe-Ito yellow
    crosshair_gap: float = 0.012  # half-width of the hole at the crossing, as a fraction of the pane
    _cache: dict = field(default_factory=dict, repr=False)

    def overlay_key(self) -> tuple:
        return (self.show_labels and self.labels is not None, self.label_opacity, self.label_outline,
                self.show_dose and self.dose_gy is not None, self.show_isodose and self.dose_gy is not None,
                self.dose_opacity, self.dose_max_gy, self.dose_threshold_fraction,
                tuple(self.isodose_levels_gy), self.dose_cmap)


def slice_index(state: ViewerState, axis: str, volume: int = 0) -> int | None:
    """Index of the slice a pane shows (``None`` when the position lies outside that volume)."""
    kji, inside = state.volumes[volume].index_of(state.position_mm)
    a = AXES.index(axis)
    return int(kji[a]) if inside[a] else None


def crosshair_pixel(state: ViewerState, axis: str, volume: int = 0) -> tuple[int | None, int | None]:
    """Display ``(row, col)`` of the current position in a pane (``None`` where it lies outside)."""
    dv = state.volumes[volume]
    kji, inside = dv.index_of(state.position_mm)
    k, j, i = (int(v) for v in kji)
    nz = dv.volume.shape[0]
    src, ok = {
        "axial": ((j, i), (inside[1], inside[2])),
        "coronal": ((nz - 1 - k, i), (inside[0], inside[2])),
        "sagittal": ((nz - 1 - k, j), (inside[0], inside[1])),
    }[axis]
    row, col = dv.layout(axis).display_of(*src)
    return (row if ok[0] else None), (col if ok[1] else None)


def position_from_click(
    state: ViewerState, axis: str, volume: int, frac_x: float, frac_y: float
) -> np.ndarray:
    """The LPS position a click at fractions ``(frac_x, frac_y)`` of a displayed pane points to; the
    coordinate along the pane's normal is kept."""
    dv = state.volumes[volume]
    layout = dv.layout(axis)
    d_row = min(max(int(np.floor(frac_y * layout.shape[0])), 0), layout.shape[0] - 1)
    d_col = min(max(int(np.floor(frac_x * layout.shape[1])), 0), layout.shape[1] - 1)
    row, col = int(layout.src_rows[d_row]), int(layout.src_cols[d_col])
    kji = dv.index_float(state.position_mm)
    nz = dv.volume.shape[0]
    if axis == "axial":
        kji[1], kji[2] = row, col
    elif axis == "coronal":
        kji[0], kji[2] = nz - 1 - row, col
    else:
        kji[0], kji[1] = nz - 1 - row, col
    return dv.position_of(kji)


def probe(state: ViewerState) -> list[dict[str, Any]]:
    """Per volume at the current position: voxel index, HU, label names and dose there."""
    rows = []
    for dv in state.volumes:
        kji, inside = dv.index_of(state.position_mm)
        row: dict[str, Any] = {
            "volume": dv.name,
            "index_kji": tuple(int(v) for v in kji),
            "inside": bool(inside.all()),
        }
        row["hu"] = float(dv.volume.array[tuple(kji)]) if inside.all() else None
        if dv.has_overlay and inside.all():
            o = tuple(int(m[v]) if dv.overlay_maps else int(v) for m, v in
                      zip(dv.overlay_maps or (None,) * 3, kji, strict=True))
            if min(o) >= 0:
                row["labels"] = state.labels.pick(state.labels.array[o]) if state.labels is not None else []
                row["dose_gy"] = float(state.dose_gy[o]) if state.dose_gy is not None else None
        rows.append(row)
    return rows
