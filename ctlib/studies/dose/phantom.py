"""A synthetic dose case on the head phantom: a PTV, an organ at risk and an analytic dose.

SYNTHETIC, NOT A TREATMENT PLAN: the dose is a closed-form distribution shaped like a conformal
plan (prescription inside the target, an error-function penumbra, a low-dose bath), made for the
viewer, the dose tooling and their tests on embedded data. Real planned doses are in OpenKBP
(``ctlib.io.openkbp``, ``$CTLIB_DATA_DIR/openkbp``).

Geometry (LPS mm, centred on the volume like ``ctlib.data.phantom``; x to the patient's left,
y posterior, z superior):

- ``PTV70``: an ellipsoid in the patient's right hemisphere, semi-axes ``PTV_SEMI_AXES_MM``.
- ``Brainstem``: a vertical cylinder behind the PTV, ``BRAINSTEM_Z_MM`` long, about 1 cm from the PTV
  surface at its closest (mean dose about 8 Gy, maximum about 30 Gy); the axial slice through the PTV
  centre shows both.

Dose model, with ``d`` the distance (mm) from the PTV surface along the ray from its centre
(negative inside) and ``D = 70 Gy``:

    primary(d) = 0.5 * erfc((d - margin) / (sqrt(2) * sigma))       # sigma = penumbra / 1.683
    bath(d)    = bath_fraction * exp(-max(d, 0)^2 / (2 * bath_sigma^2))
    dose       = D * (primary + (1 - primary) * bath) * (1 + ripple), 0 outside the body

``penumbra`` is the 80 %-20 % distance of the edge; ``margin`` = 1.645 sigma puts the 95 % line on
the PTV surface. ``ripple`` is a smooth seeded field within +-2 % (about 1 cm correlation length), so
the target dose is not perfectly flat and the maximum stays within 2 % of the prescription.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, special

from ctlib.data import phantom
from ctlib.io.volume import Volume

PRESCRIPTION_GY = 70.0
PTV_CENTRE_MM = (-16.0, -4.0, 8.0)       # (x, y, z) LPS: patient's right, anterior, superior of centre
PTV_SEMI_AXES_MM = (14.0, 17.0, 12.0)
BRAINSTEM_CENTRE_MM = (0.0, 24.0)        # (x, y) of the cylinder axis, behind the PTV
BRAINSTEM_RADIUS_MM = 8.0
BRAINSTEM_Z_MM = (-30.0, 15.0)           # inferior and superior ends (past the PTV centre)
# 80 %-20 % distance of an error-function edge, in units of its sigma: 2 * 0.8416.
PENUMBRA_PER_SIGMA = 1.683


def _grid_mm(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates ``x (1, 1, X)``, ``y (1, Y, 1)``, ``z (Z, 1, 1)`` of an axis-aligned volume."""
    if not np.allclose(volume.direction, np.eye(3)):
        raise ValueError(f"expected an axis-aligned (identity direction) volume, got\n{volume.direction}")
    nz, ny, nx = volume.shape
    dz, dy, dx = volume.spacing
    x0, y0, z0 = volume.origin
    return ((x0 + np.arange(nx) * dx).reshape(1, 1, nx), (y0 + np.arange(ny) * dy).reshape(1, ny, 1),
            (z0 + np.arange(nz) * dz).reshape(nz, 1, 1))


def dose_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = (60, 144, 144),
    spacing_mm: tuple[float, float, float] = (2.0, 1.0, 1.0),
    *,
    penumbra_mm: float = 6.0,
    bath_fraction: float = 0.3,
    bath_sigma_mm: float = 15.0,
) -> tuple[Volume, dict[str, np.ndarray], np.ndarray]:
    """Synthetic head dose case (analytic, not a plan): ``(CT Volume, {name: (z, y, x) bool}, dose_gy)``.

    The CT is ``phantom.ct_phantom_with_labels(kind="head")`` for ``seed``, ``shape`` and
    ``spacing_mm`` (default: 1 mm in-plane, 2 mm slices); structures are ``Brainstem`` and ``PTV70``;
    ``dose_gy`` is ``(z, y, x)`` float32 in Gy, zero outside the body (every non-air phantom voxel).
    Deterministic for a given seed.
    """
    if penumbra_mm <= 0 or bath_sigma_mm <= 0 or not 0 <= bath_fraction < 1:
        raise ValueError(f"expected penumbra_mm > 0, bath_sigma_mm > 0 and 0 <= bath_fraction < 1, got "
                         f"{penumbra_mm}, {bath_sigma_mm}, {bath_fraction}")
    volume, labels, _ = phantom.ct_phantom_with_labels(shape, spacing_mm, seed=seed, kind="head")
    x, y, z = _grid_mm(volume)
    (cx, cy, cz), (ax, ay, az) = PTV_CENTRE_MM, PTV_SEMI_AXES_MM
    offset = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
    r_norm = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)
    # Distance from the surface along the ray from the centre: exact for a sphere, close for this ellipsoid.
    d_mm = offset * (1.0 - 1.0 / np.maximum(r_norm, 1e-6))
    sigma = penumbra_mm / PENUMBRA_PER_SIGMA
    margin = 1.645 * sigma  # puts the 95 % line on the PTV surface
    primary = 0.5 * special.erfc((d_mm - margin) / (np.sqrt(2.0) * sigma))
    bath = bath_fraction * np.exp(-np.maximum(d_mm, 0.0) ** 2 / (2.0 * bath_sigma_mm**2))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 70]))
    ripple = ndimage.gaussian_filter(rng.standard_normal(volume.shape), [10.0 / s for s in volume.spacing])
    ripple *= 0.02 / max(float(np.abs(ripple).max()), 1e-12)
    body = labels != phantom.AIR
    dose_gy = PRESCRIPTION_GY * (primary + (1.0 - primary) * bath) * (1.0 + ripple) * body

    bx, by = BRAINSTEM_CENTRE_MM
    structures = {  # the organ at risk first: overlays colour structures in this order (orange, then blue)
        "Brainstem": np.broadcast_to(
            ((x - bx) ** 2 + (y - by) ** 2 <= BRAINSTEM_RADIUS_MM**2)
            & (z >= BRAINSTEM_Z_MM[0])
            & (z <= BRAINSTEM_Z_MM[1]),
            volume.shape,
        )
        & body,
        "PTV70": np.broadcast_to(r_norm <= 1.0, volume.shape) & body,
    }
    volume.meta.update({"dose_phantom": "synthetic analytic dose, not a treatment plan",
                        "prescription_gy": PRESCRIPTION_GY, "penumbra_mm": float(penumbra_mm)})
    return volume, structures, dose_gy.astype(np.float32)
