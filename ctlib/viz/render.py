"""Pure-numpy rendering of the slice viewer's panes: windowing, overlays, crosshair, physical aspect.

Every function here works on one 2-D slice and returns (or fills in place) an ``(H, W, 3)`` uint8 RGB
image; nothing calls matplotlib per frame (a colormap is sampled once into a 256 x 3 LUT).

Display conventions (volumes are reoriented to LPS once, see ``ctlib.io.orientation``):

- axial pane: ``array[k]``, row 0 anterior, column 0 the patient's right (radiological);
- coronal pane: ``array[:, j, :]`` with superior up, column 0 the patient's right;
- sagittal pane: ``array[:, :, i]`` with superior up, column 0 anterior.

Panes keep the physical aspect ratio by nearest-neighbour repetition of the coarser axis up to the
finer pixel size (a 2.5 mm slice becomes about 3.6 rows of 0.7 mm), so any front-end that shows the
image at a uniform scale shows true proportions, and a click maps back to a voxel exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ctlib.data.windows import HUWindow
from ctlib.io.volume import Volume

if TYPE_CHECKING:
    from ctlib.viz.labels import LabelSet

AXES = ("axial", "coronal", "sagittal")
MAX_PANE_PX = 2048
OUTSIDE_GRAY = 24  # a pane whose slice lies outside the volume (compare grids of unequal extent)


def window_to_uint8(slice_hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear HU window: ``low`` -> 0, ``high`` -> 255, clipped outside, rounded to nearest."""
    if not high > low:
        raise ValueError(f"window needs high > low, got low={low}, high={high}")
    scaled = np.subtract(slice_hu, np.float32(low), dtype=np.float32)
    scaled *= np.float32(255.0 / (high - low))
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 -> ``(H, W, 3)`` uint8 (three channel copies)."""
    rgb = np.empty(gray.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = gray
    rgb[..., 1] = gray
    rgb[..., 2] = gray
    return rgb


def pack_rgba(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 -> ``(...)`` little-endian uint32 RGBA with alpha 255 (PIL's native pixel)."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    return (rgb[..., 0].astype("<u4") | rgb[..., 1].astype("<u4") << 8 | rgb[..., 2].astype("<u4") << 16
            | np.uint32(0xFF000000))


_GRAY_RGBA = pack_rgba(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))


def gray_to_rgba(gray: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 -> ``(H, W, 4)`` uint8 opaque gray, by one table lookup."""
    return np.take(_GRAY_RGBA, gray).view(np.uint8).reshape(gray.shape + (4,))


@functools.lru_cache(maxsize=8)
def _label_gray_table(lut_bytes: bytes, n_labels: int, opacity: float) -> np.ndarray:
    lut = np.frombuffer(lut_bytes, dtype=np.uint8).reshape(n_labels, 4).astype(np.float32)
    alpha = (lut[:, 3:4] * np.float32(opacity / 255.0))[:, None, :]          # (n, 1, 1)
    table = np.arange(256, dtype=np.float32)[None, :, None] * (1.0 - alpha)  # (n, 256, 1): same
    table = table + lut[:, None, :3] * alpha                                  # arithmetic as _blend
    table += 0.5
    table[0] = np.arange(256, dtype=np.float32)[:, None]                     # background: gray
    return pack_rgba(table.astype(np.uint8)).reshape(-1)


def labels_over_gray(gray: np.ndarray, labels_slice: np.ndarray, lut_rgba: np.ndarray, opacity: float) -> np.ndarray:
    """``(H, W, 4)`` uint8: the pixels of ``gray_to_rgb`` + ``blend_labels``, by one lookup in a
    (label, gray) -> RGBA table (about 20x faster than blending the masked pixels)."""
    lut_rgba = np.ascontiguousarray(lut_rgba, dtype=np.uint8)
    table = _label_gray_table(lut_rgba.tobytes(), len(lut_rgba), float(opacity))
    index = labels_slice.astype(np.uint16 if len(lut_rgba) <= 256 else np.uint32) << 8
    index |= gray
    return np.take(table, index).view(np.uint8).reshape(gray.shape + (4,))


@functools.lru_cache(maxsize=16)
def colormap_lut(name: str = "turbo") -> np.ndarray:
    """A matplotlib colormap sampled once into a read-only ``(256, 3)`` uint8 LUT."""
    from matplotlib import colormaps

    lut = np.rint(colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def _blend(rgb: np.ndarray, mask: np.ndarray, colors: np.ndarray, alpha: np.ndarray | float) -> None:
    """``rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colors`` (colors and alpha per masked pixel)."""
    under = rgb[mask].astype(np.float32)
    under *= 1.0 - alpha
    under += colors * alpha
    under += 0.5
    rgb[mask] = under.astype(np.uint8)


def blend_labels(rgb: np.ndarray, labels_slice: np.ndarray, lut_rgba: np.ndarray, opacity: float = 1.0) -> np.ndarray:
    """Alpha-blend a label map into ``rgb`` in place: label ``k`` gets colour ``lut_rgba[k, :3]`` with
    alpha ``lut_rgba[k, 3] / 255 * opacity``; label 0 is background (untouched)."""
    mask = labels_slice > 0
    if opacity > 0 and mask.any():
        ids = labels_slice[mask]
        lut = np.asarray(lut_rgba, dtype=np.float32)
        _blend(rgb, mask, lut[ids, :3], lut[ids, 3:4] * np.float32(opacity / 255.0))
    return rgb


def blend_masks(rgb: np.ndarray, bits_slice: np.ndarray, lut_rgba: np.ndarray, opacity: float = 1.0) -> np.ndarray:
    """Alpha-blend bit-packed overlapping masks in place, bit 0 first (``LabelSet`` mode ``"bits"``)."""
    if opacity <= 0:
        return rgb
    for bit in range(len(lut_rgba)):
        mask = (bits_slice >> bits_slice.dtype.type(bit)) & 1 > 0
        if mask.any():
            color = np.asarray(lut_rgba[bit, :3], dtype=np.float32)
            _blend(rgb, mask, color, float(lut_rgba[bit, 3]) / 255.0 * opacity)
    return rgb


def label_outlines(rgb: np.ndarray, labels_slice: np.ndarray, lut_rgba: np.ndarray, mode: str = "ids") -> np.ndarray:
    """Draw each label's 1-pixel inner boundary in its colour, in place (ids or bit-packed masks)."""
    if mode == "bits":
        for bit in range(len(lut_rgba)):
            rgb[level_boundary((labels_slice >> labels_slice.dtype.type(bit)) & 1 > 0)] = lut_rgba[bit, :3]
        return rgb
    edge = np.zeros(labels_slice.shape, dtype=bool)
    edge[1:] |= labels_slice[1:] != labels_slice[:-1]
    edge[:-1] |= labels_slice[:-1] != labels_slice[1:]
    edge[:, 1:] |= labels_slice[:, 1:] != labels_slice[:, :-1]
    edge[:, :-1] |= labels_slice[:, :-1] != labels_slice[:, 1:]
    edge &= labels_slice > 0
    rgb[edge] = lut_rgba[labels_slice[edge], :3]
    return rgb


def dose_colorwash(
    rgb: np.ndarray,
    dose_slice_gy: np.ndarray,
    max_gy: float,
    alpha: float = 0.35,
    threshold_fraction: float = 0.1,
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """Dose colour wash in place: colormap of ``dose / max_gy`` blended where dose >= threshold_fraction * max_gy."""
    if max_gy <= 0:
        raise ValueError(f"max_gy must be positive, got {max_gy}")
    lut = colormap_lut() if lut is None else lut
    threshold = threshold_fraction * max_gy
    mask = dose_slice_gy >= threshold if threshold > 0 else dose_slice_gy > 0
    if alpha > 0 and mask.any():
        index = np.clip(dose_slice_gy[mask] * np.float32(255.0 / max_gy), 0, 255).astype(np.uint8)
        _blend(rgb, mask, lut[index].astype(np.float32), alpha)
    return rgb


def level_boundary(inside: np.ndarray) -> np.ndarray:
    """Pixels of ``inside`` with at least one 4-neighbour outside (the image border does not count)."""
    edge = np.zeros_like(inside)
    edge[1:] |= inside[1:] & ~inside[:-1]
    edge[:-1] |= inside[:-1] & ~inside[1:]
    edge[:, 1:] |= inside[:, 1:] & ~inside[:, :-1]
    edge[:, :-1] |= inside[:, :-1] & ~inside[:, 1:]
    return edge


def isodose_colors(levels_gy: Sequence[float], max_gy: float, cmap: str = "turbo") -> np.ndarray:
    """``(K, 3)`` uint8: each level coloured like the wash at that dose."""
    index = np.clip(np.asarray(levels_gy, dtype=np.float64) / max_gy * 255, 0, 255).astype(int)
    return colormap_lut(cmap)[index]


def isodose_lines(
    rgb: np.ndarray, dose_slice_gy: np.ndarray, levels_gy: Sequence[float], colors: np.ndarray | Sequence
) -> np.ndarray:
    """Draw each isodose level in place as the 1-pixel inner boundary of ``dose >= level``."""
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(colors) != len(levels_gy):
        raise ValueError(f"isodose_lines: {len(levels_gy)} levels but {len(colors)} colours")
    for level, color in zip(levels_gy, colors, strict=True):
        rgb[level_boundary(dose_slice_gy >= level)] = color
    return rgb


def draw_crosshair(
    rgb: np.ndarray, row: int | None, col: int | None, color: Sequence[int] = (240, 228, 66), gap_px: int = 0,
    width_px: int = 1,
) -> np.ndarray:
    """A horizontal line through ``row`` and a vertical one through ``col`` (``width_px`` thick), in
    place, leaving a square hole of half-width ``gap_px`` around the crossing so the voxel under it
    stays visible; ``None`` (or a value outside the image) skips that line."""
    height, width = rgb.shape[:2]
    has_row = row is not None and 0 <= row < height
    has_col = col is not None and 0 <= col < width
    lo = (width_px - 1) // 2
    hole = None
    if gap_px > 0 and has_row and has_col:
        r0, c0 = max(row - gap_px, 0), max(col - gap_px, 0)
        hole = rgb[r0: row + gap_px + 1, c0: col + gap_px + 1].copy()
    if has_row:
        rgb[max(row - lo, 0): row - lo + width_px] = color
    if has_col:
        rgb[:, max(col - lo, 0): col - lo + width_px] = color
    if hole is not None:
        rgb[r0: r0 + hole.shape[0], c0: c0 + hole.shape[1]] = hole
    return rgb


def aspect_index_map(n: int, spacing_mm: float, target_mm: float) -> np.ndarray:
    """Nearest-neighbour map from display pixels of size ``target_mm`` to the ``n`` source pixels."""
    n_out = max(1, int(round(n * spacing_mm / target_mm)))
    return np.minimum(((np.arange(n_out) + 0.5) * (n / n_out)).astype(np.intp), n - 1)


def aspect_target_mm(shape: tuple[int, int], spacing_mm: tuple[float, float]) -> float:
    """Display pixel size: the finer of the two spacings, coarsened only if a side would pass MAX_PANE_PX."""
    target = min(spacing_mm)
    extent = max(n * s for n, s in zip(shape, spacing_mm, strict=True))
    return max(target, extent / MAX_PANE_PX)


def resample_for_aspect(image: np.ndarray, row_spacing_mm: float, col_spacing_mm: float) -> np.ndarray:
    """Repeat rows or columns (nearest neighbour) so that displayed pixels are square in mm."""
    target = aspect_target_mm(image.shape[:2], (row_spacing_mm, col_spacing_mm))
    rows = aspect_index_map(image.shape[0], row_spacing_mm, target)
    cols = aspect_index_map(image.shape[1], col_spacing_mm, target)
    return image[rows][:, cols]


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
        """Nearest voxel ``(k, j, i)`` (clipped) and, per axis, whether the position lies inside the volume."""
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
    dz, dy, dx = dv.volume.spacing
    rows_n, cols_n, rows_mm, cols_mm = {"axial": (ny, nx, dy, dx), "coronal": (nz, nx, dz, dx),
                                        "sagittal": (nz, ny, dz, dy)}[axis]
    target = aspect_target_mm((rows_n, cols_n), (rows_mm, cols_mm))
    src_rows = aspect_index_map(rows_n, rows_mm, target)
    src_cols = aspect_index_map(cols_n, cols_mm, target)
    raw_rows = src_rows if axis == "axial" else nz - 1 - src_rows  # superior up
    layout = PaneLayout(axis, (len(src_rows), len(src_cols)), target, src_rows, src_cols,
                        _simplify(raw_rows, rows_n), _simplify(src_cols, cols_n))
    if dv.has_overlay:
        mk, mj, mi = dv.overlay_maps or (np.arange(nz), np.arange(ny), np.arange(nx))
        slice_map, row_map, col_map = {"axial": (mk, mj, mi), "coronal": (mj, mk, mi), "sagittal": (mi, mk, mj)}[axis]
        oz, oy, ox = dv.overlay_shape
        layout.ovl_slice = slice_map
        layout.ovl_rows = _simplify(row_map[raw_rows], {"axial": oy}.get(axis, oz))
        layout.ovl_cols = _simplify(col_map[src_cols], {"sagittal": oy}.get(axis, ox))
    return layout


def raw_plane(array: np.ndarray, axis: str, index: int) -> np.ndarray:
    """The raw slice of a ``(z, y, x)`` array: ``[k]``, ``[:, j, :]`` or ``[:, :, i]`` (no flip)."""
    return array[index] if axis == "axial" else array[:, index, :] if axis == "coronal" else array[:, :, index]


def _take(plane: np.ndarray, rows: np.ndarray | None, cols: np.ndarray | None) -> np.ndarray:
    """``plane[rows][:, cols]`` with ``None`` as identity and index -1 giving 0 (outside the grid)."""
    out = plane if rows is None else plane[np.maximum(rows, 0)]
    out = out if cols is None else out[:, np.maximum(cols, 0)]
    if rows is not None and rows.min() < 0:
        out[rows < 0] = 0  # fancy indexing copied, so the source is untouched
    if cols is not None and cols.min() < 0:
        out[:, cols < 0] = 0
    return out


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


class Base(NamedTuple):
    rgba: np.ndarray     # (H, W, 4) uint8: the pane without crosshair
    present: list[int]   # label ids (or bits) in it
    key: tuple           # everything the pixels depend on


def render_base(state: ViewerState, axis: str, volume: int = 0) -> Base:
    """The pane without crosshair (cached on the state), the labels present in it, and its cache key."""
    dv = state.volumes[volume]
    index = slice_index(state, axis, volume)
    window = dv.window or state.window
    key = (index, window.low, window.high, state.overlay_key() if dv.has_overlay else None)
    cached = state._cache.get((volume, axis))
    if cached is not None and cached.key == key:
        return cached
    layout = dv.layout(axis)
    present: list[int] = []
    if index is None:
        rgba = gray_to_rgba(np.full(layout.shape, OUTSIDE_GRAY, dtype=np.uint8))
    else:
        gray = window_to_uint8(raw_plane(dv.volume.array, axis, index), window.low, window.high)
        gray = _take(gray, layout.raw_rows, layout.raw_cols)
        o = int(layout.ovl_slice[index]) if dv.has_overlay else -1
        labels = None
        if o >= 0 and state.show_labels and state.labels is not None:
            labels = _take(raw_plane(state.labels.array, axis, o), layout.ovl_rows, layout.ovl_cols)
            present = state.labels.present(labels)
        lut = state.labels.lut_rgba if labels is not None else None
        if labels is not None and state.labels.mode == "ids" and len(lut) <= 4096 and not state.label_outline:
            rgba = labels_over_gray(gray, labels, lut, state.label_opacity)
        else:
            rgba = gray_to_rgba(gray)
            if labels is not None and state.label_outline:
                label_outlines(rgba[..., :3], labels, lut, state.labels.mode)
            elif labels is not None:
                blend = blend_masks if state.labels.mode == "bits" else blend_labels
                blend(rgba[..., :3], labels, lut, state.label_opacity)
        rgb = rgba[..., :3]
        if o >= 0 and state.dose_gy is not None and (state.show_dose or state.show_isodose):
            dose = _take(raw_plane(state.dose_gy, axis, o), layout.ovl_rows, layout.ovl_cols)
            if state.show_dose:
                dose_colorwash(rgb, dose, state.dose_max_gy, state.dose_opacity,
                               state.dose_threshold_fraction, colormap_lut(state.dose_cmap))
            if state.show_isodose and state.isodose_levels_gy:
                levels = state.isodose_levels_gy
                isodose_lines(rgb, dose, levels, isodose_colors(levels, state.dose_max_gy, state.dose_cmap))
    state._cache[(volume, axis)] = base = Base(rgba, present, key)
    return base


def crosshair_pixel(state: ViewerState, axis: str, volume: int = 0) -> tuple[int | None, int | None]:
    """Display ``(row, col)`` of the current position in a pane (``None`` where it lies outside)."""
    dv = state.volumes[volume]
    kji, inside = dv.index_of(state.position_mm)
    k, j, i = (int(v) for v in kji)
    nz = dv.volume.shape[0]
    src, ok = {"axial": ((j, i), (inside[1], inside[2])), "coronal": ((nz - 1 - k, i), (inside[0], inside[2])),
               "sagittal": ((nz - 1 - k, j), (inside[0], inside[1]))}[axis]
    row, col = dv.layout(axis).display_of(*src)
    return (row if ok[0] else None), (col if ok[1] else None)


def render_pane_rgba(state: ViewerState, axis: str, volume: int = 0, crosshair: bool | None = None) -> np.ndarray:
    """``(H, W, 4)`` uint8 of the ``axis`` pane of volume number ``volume`` (alpha 255): what is encoded."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    rgba = render_base(state, axis, volume).rgba.copy()
    if state.show_crosshair if crosshair is None else crosshair:
        row, col = crosshair_pixel(state, axis, volume)
        size = max(rgba.shape[:2])
        # 2-pixel lines on panes larger than ~400 px survive the browser's downscaling to a notebook cell.
        draw_crosshair(rgba[..., :3], row, col, state.crosshair_color,
                       gap_px=int(round(state.crosshair_gap * size)), width_px=1 + size // 400)
    return rgba


def render_pane(state: ViewerState, axis: str, volume: int = 0, crosshair: bool | None = None) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` of the ``axis`` pane of volume number ``volume`` at the current state."""
    return render_pane_rgba(state, axis, volume, crosshair)[..., :3]


def position_from_click(state: ViewerState, axis: str, volume: int, frac_x: float, frac_y: float) -> np.ndarray:
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
