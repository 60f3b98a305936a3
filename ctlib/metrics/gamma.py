"""Gamma index (Low et al., Med Phys 25:656, 1998) in torch, on CPU or CUDA, with pymedphys' search semantics.

For every reference voxel r whose dose is at least the low-dose cutoff,

    gamma(r)^2 = min over offsets s of  ((D_eval(r + s) - D_ref(r)) / (dose_percent % of D_norm))^2
                                        + (|s| / DTA)^2

with D_norm the reference maximum (global gamma) unless ``normalization_gy`` is given. The evaluated dose
is interpolated trilinearly (bilinearly in 2D) at sub-voxel offsets. The offsets are exactly those that
``pymedphys.gamma`` visits (Wendling et al., Med Phys 34:1647, 2007): spheres (circles in 2D) of radius
0, DTA / interp_fraction, 2 DTA / interp_fraction, ... up to DTA * max_gamma, each sampled so that no gap
between points exceeds DTA / interp_fraction, with a shell forced at exactly the DTA. pymedphys stops
searching a voxel once the next radius cannot lower its gamma; the minimum it returns is therefore the
minimum over all these offsets, which is what is computed here, so both agree to float32 rounding.
Points off the grid count as "no agreement" in both; one difference: on the grid's lower faces, a search
point lying in the face plane is on the grid here, while pymedphys' float64 rounding (cos(pi/2) = 6e-17)
can put it just outside, so gamma there can be slightly lower than pymedphys'.

Speed: offsets are grouped by the grid cell they fall in. For one cell, the trilinear values at the
group's M offsets are a fixed (M, 8) weight matrix times the cell's 8 corner doses (one gather for all
voxels), so the inner loop is a matrix product, a square, an add and a column minimum. Groups are
visited in bands of ``shells_per_band`` radii: a voxel leaves the search once its running minimum is
at most the band's smallest (|s| / DTA)^2 (pymedphys' stopping rule), and skips a cell when even the
corner dose nearest its reference dose cannot beat that minimum (interpolated values lie between the
corners' extremes), so no offset that could lower gamma is skipped. Memory is bounded by gathering and
evaluating at most ``chunk_elements`` (corner or offset, voxel) pairs at a time.

Conventions: both doses on the same grid (``(z, y, x)`` or ``(y, x)``, spacing in mm in the same order);
the cutoff is a percentage of the normalization dose and applies to the reference only (as in
pymedphys); gamma above ``max_gamma`` is reported as ``max_gamma``; a voxel passes when gamma <= 1
(Low et al.; decided before capping). The inner loop is many small tensor ops: on a CPU shared with
other jobs, ``torch.set_num_threads(1)`` can be much faster than several threads waiting on each other.
NaN / infinite doses, mismatched shapes or bad options raise ``ValueError`` naming what is wrong.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

OFF_GRID_GY = 1.0e10  # dose put around the evaluated grid: an offset that reaches it never agrees


@dataclass
class GammaResult:
    """Gamma map (NaN where not evaluated; numpy in -> numpy out, tensor in -> tensor out) and pass rate."""

    gamma: np.ndarray | torch.Tensor
    pass_rate_percent: float  # 100 * mean(gamma <= 1) over evaluated voxels; NaN when there are none
    evaluated_voxels: int


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
    (pymedphys' shells)."""
    if ndim == 2:
        count = int(np.ceil(2 * np.pi * radius_mm / step_mm)) + 1
        theta = np.linspace(0, 2 * np.pi, count + 1)[:-1]
        return np.stack([radius_mm * np.cos(theta), radius_mm * np.sin(theta)], axis=1)
    rows = int(np.ceil(np.pi * radius_mm / step_mm)) + 1
    points = []
    for elevation in np.linspace(0, np.pi, rows):
        count = int(np.ceil(2 * np.pi * radius_mm * np.sin(elevation) / step_mm)) + 1
        azimuth = np.linspace(0, 2 * np.pi, count + 1)[:-1]
        ring = radius_mm * np.sin(elevation)
        points.append(np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth),
                                np.full_like(azimuth, radius_mm * np.cos(elevation))], axis=1))
    return np.concatenate(points)


@dataclass(frozen=True)
class _CellGroup:
    cell: tuple[int, ...]  # integer voxel offset of the cell's lower corner
    # (M, 2^ndim) float32 interpolation weights of the cell's corners, offsets by distance
    weights: np.ndarray
    distance2: np.ndarray  # (M,) (|s| / DTA)^2, increasing
    distance2_column: np.ndarray  # (M, 1) the same in float32, added to the (M, n) squared dose terms


@dataclass(frozen=True)
class _Band:
    nearest2: float  # smallest (|s| / DTA)^2 in the band: a voxel whose gamma^2 is at most this is done
    groups: tuple[_CellGroup, ...]


@functools.lru_cache(maxsize=32)
def _search_plan(
    spacing_mm: tuple[float, ...],
    distance_mm: float,
    max_gamma: float,
    interp_fraction: int,
    shells_per_band: int,
) -> tuple[tuple[_Band, ...], np.ndarray, np.ndarray]:
    """Offsets in bands of ``shells_per_band`` shells, grouped by grid cell; the padding
    (low, high) per axis."""
    ndim = len(spacing_mm)
    step = distance_mm / interp_fraction
    radii = shell_distances_mm(distance_mm, max_gamma, interp_fraction)
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
        fraction = voxels - cells
        # weight of corner c = prod over axes of (f if c == 1 else 1 - f)
        weights = np.prod(
            np.where(corners[None, :, :] == 1, fraction[:, None], 1.0 - fraction[:, None]), axis=2
        )
        lowest, highest = np.minimum(lowest, cells.min(0)), np.maximum(highest, cells.max(0) + 1)
        low = cells.min(0)
        # one integer per cell
        keys = np.ravel_multi_index(tuple((cells - low).T), tuple(cells.max(0) - low + 1))
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        order = np.lexsort((distance2, inverse))  # by cell, then by distance
        groups = []
        for cell, members in zip(
            cells[first], np.split(order, np.cumsum(np.bincount(inverse))[:-1]), strict=True
        ):
            groups.append(_CellGroup(tuple(int(v) for v in cell), weights[members].astype(np.float32),
                                     distance2[members], distance2[members, None].astype(np.float32)))
        bands.append(_Band(float(distance2.min()), tuple(sorted(groups, key=lambda g: g.distance2[0]))))
    return tuple(bands), -lowest, highest


def _as_tensor(name: str, dose: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = dose if isinstance(dose, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(dose))
    if tensor.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D (y, x) or 3D (z, y, x) dose, got shape {tuple(tensor.shape)}")
    tensor = tensor.to(device=device, dtype=torch.float32)
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(f"{name} (shape {tuple(tensor.shape)}) holds {bad} NaN or infinite voxels")
    return tensor


def gamma_index(
    reference_dose_gy: np.ndarray | torch.Tensor,
    evaluated_dose_gy: np.ndarray | torch.Tensor,
    spacing_mm: Sequence[float],
    *,
    dose_percent: float = 3.0,
    distance_mm: float = 3.0,
    cutoff_percent: float = 10.0,
    normalization_gy: float | None = None,
    max_gamma: float = 2.0,
    interp_fraction: int = 10,
    device: str | torch.device | None = None,
    chunk_elements: int = 2**20,
    shells_per_band: int = 2,
) -> GammaResult:
    """Global gamma index (Low et al. 1998) of ``evaluated`` against ``reference`` on one grid, with
    pymedphys' search.

    ``spacing_mm`` in the arrays' axis order; ``dose_percent`` of ``normalization_gy`` (default: the reference
    maximum) and ``distance_mm`` are the criteria; voxels whose reference dose is below ``cutoff_percent`` of
    the normalization are not evaluated (NaN). ``interp_fraction`` sets the search step DTA / interp_fraction;
    the search reaches DTA * ``max_gamma``, so the pass rate does not depend on ``max_gamma`` >= 1.
    ``device`` defaults to the reference tensor's (CPU for numpy input).
    """
    if device is None:
        device = reference_dose_gy.device if isinstance(reference_dose_gy, torch.Tensor) else "cpu"
    device = torch.device(device)
    ref = _as_tensor("reference_dose_gy", reference_dose_gy, device)
    ev = _as_tensor("evaluated_dose_gy", evaluated_dose_gy, device)
    if ev.shape != ref.shape:
        raise ValueError(
            f"evaluated_dose_gy has shape {tuple(ev.shape)}, expected the reference's {tuple(ref.shape)}"
        )
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != ref.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing_mm must hold {ref.ndim} positive numbers (one per axis), got {list(spacing_mm)}"
        )
    for name, value in (("dose_percent", dose_percent), ("distance_mm", distance_mm)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value}")
    if not (math.isfinite(max_gamma) and max_gamma >= 1):
        raise ValueError(
            f"max_gamma must be finite and >= 1 (the search must reach the DTA), got {max_gamma}"
        )
    if not (0 <= cutoff_percent < 100):
        raise ValueError(f"cutoff_percent must be in [0, 100), got {cutoff_percent}")
    if int(interp_fraction) != interp_fraction or interp_fraction < 1:
        raise ValueError(f"interp_fraction must be a positive integer, got {interp_fraction}")
    norm_gy = float(ref.max()) if normalization_gy is None else float(normalization_gy)
    if not (math.isfinite(norm_gy) and norm_gy > 0):
        raise ValueError(f"normalization dose must be positive, got {norm_gy} Gy"
                         + (" (the reference dose is zero everywhere)" if normalization_gy is None else ""))

    evaluated = ref >= cutoff_percent / 100.0 * norm_gy
    gamma_map = torch.full(ref.shape, float("nan"), dtype=torch.float32, device=device)
    count = int(evaluated.sum())
    pass_rate = float("nan")
    if count:
        gamma2 = _min_gamma2(
            ref,
            ev,
            evaluated,
            spacing,
            dose_percent / 100.0 * norm_gy,
            float(distance_mm),
            float(max_gamma),
            int(interp_fraction),
            int(chunk_elements),
            int(shells_per_band),
        )
        # before capping, so max_gamma = 1 fails nothing new
        pass_rate = float((gamma2 <= 1).float().mean()) * 100.0
        gamma_map[evaluated] = gamma2.sqrt().clamp_(max=max_gamma)
    if not isinstance(reference_dose_gy, torch.Tensor):
        gamma_map = gamma_map.cpu().numpy()
    return GammaResult(gamma=gamma_map, pass_rate_percent=pass_rate, evaluated_voxels=count)


def _min_gamma2(
    ref: torch.Tensor,
    ev: torch.Tensor,
    evaluated: torch.Tensor,
    spacing: tuple[float, ...],
    tolerance_gy: float,
    distance_mm: float,
    max_gamma: float,
    interp_fraction: int,
    chunk_elements: int,
    shells_per_band: int,
) -> torch.Tensor:
    """``(N,)`` gamma^2 of the evaluated voxels (``torch.nonzero`` order),
    minimum over offsets within DTA * max_gamma."""
    bands, pad_low, pad_high = _search_plan(spacing, distance_mm, max_gamma, interp_fraction, shells_per_band)
    device = ref.device
    # F.pad lists (low, high) pairs from the last axis to the first
    pad = [int(v) for axis in reversed(range(ref.ndim)) for v in (pad_low[axis], pad_high[axis])]
    padded = torch.nn.functional.pad(ev, pad, value=OFF_GRID_GY)
    flat, strides = padded.reshape(-1), np.asarray(padded.stride())
    coords = torch.nonzero(evaluated)  # (N, ndim)
    strides_t = torch.as_tensor(strides, device=device)
    base = ((coords + torch.as_tensor(pad_low, device=device)) * strides_t).sum(1)
    ref_values = ref[evaluated]
    inv_tolerance = 1.0 / tolerance_gy
    corners = np.asarray(list(itertools.product((0, 1), repeat=ref.ndim)))  # (K, ndim)
    gamma2 = torch.full_like(ref_values, float("inf"))
    active = torch.arange(ref_values.numel(), device=device)
    for band in bands:
        # offsets in this and later bands cannot improve the rest
        active = active[gamma2[active] > band.nearest2]
        if active.numel() == 0:
            break
        band_base, band_ref = base.index_select(0, active), ref_values.index_select(0, active)
        band_gamma2 = gamma2.index_select(0, active)
        cells = np.asarray([group.cell for group in band.groups])  # (G, ndim)
        # (G, K)
        shifts = torch.as_tensor(((cells[:, None, :] + corners[None]) * strides).sum(-1), device=device)
        block = max(1, chunk_elements // len(corners))  # voxels per gather of (K, block) corner doses
        for group, group_shifts in zip(band.groups, shifts, strict=True):
            for lo in range(0, active.numel(), block):
                hi = min(lo + block, active.numel())  # slices are views: band_gamma2 is updated in place
                _search_cell(flat, band_base[lo:hi], band_ref[lo:hi], band_gamma2[lo:hi], group, group_shifts,
                             inv_tolerance, chunk_elements)
        gamma2.index_copy_(0, active, band_gamma2)
    return gamma2


def _search_cell(
    flat: torch.Tensor,
    base: torch.Tensor,
    ref_values: torch.Tensor,
    gamma2: torch.Tensor,
    group: _CellGroup,
    shifts: torch.Tensor,
    inv_tolerance: float,
    chunk_elements: int,
) -> None:
    """Lower ``gamma2`` (in place) with the offsets of one cell group;
    ``shifts`` are the corners' flat offsets."""
    nearest2 = float(group.distance2[0])
    index = (shifts[:, None] + base[None, :]).reshape(-1)  # (K * n,), corner-major
    # (D_eval(corner) - D_ref) / tolerance; interpolating it gives the difference, as the weights sum to 1
    corner_diff = flat.index_select(0, index).view(len(shifts), -1).sub_(ref_values).mul_(inv_tolerance)
    # interpolated values lie between the corners' extremes: a lower bound of gamma^2 over the cell
    low, high = torch.aminmax(corner_diff, dim=0)
    gap = low.clamp_(min=0).sub_(high.clamp_(max=0))
    keep = torch.nonzero(gap.square_().add_(nearest2) < gamma2).squeeze(1)
    if keep.numel() == 0:
        return
    corner_diff, current = corner_diff.index_select(1, keep), gamma2.index_select(0, keep)
    count = int(np.searchsorted(group.distance2, float(current.max()), side="left"))  # nearer offsets only
    weights = torch.as_tensor(group.weights[:count], device=flat.device)  # (M, K)
    distance2 = torch.as_tensor(group.distance2_column[:count], device=flat.device)  # (M, 1)
    columns = max(1, chunk_elements // count)
    for lo in range(0, keep.numel(), columns):
        hi = min(lo + columns, keep.numel())
        candidate = torch.mm(weights, corner_diff[:, lo:hi]).square_().add_(distance2)  # (M, n)
        torch.minimum(current[lo:hi], candidate.amin(dim=0), out=current[lo:hi])
    gamma2.index_copy_(0, keep, current)
