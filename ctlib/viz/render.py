"""Pure-numpy rendering of the slice viewer's panes: windowing, overlays, crosshair.

Every function here works on one 2-D slice and returns (or fills in place) an ``(H, W, 3)`` uint8 RGB
image; nothing calls matplotlib per frame (a colormap is sampled once into a 256 x 3 LUT). Which
voxels a pane shows, in which orientation and at which physical aspect, is ``ctlib.viz.view_state``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ctlib.viz.view_state import (
    AXES,
    ViewerState,
    aspect_index_map,
    aspect_target_mm,
    crosshair_pixel,
    slice_index,
)

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


def labels_over_gray(
    gray: np.ndarray, labels_slice: np.ndarray, lut_rgba: np.ndarray, opacity: float
) -> np.ndarray:
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


def blend_labels(
    rgb: np.ndarray, labels_slice: np.ndarray, lut_rgba: np.ndarray, opacity: float = 1.0
) -> np.ndarray:
    """Alpha-blend a label map into ``rgb`` in place: label ``k`` gets colour ``lut_rgba[k, :3]`` with
    alpha ``lut_rgba[k, 3] / 255 * opacity``; label 0 is background (untouched)."""
    mask = labels_slice > 0
    if opacity > 0 and mask.any():
        ids = labels_slice[mask]
        lut = np.asarray(lut_rgba, dtype=np.float32)
        _blend(rgb, mask, lut[ids, :3], lut[ids, 3:4] * np.float32(opacity / 255.0))
    return rgb


def blend_masks(
    rgb: np.ndarray, bits_slice: np.ndarray, lut_rgba: np.ndarray, opacity: float = 1.0
) -> np.ndarray:
    """Alpha-blend bit-packed overlapping masks in place, bit 0 first (``LabelSet`` mode ``"bits"``)."""
    if opacity <= 0:
        return rgb
    for bit in range(len(lut_rgba)):
        mask = (bits_slice >> bits_slice.dtype.type(bit)) & 1 > 0
        if mask.any():
            color = np.asarray(lut_rgba[bit, :3], dtype=np.float32)
            _blend(rgb, mask, color, float(lut_rgba[bit, 3]) / 255.0 * opacity)
    return rgb


def label_outlines(
    rgb: np.ndarray, labels_slice: np.ndarray, lut_rgba: np.ndarray, mode: str = "ids"
) -> np.ndarray:
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
    """Dose colour wash in place: colormap of ``dose / max_gy`` blended
    where dose >= threshold_fraction * max_gy."""
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


def resample_for_aspect(image: np.ndarray, row_spacing_mm: float, col_spacing_mm: float) -> np.ndarray:
    """Repeat rows or columns (nearest neighbour) so that displayed pixels are square in mm."""
    target = aspect_target_mm(image.shape[:2], (row_spacing_mm, col_spacing_mm))
    rows = aspect_index_map(image.shape[0], row_spacing_mm, target)
    cols = aspect_index_map(image.shape[1], col_spacing_mm, target)
    return image[rows][:, cols]


def raw_plane(array: np.ndarray, axis: str, index: int) -> np.ndarray:
    """The raw slice of a ``(z, y, x)`` array: ``[k]``, ``[:, j, :]`` or ``[:, :, i]`` (no flip)."""
    return (
        array[index] if axis == "axial" else array[:, index, :] if axis == "coronal" else array[:, :, index]
    )


def _take(plane: np.ndarray, rows: np.ndarray | None, cols: np.ndarray | None) -> np.ndarray:
    """``plane[rows][:, cols]`` with ``None`` as identity and index -1 giving 0 (outside the grid)."""
    out = plane if rows is None else plane[np.maximum(rows, 0)]
    out = out if cols is None else out[:, np.maximum(cols, 0)]
    if rows is not None and rows.min() < 0:
        out[rows < 0] = 0  # fancy indexing copied, so the source is untouched
    if cols is not None and cols.min() < 0:
        out[:, cols < 0] = 0
    return out


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


def render_pane_rgba(
    state: ViewerState, axis: str, volume: int = 0, crosshair: bool | None = None
) -> np.ndarray:
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
