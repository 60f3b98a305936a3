"""An analytic reference for DRRs: a uniform ellipsoid voxelised with an anti-aliased edge, and the
closed-form chord of a ray through it (a line integral is ``mu * chord``).

Coordinates are those of ``ctlib.physics.drr``: LPS mm ``(x, y, z)`` from the volume centre, volumes
``(D, H, W) = (z, y, x)``.
"""

from __future__ import annotations

import numpy as np
import torch


def ellipsoid_volume(
    shape: tuple[int, int, int],
    spacing_mm: float,
    semi_axes_mm: tuple[float, float, float],
    centre_mm: tuple[float, float, float],
    mu: float,
) -> torch.Tensor:
    """Uniform ellipsoid ``(D, H, W)`` float32 of attenuation ``mu`` on an isotropic grid, semi-axes and
    centre as ``(x, y, z)`` mm.

    A hard edge voxelised by the centre-inside test gives 0.6-0.9 % relative L2 error at 128^3 (measured),
    all from the 1-voxel staircase at the rim, so the edge is anti-aliased: each voxel holds the fraction
    of it inside the surface, from the signed distance ``(rho - 1) / |grad rho|`` over a 1-voxel ramp.
    """
    axes, centre = np.asarray(semi_axes_mm, dtype=np.float64), np.asarray(centre_mm, dtype=np.float64)
    z, y, x = np.meshgrid(
        *[(np.arange(n) - (n - 1) / 2) * spacing_mm for n in shape], indexing="ij"
    )
    q = np.stack([(x - centre[0]) / axes[0], (y - centre[1]) / axes[1], (z - centre[2]) / axes[2]])
    rho = np.sqrt((q**2).sum(0))
    grad = np.sqrt(((q / axes[:, None, None, None]) ** 2).sum(0)) / np.maximum(rho, 1e-9)
    inside = np.clip(0.5 - (rho - 1) / grad / spacing_mm, 0.0, 1.0)
    return torch.from_numpy((inside * mu).astype(np.float32))


def ellipsoid_chord_mm(
    origins: np.ndarray,
    directions: np.ndarray,
    semi_axes_mm: tuple[float, float, float],
    centre_mm: tuple[float, float, float],
) -> np.ndarray:
    """Closed-form chord ``(R,)`` of unit-direction rays ``(R, 3)`` through the ellipsoid (0 for misses)."""
    axes, centre = np.asarray(semi_axes_mm, dtype=np.float64), np.asarray(centre_mm, dtype=np.float64)
    o, d = (origins - centre) / axes, directions / axes
    a, b, c = (d * d).sum(1), 2 * (o * d).sum(1), (o * o).sum(1) - 1
    disc = b * b - 4 * a * c
    return np.where(disc > 0, np.sqrt(np.maximum(disc, 0.0)) / a, 0.0)
