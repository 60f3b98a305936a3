"""Thick-slice simulation from thin CT, thick/thin training pairs, and the classic z-upsamplers.

Index conventions, with thin slices ``t = 0..n-1`` at spacing ``dz`` and an integer ``factor``:

- ``mode="slab"``: thick slice ``k`` is the mean of the ``slab`` thin slices
  ``offset + k * factor + [0, slab)`` (a box slice-sensitivity profile of width ``slab * dz``). It sits
  at the centre of its slab, thin index ``offset + k * factor + (slab - 1) / 2``, so its LPS position is
  the mean of the positions of the thin slices it averages; ``slice_thickness_mm = slab * dz``.
- ``mode="decimate"``: thick slice ``k`` is thin slice ``offset + k * factor`` (thickness unchanged).

Thick spacing is ``factor * dz`` in both modes. A ``ThickThinPair`` crops the thin volume to the slices
the thick ones cover: with slabs, the ``n_thick * factor`` slices ``offset + [0, n_thick * factor)``, so
thick slice ``k`` owns the block ``k * factor + [0, factor)`` of the crop; with decimation, every observed
slice is kept (``n_thick = floor((n - 1 - offset) / factor) + 1``) and the crop ends at the last one
(``(n_thick - 1) * factor + 1`` slices), so no thin slice of the crop lies outside the observed ones and
none is an extrapolated edge copy. ``thin_index_of_thick`` gives each thick slice's position on the
cropped grid. The upsamplers put their output on exactly that grid.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from scipy.interpolate import CubicSpline

from ctlib.io.volume import Volume

ThickMode = Literal["slab", "decimate"]
THICK_MODES: tuple[str, ...] = get_args(ThickMode)
META_KEY = "thick_slices"


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_args(volume: Volume, factor: Any, mode: Any, slab: Any, offset: Any) -> tuple[int, int, int]:
    """Validated ``(factor, slab, offset)``; ``slab`` is 1 for decimation."""
    if mode not in THICK_MODES:
        raise ValueError(f"mode must be one of {list(THICK_MODES)}, got {mode!r}")
    factor = _check_int("factor", factor, 1)
    offset = _check_int("offset", offset, 0)
    if mode == "decimate":
        if slab not in (None, 1):
            raise ValueError(f"slab applies only to mode='slab'; got slab={slab!r} with mode='decimate'")
        slab = 1
    else:
        slab = factor if slab is None else _check_int("slab", slab, 1)
    n_thin = volume.shape[0]
    if offset + slab > n_thin:
        raise ValueError(
            f"not enough slices for one thick slice: need offset + slab = {offset} + {slab} "
            f"= {offset + slab} thin slices, the volume has {n_thin}"
        )
    return factor, slab, offset


def _n_thick(n_thin: int, factor: int, slab: int, offset: int) -> int:
    return (n_thin - offset - slab) // factor + 1


def _shifted_origin(volume: Volume, thin_index: float) -> tuple[float, float, float]:
    """LPS origin of a slice at (fractional) thin index ``thin_index``."""
    origin = np.asarray(volume.origin) + thin_index * volume.spacing[0] * volume.slice_normal
    return tuple(float(v) for v in origin)


def simulate_thick(
    volume: Volume,
    factor: int,
    mode: ThickMode = "slab",
    slab: int | None = None,
    offset: int = 0,
) -> Volume:
    """Thick slices from thin CT by slab averaging (box profile) or decimation: ``(n_thick, y, x)``.

    ``slab`` defaults to ``factor`` (contiguous, non-overlapping slabs); ``slab > factor`` overlaps,
    ``slab < factor`` leaves gaps. ``meta["thick_slices"]`` records the parameters and
    ``thin_index_of_thick0``, the position of thick slice 0 on the thin grid starting at ``offset``.
    """
    factor, slab, offset = _check_args(volume, factor, mode, slab, offset)
    dz = volume.spacing[0]
    n_thick = _n_thick(volume.shape[0], factor, slab, offset)
    starts = offset + factor * np.arange(n_thick)
    if mode == "slab":
        thick = np.empty((n_thick,) + volume.shape[1:], dtype=np.float32)
        for k, s in enumerate(starts):
            thick[k] = volume.array[s : s + slab].mean(axis=0, dtype=np.float64)
        thickness_mm = slab * dz
    else:
        thick = volume.array[starts].copy()
        thickness_mm = volume.slice_thickness_mm if volume.slice_thickness_mm is not None else dz
    centre0 = (slab - 1) / 2.0
    out = volume.with_array(
        thick,
        spacing=(factor * dz, volume.spacing[1], volume.spacing[2]),
        origin=_shifted_origin(volume, offset + centre0),
        slice_thickness_mm=float(thickness_mm),
    )
    out.meta[META_KEY] = {
        "mode": mode,
        "factor": factor,
        "slab": slab,
        "offset": offset,
        "thin_spacing_mm": float(dz),
        "thin_index_of_thick0": centre0,
    }
    return out


@dataclass
class ThickThinPair:
    """A simulated thick volume and the thin volume it came from, in register.

    ``thin`` has ``n_thick * factor`` slices; ``thin_index_of_thick`` ``(n_thick,)`` are the thick slice
    positions on the thin index grid; ``observed`` ``(n_thin,)`` marks thin slices that coincide with a
    thick slice centre (decimation, or an odd slab). With an even slab every thick centre falls halfway
    between two thin slices, so no thin slice is observed and all are scored as synthesized. Observed
    is about position: with a slab > 1 the thick value is still an average, not the thin slice.
    """

    thick: Volume
    thin: Volume
    factor: int
    mode: ThickMode
    slab: int
    offset: int
    thin_index_of_thick: np.ndarray
    observed: np.ndarray

    @property
    def synthesized(self) -> np.ndarray:
        """``(n_thin,)`` bool: thin slices a method must synthesize (the ones metrics score)."""
        return ~self.observed


def thick_thin_pair(
    volume: Volume,
    factor: int,
    mode: ThickMode = "slab",
    slab: int | None = None,
    offset: int = 0,
) -> ThickThinPair:
    """Simulate thick slices and crop the thin volume to the ``n_thick * factor`` slices they cover.

    Slabs: ``n_thick`` is the largest count for which both every slab and the thin crop of
    ``n_thick * factor`` slices fit in the volume. Decimation: every slice ``offset + k * factor`` of the
    volume is observed, and the thin crop runs from the first to the last of them.
    """
    factor, slab, offset = _check_args(volume, factor, mode, slab, offset)
    n_thin_in = volume.shape[0]
    if mode == "decimate":
        n_thick = _n_thick(n_thin_in, factor, 1, offset)
        if n_thick < 2:
            raise ValueError(
                f"not enough slices for two decimated thick slices: need offset + factor + 1 = "
                f"{offset + factor + 1} thin slices, the volume has {n_thin_in}"
            )
        n_thin = (n_thick - 1) * factor + 1
    else:
        n_thick = min(_n_thick(n_thin_in, factor, slab, offset), (n_thin_in - offset) // factor)
        if n_thick < 1:
            raise ValueError(
                f"not enough slices for one thick/thin block: need offset + factor = {offset + factor} "
                f"thin slices, the volume has {n_thin_in}"
            )
        n_thin = n_thick * factor
    last_needed = offset + (n_thick - 1) * factor + slab
    thick = simulate_thick(volume.with_array(volume.array[:last_needed]), factor, mode, slab, offset)
    thin = volume.with_array(
        volume.array[offset : offset + n_thin].copy(), origin=_shifted_origin(volume, offset)
    )
    centre0 = thick.meta[META_KEY]["thin_index_of_thick0"]
    thin_index = centre0 + factor * np.arange(n_thick, dtype=np.float64)
    observed = np.zeros(n_thin, dtype=bool)
    if float(centre0).is_integer():
        # With a slab wider than the factor the last centres can fall past the thin crop.
        inside = thin_index[thin_index < n_thin].astype(int)
        observed[inside] = True
    return ThickThinPair(thick, thin, factor, mode, slab, offset, thin_index, observed)


def _target_positions(
    thick: Volume, factor: int, thin_index_of_thick0: float | None, n_thin: int | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Output positions in thick-index units, clamped for edge replication, and the output geometry."""
    factor = _check_int("factor", factor, 1)
    n_thick = thick.shape[0]
    if thin_index_of_thick0 is None:
        # Simulated thick slices know where they sit (rescaled if upsampled by another factor than
        # the simulation's, so the grid still starts where the pair's thin crop starts); native
        # thick slices are taken to be centred in their block of `factor` thin slices.
        record = thick.meta.get(META_KEY)
        if record is None:
            thin_index_of_thick0 = (factor - 1) / 2.0
        else:
            thin_index_of_thick0 = record["thin_index_of_thick0"] * factor / record["factor"]
    n_thin = n_thick * factor if n_thin is None else _check_int("n_thin", n_thin, 1)
    q = (np.arange(n_thin, dtype=np.float64) - float(thin_index_of_thick0)) / factor
    q = np.clip(q, 0.0, n_thick - 1)
    dz_thin = thick.spacing[0] / factor
    origin = np.asarray(thick.origin) - float(thin_index_of_thick0) * dz_thin * thick.slice_normal
    meta = {k: v for k, v in thick.meta.items() if k != META_KEY}
    geometry = {
        "spacing": (dz_thin, thick.spacing[1], thick.spacing[2]),
        "origin": tuple(float(v) for v in origin),
        "slice_thickness_mm": dz_thin,
        "meta": meta,
    }
    return q, geometry


def upsample_linear_z(
    thick: Volume, factor: int, thin_index_of_thick0: float | None = None, n_thin: int | None = None
) -> Volume:
    """Linear interpolation along z onto the thin grid (edge replication outside): ``(n_thin, y, x)``.

    ``thin_index_of_thick0`` defaults to the value ``simulate_thick`` recorded, so the output lands on
    the grid of ``ThickThinPair.thin``; ``n_thin`` defaults to ``n_thick * factor``.
    """
    q, geometry = _target_positions(thick, factor, thin_index_of_thick0, n_thin)
    a = thick.array
    out = np.empty((q.size,) + a.shape[1:], dtype=np.float32)
    i0 = np.minimum(np.floor(q).astype(int), max(a.shape[0] - 2, 0))
    for j, (i, qj) in enumerate(zip(i0, q, strict=True)):
        w = qj - i
        if w == 0.0:
            out[j] = a[i]
        else:
            out[j] = (1.0 - w) * a[i].astype(np.float64) + w * a[i + 1].astype(np.float64)
    geometry["meta"]["upsampled"] = {"method": "linear", "factor": int(factor)}
    return _build(thick, out, geometry)


def upsample_cubic_z(
    thick: Volume, factor: int, thin_index_of_thick0: float | None = None, n_thin: int | None = None
) -> Volume:
    """Cubic-spline interpolation along z (not-a-knot, exact for cubics; edge replication outside).

    Same grid conventions as ``upsample_linear_z``. With 2 or 3 thick slices the spline degrades to a
    line or a parabola; with 1 the slice is replicated.
    """
    q, geometry = _target_positions(thick, factor, thin_index_of_thick0, n_thin)
    a = thick.array
    n_thick, ny, nx = a.shape
    out = np.empty((q.size, ny, nx), dtype=np.float32)
    if n_thick == 1:
        out[:] = a[0]
    else:
        # The spline holds 4 float64 coefficients per voxel and interval: chunk rows to bound memory.
        rows = max(1, (1 << 22) // max(1, n_thick * nx))
        knots = np.arange(n_thick, dtype=np.float64)
        for y0 in range(0, ny, rows):
            spline = CubicSpline(knots, a[:, y0 : y0 + rows].astype(np.float64), axis=0, bc_type="not-a-knot")
            out[:, y0 : y0 + rows] = spline(q)
    geometry["meta"]["upsampled"] = {"method": "cubic", "factor": int(factor)}
    return _build(thick, out, geometry)


def _build(thick: Volume, array: np.ndarray, geometry: dict[str, Any]) -> Volume:
    out = thick.with_array(
        array,
        spacing=geometry["spacing"],
        origin=geometry["origin"],
        slice_thickness_mm=geometry["slice_thickness_mm"],
    )
    out.meta = geometry["meta"]
    return out


UPSAMPLERS = {"linear": upsample_linear_z, "cubic": upsample_cubic_z}


def upsample_z(
    thick: Volume,
    factor: int,
    method: Literal["linear", "cubic"] = "linear",
    thin_index_of_thick0: float | None = None,
    n_thin: int | None = None,
) -> Volume:
    """Classic z-upsampling baseline by name (``"linear"`` or ``"cubic"``), for ablation loops."""
    if method not in UPSAMPLERS:
        raise ValueError(f"method must be one of {sorted(UPSAMPLERS)}, got {method!r}")
    return UPSAMPLERS[method](thick, factor, thin_index_of_thick0, n_thin)
