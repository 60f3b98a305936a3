"""Deterministic synthetic CT phantoms (chest, head) with realistic HU, for tests and the demo.

Every structure is defined in mm in patient coordinates centred on the volume (LPS: x to the
patient's left, y posterior, z superior), so two grids with the same field of view show the same
anatomy whatever their spacing. Structures vary smoothly along z (vessel paths and calibres, lung and
body outlines) or periodically (ribs, intervertebral discs), so z-interpolation is not trivial.
The body is small (about 125 x 95 mm for the chest) so that it fits the default 144 mm field of view.

Image formation: piecewise-constant HU per tissue, a Gaussian point-spread blur (0.7 mm sigma), then
white Gaussian noise (12 HU sigma). Structure parameters and noise come from two child streams of
``numpy.random.default_rng(seed)``, so the anatomy for a seed does not depend on the grid.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from scipy import ndimage

from ctlib.io.volume import Volume

PhantomKind = Literal["chest", "head"]
PHANTOM_KINDS: tuple[str, ...] = get_args(PhantomKind)
MM = float | np.ndarray  # a length in mm: a scalar, or one value per slice as a (z, 1, 1) array

AIR, SOFT_TISSUE, FAT, LUNG, BONE, VESSEL, NODULE, TABLE, BRAIN, CSF = range(10)
LABEL_NAMES: dict[int, str] = {
    AIR: "air", SOFT_TISSUE: "soft_tissue", FAT: "fat", LUNG: "lung", BONE: "bone", VESSEL: "vessel",
    NODULE: "nodule", TABLE: "table", BRAIN: "brain", CSF: "csf",
}
NOISE_SIGMA_HU = 12.0
PSF_SIGMA_MM = 0.7


class _Canvas:
    """Paints HU and labels into ``(z, y, x)`` grids; later strokes overwrite earlier ones."""

    def __init__(self, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> None:
        nz, ny, nx = shape
        dz, dy, dx = spacing_mm
        self.z = ((np.arange(nz) - (nz - 1) / 2.0) * dz).reshape(nz, 1, 1)
        self.y = ((np.arange(ny) - (ny - 1) / 2.0) * dy).reshape(1, ny, 1)
        self.x = ((np.arange(nx) - (nx - 1) / 2.0) * dx).reshape(1, 1, nx)
        self.hu = np.full(shape, -1000.0, dtype=np.float32)
        self.labels = np.zeros(shape, dtype=np.uint8)

    def ellipse(self, cx: MM, cy: MM, ax: MM, ay: MM) -> np.ndarray:
        """Bool ``(z, y, x)``: inside the axial ellipse; parameters in mm, scalars or ``(z, 1, 1)``."""
        ax = np.maximum(ax, 1e-6)
        ay = np.maximum(ay, 1e-6)
        return ((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2 <= 1.0

    def sphere(self, centre_mm: np.ndarray, radius_mm: float) -> np.ndarray:
        cx, cy, cz = centre_mm
        return (self.x - cx) ** 2 + (self.y - cy) ** 2 + (self.z - cz) ** 2 <= radius_mm**2

    def paint(self, mask: np.ndarray, hu: float | np.ndarray, label: int) -> None:
        mask = np.broadcast_to(mask, self.hu.shape)
        self.hu[mask] = hu if np.isscalar(hu) else np.broadcast_to(hu, self.hu.shape)[mask]
        self.labels[mask] = label


def _wave(z: np.ndarray, amplitude: float, period_mm: float, phase: float = 0.0) -> np.ndarray:
    """A smooth variation along z (mm), ``(z, 1, 1)``."""
    return amplitude * np.sin(2.0 * np.pi * z / period_mm + phase)


def _tubes(c: _Canvas, rng: np.random.Generator, n: int, centre: tuple[float, float],
           spread_mm: tuple[float, float], radius_mm: tuple[float, float]) -> list[np.ndarray]:
    """Masks of ``n`` vessels running along z whose centre line and calibre wander smoothly."""
    masks = []
    for _ in range(n):
        x0, y0 = (np.asarray(centre) + rng.uniform(-1, 1, 2) * spread_mm)
        r0 = rng.uniform(*radius_mm)
        amp, period, phase = rng.uniform(3, 8), rng.uniform(60, 140), rng.uniform(0, 2 * np.pi)
        cx = x0 + _wave(c.z, amp, period, phase)
        cy = y0 + _wave(c.z, amp * 0.6, period * 1.3, phase + 1.0)
        r = r0 * (1.0 + _wave(c.z, 0.25, period * 0.8, phase))
        masks.append(c.ellipse(cx, cy, r, r))
    return masks


def _chest(c: _Canvas, rng: np.random.Generator, rng_noise: np.random.Generator,
           spacing_mm: tuple[float, float, float]) -> dict[int, str]:
    z = c.z
    ax, ay = 62.0 + _wave(z, 3.0, 180.0), 46.0 + _wave(z, 2.0, 150.0, 1.0)
    c.paint(c.ellipse(0.0, 0.0, ax, ay), -100.0, FAT)
    c.paint(c.ellipse(0.0, 0.0, ax - 7.0, ay - 7.0), 40.0, SOFT_TISSUE)
    # Table under the patient's back (posterior = +y), separated by an air gap.
    c.paint((np.abs(c.x) <= 66.0) & (c.y >= 52.0) & (c.y <= 58.0), 100.0, TABLE)

    lung_centres = [(-27.0, -2.0), (27.0, -2.0)]
    lax, lay = 19.0 + _wave(z, 2.5, 200.0), 27.0 + _wave(z, 2.0, 170.0, 0.5)
    lungs = c.ellipse(*lung_centres[0], lax, lay) | c.ellipse(*lung_centres[1], lax, lay)
    texture = rng_noise.standard_normal(c.hu.shape).astype(np.float32)
    texture = ndimage.gaussian_filter(texture, [2.0 / s for s in spacing_mm])
    texture *= 25.0 / max(float(texture.std()), 1e-6)
    c.paint(lungs, -850.0 + texture, LUNG)

    heart_r = np.sqrt(np.clip(1.0 - ((z + 15.0) / 45.0) ** 2, 0.0, None))
    c.paint(c.ellipse(8.0, -12.0, 20.0 * heart_r, 16.0 * heart_r), 45.0, SOFT_TISSUE)
    for centre in lung_centres:
        for tube in _tubes(c, rng, 4, centre, (9.0, 12.0), (1.5, 3.0)):
            c.paint(tube & lungs, 150.0, VESSEL)
    aorta_r = 7.0 + _wave(z, 1.0, 90.0)
    c.paint(
        c.ellipse(12.0 + _wave(z, 3.0, 120.0, rng.uniform(0, 6.28)), 20.0, aorta_r, aorta_r), 200.0, VESSEL
    )

    # Spine: cortical rim around a denser-than-real cancellous body, with discs every 28 mm.
    c.paint(c.ellipse(0.0, 33.0, 10.0, 9.0), 1000.0, BONE)
    c.paint(c.ellipse(0.0, 33.0, 8.0, 7.0), 700.0, BONE)
    disc = np.mod(z - rng.uniform(0, 28), 28.0) < 6.0
    c.paint(c.ellipse(0.0, 33.0, 10.0, 9.0) & disc, 80.0, SOFT_TISSUE)
    # Ribs: round sections inside the fat layer, periodic in z and descending anteriorly (oblique).
    rib_phase = rng.uniform(0, 25)
    for angle in np.deg2rad([20, 45, 70, 110, 135, 160, 200, 225, 315, 340]):
        rx, ry = (ax - 10.0) * np.cos(angle), (ay - 10.0) * np.sin(angle)
        band = np.mod(z + 0.3 * c.y - rib_phase, 25.0) < 9.0
        c.paint(c.ellipse(rx, ry, 4.0, 4.0) & band, 850.0, BONE)

    for _ in range(3):
        cx, cy = lung_centres[rng.integers(2)]
        centre = np.array([cx + rng.uniform(-8, 8), cy + rng.uniform(-12, 12), rng.uniform(-35, 35)])
        c.paint(c.sphere(centre, rng.uniform(3.0, 6.0)), 30.0, NODULE)
    return {k: LABEL_NAMES[k] for k in (AIR, SOFT_TISSUE, FAT, LUNG, BONE, VESSEL, NODULE, TABLE)}


def _head(c: _Canvas, rng: np.random.Generator) -> dict[int, str]:
    z = c.z
    taper = np.sqrt(np.clip(1.0 - ((z + 20.0) / 110.0) ** 2, 0.05, None))  # the vertex narrows
    ax, ay = 52.0 * taper, 62.0 * taper
    c.paint(c.ellipse(0.0, 0.0, ax + 4.0, ay + 4.0), -80.0, FAT)  # scalp
    c.paint(c.ellipse(0.0, 0.0, ax, ay), 1000.0, BONE)  # outer and inner tables
    c.paint(c.ellipse(0.0, 0.0, ax - 2.0, ay - 2.0), 700.0, BONE)  # diploe
    c.paint(c.ellipse(0.0, 0.0, ax - 4.0, ay - 4.0), 1000.0, BONE)
    c.paint(c.ellipse(0.0, 0.0, ax - 6.0, ay - 6.0), 40.0, BRAIN)  # grey-matter cortex
    c.paint(c.ellipse(0.0, 0.0, ax - 10.0, ay - 10.0), 28.0, BRAIN)  # white matter
    vent = np.sqrt(np.clip(1.0 - ((z - 5.0) / 30.0) ** 2, 0.0, None))
    for side in (-6.0, 6.0):
        c.paint(c.ellipse(side + _wave(z, 1.0, 80.0), -5.0, 4.0 * vent, 14.0 * vent), 5.0, CSF)
    sinus_y = ay - 9.0
    c.paint(c.ellipse(0.0, sinus_y, 3.0, 3.0) & (ay > 20.0), 200.0, VESSEL)
    brain = c.labels == BRAIN
    for tube in _tubes(c, rng, 3, (0.0, 0.0), (25.0, 25.0), (1.2, 2.2)):
        c.paint(tube & brain, 200.0, VESSEL)
    for _ in range(2):
        centre = np.array([rng.uniform(-25, 25), rng.uniform(-30, 30), rng.uniform(-30, 20)])
        c.paint(c.sphere(centre, rng.uniform(3.0, 6.0)) & brain, 65.0, NODULE)
    names = {k: LABEL_NAMES[k] for k in (AIR, SOFT_TISSUE, FAT, BONE, VESSEL, NODULE, BRAIN, CSF)}
    names[NODULE] = "lesion"
    del names[SOFT_TISSUE]
    return names


def ct_phantom_with_labels(
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing_mm: tuple[float, float, float] = (2.5, 1.5, 1.5),
    seed: int = 0,
    kind: PhantomKind = "chest",
) -> tuple[Volume, np.ndarray, dict[int, str]]:
    """Synthetic CT phantom: ``(Volume (z, y, x) HU, labels uint8 (z, y, x), {label id: name})``."""
    if kind not in PHANTOM_KINDS:
        raise ValueError(f"kind must be one of {list(PHANTOM_KINDS)}, got {kind!r}")
    shape = tuple(int(n) for n in shape)
    spacing_mm = tuple(float(s) for s in spacing_mm)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive voxel counts (z, y, x), got {shape}")
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise ValueError(f"spacing_mm must be three positive numbers (dz, dy, dx), got {spacing_mm}")
    rng_anatomy, rng_noise = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    canvas = _Canvas(shape, spacing_mm)
    if kind == "chest":
        names = _chest(canvas, rng_anatomy, rng_noise, spacing_mm)
    else:
        names = _head(canvas, rng_anatomy)
    hu = ndimage.gaussian_filter(canvas.hu, [PSF_SIGMA_MM / s for s in spacing_mm])
    hu += rng_noise.normal(0.0, NOISE_SIGMA_HU, shape).astype(np.float32)
    origin = (float(canvas.x.flat[0]), float(canvas.y.flat[0]), float(canvas.z.flat[0]))
    volume = Volume(
        array=hu, spacing=spacing_mm, origin=origin, slice_thickness_mm=spacing_mm[0],
        meta={"phantom": kind, "seed": int(seed)},
    )
    return volume, canvas.labels, names


def ct_phantom(
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing_mm: tuple[float, float, float] = (2.5, 1.5, 1.5),
    seed: int = 0,
    kind: PhantomKind = "chest",
) -> Volume:
    """Synthetic CT phantom (chest or head) in HU, ``(z, y, x)``; see ``ct_phantom_with_labels``."""
    return ct_phantom_with_labels(shape, spacing_mm, seed, kind)[0]
