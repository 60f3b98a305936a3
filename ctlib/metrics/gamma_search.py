"""The gamma search of ``ctlib.metrics.gamma``: pymedphys' offsets (Wendling et al., Med Phys 34:1647, 2007),
grouped for a vectorized, exact minimum over them.

Offsets lie on spheres (circles in 2D) of radius 0, DTA / interp_fraction, 2 DTA / interp_fraction, ... up
to DTA * max_gamma, each sampled so that no gap between points exceeds DTA / interp_fraction, with a shell
forced at exactly the DTA. Offset 0 (the voxel itself) is one gather; the rest are visited in bands of
``shells_per_band`` radii, nearest first, and a voxel leaves the search once its running minimum of
gamma^2 is at most the band's smallest (|s| / DTA)^2 (pymedphys' stopping rule). Within a band, offsets
are grouped by the grid cell they fall in: the trilinear values at a group's M offsets are a fixed
(M, 2^ndim) weight matrix times the cell's corner doses, so the inner loop is a matrix product, a square,
an add and a column minimum, in blocks small enough to stay in cache (``CACHE_ELEMENTS``). The corner
doses of all the band's cells are gathered once per voxel (one box of lattice points), and a lower bound
of gamma^2 per cell comes from the box's running minima and maxima along each axis (interpolated values
lie between a cell's corner extremes): a voxel skips a cell that cannot beat its running minimum. No
offset that could lower a voxel's gamma is skipped. On CPU, ``min_gamma2`` splits the voxels over worker
threads, each running torch with one intra-op thread (the caller sets that count).
"""

from __future__ import annotations

import functools
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

OFF_GRID_GY = 1.0e10  # dose put around the evaluated grid: an offset that reaches it never agrees
CACHE_ELEMENTS = 2**17  # candidate (offset, voxel) values computed at a time: 512 KiB of float32, in L2
# each worker thread repeats the per-group Python work (under the GIL): on 2 cores, 8 workers took 1.5x the
# CPU time of one; so one worker per 16k voxels at least, and 8 at most
MIN_VOXELS_PER_THREAD = 16384
MAX_THREADS = 8


def shell_distances_mm(distance_mm: float, max_gamma: float, interp_fraction: int) -> np.ndarray:
    """Search radii of pymedphys' gamma loop: steps of DTA / interp_fraction, a forced shell at DTA,
    up to DTA * max_gamma."""
    step = distance_mm / interp_fraction
    max_distance = distance_mm * max_gamma
    forced = [distance_mm]
    radii, radius = [], 0.0
    while radius <= max_distance:
        radii.append(radius)
        radius += max(radius / interp_fraction / max_gamma, step)  # pymedphys' step rule (== step here)
        if forced and radius >= forced[0]:
            radius = forced.pop(0)
    return np.asarray(radii)


def shell_points_mm(radius_mm: float, step_mm: float, ndim: int) -> np.ndarray:
    """``(P, ndim)`` points on a sphere (3D) or circle (2D) of the radius, no gap wider than the step
    (pymedphys' shells: rings of elevation, each sampled like ``np.linspace(0, 2 pi, count + 1)[:-1]``)."""
    if ndim == 2:
        count = int(np.ceil(2 * np.pi * radius_mm / step_mm)) + 1
        theta = np.arange(count) * (2 * np.pi / count)  # linspace's own arithmetic: same floats
        return np.stack([radius_mm * np.cos(theta), radius_mm * np.sin(theta)], axis=1)
    rows = int(np.ceil(np.pi * radius_mm / step_mm)) + 1
    elevation = np.linspace(0, np.pi, rows)
    counts = (np.ceil(2 * np.pi * radius_mm * np.sin(elevation) / step_mm) + 1).astype(int)
    row = np.repeat(np.arange(rows), counts)
    position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    azimuth = position * (2 * np.pi / counts[row])
    ring = radius_mm * np.sin(elevation)[row]
    height = radius_mm * np.cos(elevation)[row]
    return np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), height], axis=1)


@dataclass(frozen=True)
class _CellGroup:
    """The offsets of one band that fall in one grid cell: rows ``start:stop`` of the band's arrays."""

    cell: int  # the cell's row in its band's (cells, voxels) bound table (C order over the box's cells)
    start: int
    stop: int
    nearest2: float  # (|s| / DTA)^2 of its nearest offset


@dataclass(frozen=True)
class _Band:
    """Offsets of ``shells_per_band`` shells, sorted by cell, then by distance."""

    nearest2: float  # smallest (|s| / DTA)^2 in the band: a voxel whose gamma^2 is at most this is done
    box_low: tuple[int, ...]  # voxel offset of the box's lowest lattice point
    box_shape: tuple[int, ...]  # lattice points per axis of the box holding every corner of the band's cells
    weights: np.ndarray  # (M, 2^ndim) float32 interpolation weights of the cells' corners
    distance2_column: np.ndarray  # (M, 1) float32 (|s| / DTA)^2, added to the (M, n) squared dose terms
    rows: np.ndarray  # (G, 2^ndim) each group's corners' rows in the box of lattice points
    groups: tuple[_CellGroup, ...]  # by nearest offset


@functools.lru_cache(maxsize=32)
def search_plan(
    spacing_mm: tuple[float, ...],
    distance_mm: float,
    max_gamma: float,
    interp_fraction: int,
    shells_per_band: int,
) -> tuple[tuple[_Band, ...], np.ndarray, np.ndarray]:
    """Offsets in bands of ``shells_per_band`` shells (all but radius 0), grouped by grid cell; the padding
    (low, high) per axis."""
    ndim = len(spacing_mm)
    step = distance_mm / interp_fraction
    radii = shell_distances_mm(distance_mm, max_gamma, interp_fraction)[1:]  # radius 0: see _search
    corners = np.asarray(list(itertools.product((0, 1), repeat=ndim)))  # (K, ndim)
    bands, lowest, highest = [], np.zeros(ndim, int), np.zeros(ndim, int)
    for first in range(0, len(radii), shells_per_band):
        offsets_mm = np.concatenate(
            [shell_points_mm(r, step, ndim) for r in radii[first : first + shells_per_band]]
        )
        distance2 = np.sum(offsets_mm**2, axis=1) / distance_mm**2
        # rounding noise (cos(pi / 2) = 6e-17) would give float32 weights ~1e-48: denormals, 100x slower to
        # multiply
        voxels = np.round(offsets_mm / np.asarray(spacing_mm), 9)
        cells = np.floor(voxels).astype(int)
        low, high = cells.min(0), cells.max(0) + 1  # the box of lattice points: corners low .. high
        lowest, highest = np.minimum(lowest, low), np.maximum(highest, high)
        box_shape, cell_shape = tuple(high - low + 1), tuple(high - low)
        keys = np.ravel_multi_index(tuple((cells - low).T), cell_shape)  # one integer per cell
        order = np.lexsort((distance2, keys))  # by cell, then by distance
        keys, cells, distance2 = keys[order], cells[order], distance2[order]
        fraction = voxels[order] - cells
        # weight of corner c = prod over axes of (f if c == 1 else 1 - f)
        weights = functools.reduce(np.multiply, [
            np.where(corners[:, axis] == 1, fraction[:, axis, None], 1.0 - fraction[:, axis, None])
            for axis in range(ndim)
        ]).astype(np.float32)  # (M, K)
        starts = np.flatnonzero(np.diff(keys, prepend=-1))
        stops = np.append(starts[1:], len(keys))
        rows = np.ravel_multi_index(tuple((cells[starts][:, None, :] - low + corners).transpose(2, 0, 1)),
                                    box_shape)  # (G, K)
        groups = [_CellGroup(int(keys[a]), int(a), int(b), float(distance2[a]))
                  for a, b in zip(starts, stops, strict=True)]
        order = sorted(range(len(groups)), key=lambda i: groups[i].nearest2)
        bands.append(_Band(float(distance2.min()), tuple(int(v) for v in low), box_shape, weights,
                           distance2[:, None].astype(np.float32), rows[order],
                           tuple(groups[i] for i in order)))
    return tuple(bands), -lowest, highest


def min_gamma2(
    ref: torch.Tensor,
    ev: torch.Tensor,
    evaluated: torch.Tensor,
    plan: tuple[tuple[_Band, ...], np.ndarray, np.ndarray],
    tolerance_gy: float,
    chunk_elements: int,
    threads: int,
    pass_only: bool = False,
) -> torch.Tensor:
    """``(N,)`` gamma^2 of the voxels at flat indices ``evaluated``, minimum over the plan's offsets; on
    ``threads`` worker threads, each searching every ``threads``-th voxel. ``pass_only``: only decide
    gamma^2 <= 1 (``_search``)."""
    bands, pad_low, pad_high = plan
    device = ref.device
    # F.pad lists (low, high) pairs from the last axis to the first
    pad = [int(v) for axis in reversed(range(ref.ndim)) for v in (pad_low[axis], pad_high[axis])]
    padded = torch.nn.functional.pad(ev, pad, value=OFF_GRID_GY)
    flat, strides = padded.reshape(-1), np.asarray(padded.stride())
    base = torch.zeros_like(evaluated)  # the voxels' flat indices in the padded volume
    for axis, size in enumerate(ref.shape):
        coordinate = evaluated // math.prod(ref.shape[axis + 1 :]) % size
        base += (coordinate + int(pad_low[axis])) * int(strides[axis])
    ref_values = ref.reshape(-1).index_select(0, evaluated)
    tables = [_BandTensors.of(band, strides, device) for band in bands]
    parts = max(1, min(threads, MAX_THREADS, ref_values.numel() // MIN_VOXELS_PER_THREAD))
    if device.type != "cpu" or parts == 1:
        return _search(flat, base, ref_values, 1.0 / tolerance_gy, bands, tables, chunk_elements, pass_only)

    def search_part(part: int) -> torch.Tensor:
        # a new thread's OpenMP / MKL state starts at the machine's core count, not torch's setting: without
        # this, its first matrix products spin on threads it should not have
        torch.set_num_threads(1)
        return _search(flat, base[part::parts].contiguous(), ref_values[part::parts].contiguous(),
                       1.0 / tolerance_gy, bands, tables, chunk_elements, pass_only)

    with ThreadPoolExecutor(parts, thread_name_prefix="gamma") as pool:
        found = list(pool.map(search_part, range(parts)))
    gamma2 = torch.empty_like(ref_values)
    for part, values in enumerate(found):
        gamma2[part::parts] = values
    return gamma2


@dataclass(frozen=True)
class _BandTensors:
    """A band's plan as tensors on the search device."""

    box_shifts: torch.Tensor  # (U,) flat offsets of the box's lattice points in the padded volume
    weights: torch.Tensor  # (M, K)
    distance2_column: torch.Tensor  # (M, 1)
    rows: torch.Tensor  # (G, K)

    @staticmethod
    def of(band: _Band, strides: np.ndarray, device: torch.device) -> _BandTensors:
        lattice = np.stack(np.meshgrid(*[np.arange(n) for n in band.box_shape], indexing="ij"), -1)
        shifts = ((lattice.reshape(-1, len(band.box_shape)) + np.asarray(band.box_low)) * strides).sum(1)
        return _BandTensors(*(torch.as_tensor(a, device=device)
                              for a in (shifts, band.weights, band.distance2_column, band.rows)))


def _search(
    flat: torch.Tensor,
    base: torch.Tensor,
    ref_values: torch.Tensor,
    inv_tolerance: float,
    bands: tuple[_Band, ...],
    tables: list[_BandTensors],
    chunk_elements: int,
    pass_only: bool,
) -> torch.Tensor:
    """``(n,)`` minimum gamma^2 over the plan's offsets for the voxels at flat positions ``base`` of the
    padded evaluated dose ``flat``, reference doses ``ref_values`` (Gy; ``inv_tolerance`` = 1 / tolerance).

    ``pass_only`` (pymedphys' ``skip_once_passed``): only decide gamma^2 <= 1, exactly: a voxel leaves once
    it passes, the search stops at the DTA (farther offsets add more than 1), and cells that cannot bring
    gamma^2 to 1 are skipped; gamma^2 is then an upper bound <= 1 where the voxel passes, and some value
    above 1 where it fails."""
    # offset 0, the voxel itself: one gather
    gamma2 = (flat.index_select(0, base) - ref_values).mul_(inv_tolerance).square_()
    active = torch.arange(ref_values.numel(), device=flat.device)
    # candidate values: an L2-sized block on CPU; as many as allowed on a GPU (fewer, larger kernels)
    size = min(chunk_elements, CACHE_ELEMENTS) if flat.device.type == "cpu" else chunk_elements
    largest = max(group.stop - group.start for band in bands for group in band.groups)  # one column at least
    buffer = torch.empty(max(size, largest), device=flat.device)
    for band, table in zip(bands, tables, strict=True):
        if pass_only and band.nearest2 > 1:
            break
        # offsets in this and later bands cannot improve the rest (pass-only: nor do voxels that pass)
        active = active[gamma2.index_select(0, active) > max(band.nearest2, 1.0 if pass_only else 0.0)]
        if active.numel() == 0:
            break
        block = max(1, chunk_elements // len(table.box_shifts))  # voxels per gather of (U, block) doses
        for lo in range(0, active.numel(), block):
            index = active[lo : lo + block]
            current = gamma2.index_select(0, index)
            _search_band(flat, base.index_select(0, index), ref_values.index_select(0, index), inv_tolerance,
                         current, band, table, buffer, pass_only)
            gamma2.index_copy_(0, index, current)
    return gamma2


def _search_band(
    flat: torch.Tensor,
    base: torch.Tensor,
    ref_values: torch.Tensor,
    inv_tolerance: float,
    gamma2: torch.Tensor,
    band: _Band,
    table: _BandTensors,
    buffer: torch.Tensor,
    pass_only: bool,
) -> None:
    """Lower ``gamma2`` (``(n,)``, in place) with the offsets of one band, for ``n`` voxels; ``pass_only``:
    only where it can reach 1."""
    n = base.numel()
    # (U, n) evaluated minus reference dose at the box's lattice points, in tolerances
    box = flat.index_select(0, (table.box_shifts[:, None] + base[None, :]).reshape(-1)).view(-1, n)
    box.sub_(ref_values).mul_(inv_tolerance)
    # per cell, the extremes of its corners (running minima / maxima of neighbours along each axis);
    # interpolated values lie between them, so the gap to zero bounds the dose term from below
    low = high = box.view(*band.box_shape, n)
    for axis in range(len(band.box_shape)):
        size = low.shape[axis] - 1
        low = torch.minimum(low.narrow(axis, 0, size), low.narrow(axis, 1, size))
        high = torch.maximum(high.narrow(axis, 0, size), high.narrow(axis, 1, size))
    gap2 = low.clamp_(min=0).sub_(high.clamp_(max=0)).square_().view(-1, n)  # (cells, n)
    for group, rows in zip(band.groups, table.rows, strict=True):
        # a cell whose bound is not below the running minimum cannot lower it (pass-only: nor bring it to 1;
        # the margin keeps offsets at exactly gamma 1)
        limit = gamma2.clamp(max=1.0 + 1e-6) if pass_only else gamma2
        keep = torch.nonzero(gap2[group.cell] < limit - group.nearest2).squeeze(1)
        if keep.numel() == 0:
            continue
        # (K, k) corner doses of the cell, k voxels that can improve
        corner_diff = box.index_select(0, rows).index_select(1, keep)
        current = gamma2.index_select(0, keep)
        weights = table.weights[group.start : group.stop]
        distance2 = table.distance2_column[group.start : group.stop]
        columns = max(1, buffer.numel() // (group.stop - group.start))
        if keep.numel() <= columns:  # one block (the common case): no slicing
            _lower(current, weights, corner_diff, distance2, buffer)
        else:
            for lo in range(0, keep.numel(), columns):
                hi = lo + columns
                _lower(current[lo:hi], weights, corner_diff[:, lo:hi], distance2, buffer)
        gamma2.index_copy_(0, keep, current)


def _lower(
    current: torch.Tensor, weights: torch.Tensor, corner_diff: torch.Tensor, distance2: torch.Tensor,
    buffer: torch.Tensor,
) -> None:
    """``current`` ``(k,)`` lowered (in place) to min over the M offsets of (weights @ corner_diff)^2 +
    distance2: ``weights`` ``(M, K)``, ``corner_diff`` ``(K, k)``, ``distance2`` ``(M, 1)``."""
    candidate = buffer[: weights.shape[0] * current.numel()].view(weights.shape[0], current.numel())
    torch.mm(weights, corner_diff, out=candidate)
    candidate.square_().add_(distance2)  # dose term squared + distance term
    torch.minimum(current, candidate.amin(dim=0), out=current)
