"""The grid a dose model predicts on, and resampling between it and a CT's grid.

The dose model was trained on OpenKBP grids: axes x to the patient's left, y posterior, z inferior
(``ctlib.io.openkbp.OPENKBP_DIRECTION``), about 2.5 mm slices and 3.9 mm in-plane. A DICOM CT is brought to
such a grid (``covering_grid``: the training spacing, centred on the CT's voxel centres, enlarged to at least
the sliding-window size and to a multiple of what the network needs), sampled there (``resample``: CT
trilinear, masks nearest), predicted, and the dose sampled back onto the CT (trilinear).

Each CT voxel stands for its footprint: a point within half a voxel outside the first or last voxel centre
takes that voxel's value (so a single 3 mm slice covers 3 mm), farther points take ``fill`` (air for CT,
False for masks, 0 Gy for dose). ``pad_to`` / ``crop`` do the same enlargement on a grid that is already the
model's (OpenKBP patients), with no resampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ctlib.io.openkbp import OPENKBP_DIRECTION
from ctlib.io.volume import Volume


def padded_shape(shape: Sequence[int], multiple: int, min_shape: Sequence[int]) -> tuple[int, int, int]:
    """Each size raised to at least ``min_shape`` and then to a multiple of ``multiple``."""
    return tuple(int(math.ceil(max(int(n), int(m), 1) / multiple) * multiple)  # type: ignore[return-value]
                 for n, m in zip(shape, min_shape, strict=True))


def covering_grid(
    ct: Volume,
    spacing_mm: Sequence[float],
    *,
    multiple: int = 1,
    min_shape: Sequence[int] = (1, 1, 1),
    direction: np.ndarray = OPENKBP_DIRECTION,
    within: np.ndarray | None = None,
) -> Volume:
    """A grid with ``spacing_mm`` ``(dz, dy, dx)`` and ``direction`` covering every voxel centre of ``ct``
    (with ``within``, a mask on ``ct``'s grid: only the bounding box of its voxels, one voxel wider), centred
    on them, of ``padded_shape``; its array is zeros (``(z, y, x)``)."""
    direction = np.asarray(direction, dtype=np.float64)
    box = [(0, n - 1) for n in ct.shape]
    if within is not None and np.any(within):
        nonzero = np.nonzero(np.asarray(within))
        box = [(max(int(ix.min()) - 1, 0), min(int(ix.max()) + 1, n - 1))
               for ix, n in zip(nonzero, ct.shape, strict=True)]
    (z0, z1), (y0, y1), (x0, x1) = box
    corners = np.array([[i, j, k, 1.0] for i in (x0, x1) for j in (y0, y1) for k in (z0, z1)])
    lps = corners @ ct.index_to_lps()[:3].T  # (8, 3)
    along = lps @ direction  # coordinates along the new grid's x, y, z axes
    lo, hi = along.min(0), along.max(0)
    step = np.array([spacing_mm[2], spacing_mm[1], spacing_mm[0]], dtype=np.float64)  # x, y, z
    counts = np.floor((hi - lo) / step + 1e-6).astype(int) + 1
    counts = np.array(padded_shape(counts[::-1], multiple, min_shape)[::-1])  # back to x, y, z order
    origin_along = (lo + hi) / 2 - (counts - 1) / 2 * step
    return Volume(array=np.zeros(tuple(counts[::-1]), dtype=np.float32),
                  spacing=tuple(float(s) for s in spacing_mm), origin=tuple(direction @ origin_along),
                  direction=direction, meta={"grid": "dose model"})


def _footprint(index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices moved onto the edge voxel within half a voxel outside it, and where they fall inside."""
    inside = (index >= -0.5) & (index <= n - 0.5)
    return np.clip(index, 0, n - 1), inside


def resample(
    array: np.ndarray, source: Volume, target: Volume, *, order: int, fill: float = 0.0
) -> np.ndarray:
    """``array`` ``(..., z, y, x)`` on ``source``'s grid sampled at the voxel centres of ``target``:
    ``order`` 1 trilinear, 0 nearest (any dtype; leading axes, e.g. stacked masks, sampled alike).

    Slice by slice of ``target``, so memory stays bounded on 512 x 512 x 300 grids.
    """
    if order not in (0, 1):
        raise ValueError(f"resample: order must be 0 (nearest) or 1 (linear), got {order}")
    array = np.asarray(array)
    if array.shape[-3:] != source.shape:
        raise ValueError(f"resample: array {array.shape} is not on the source grid {source.shape}")
    to_source = np.linalg.inv(source.index_to_lps()) @ target.index_to_lps()
    nz, ny, nx = target.shape
    jj, ii = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    lead = array.shape[:-3]
    flat = array.reshape((-1, *source.shape))
    out = np.empty((flat.shape[0], nz, ny, nx), dtype=array.dtype if order == 0 else np.float32)
    sizes = source.shape[::-1]  # x, y, z counts
    for k in range(nz):
        points = to_source[:3, 0, None, None] * ii + to_source[:3, 1, None, None] * jj + \
            to_source[:3, 2, None, None] * k + to_source[:3, 3, None, None]  # (3, ny, nx): x, y, z index
        clamped, inside = zip(*(_footprint(points[a], sizes[a]) for a in range(3)), strict=True)
        valid = inside[0] & inside[1] & inside[2]
        ci, cj, ck = clamped
        for c in range(flat.shape[0]):
            if order == 0:
                values = flat[c][np.rint(ck).astype(int), np.rint(cj).astype(int), np.rint(ci).astype(int)]
            else:
                values = ndimage.map_coordinates(flat[c].astype(np.float32, copy=False), [ck, cj, ci],
                                                 order=1, mode="nearest")
            out[c, k] = np.where(valid, values, fill)
    return out.reshape((*lead, nz, ny, nx))


def pad_to(
    array: np.ndarray, shape: Sequence[int], fill: float | bool
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``array`` ``(..., z, y, x)`` padded with ``fill`` (centred) to ``shape``, and the slices that crop it
    back."""
    before = [(int(s) - n) // 2 for s, n in zip(shape, array.shape[-3:], strict=True)]
    widths = [(0, 0)] * (array.ndim - 3) + [(b, int(s) - n - b) for b, s, n in
                                              zip(before, shape, array.shape[-3:], strict=True)]
    if any(b < 0 or a < 0 for b, a in widths):
        raise ValueError(f"pad_to: shape {tuple(shape)} is smaller than the array's {array.shape[-3:]}")
    window = tuple(slice(b, b + n) for b, n in zip(before, array.shape[-3:], strict=True))
    return np.pad(array, widths, constant_values=fill), window


def padded_volume(volume: Volume, shape: Sequence[int], fill: float) -> tuple[Volume, tuple[slice, ...]]:
    """``volume`` padded like ``pad_to``, with its origin moved so the original voxels keep their place."""
    array, window = pad_to(volume.array, shape, fill)
    shift = np.array([window[2].start, window[1].start, window[0].start], dtype=np.float64)  # x, y, z voxels
    origin = volume.index_to_lps()[:3] @ np.append(-shift, 1.0)
    return volume.with_array(array, origin=tuple(origin)), window
