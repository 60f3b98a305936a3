"""Synthetic CT-RATE findings inserted into a real chest anatomy, with plausible HU and location.

Every inserter has the signature ``(anatomy, rng, **options) -> BaseAnatomy``: it returns a copy whose
``hu`` is changed only inside the structure the finding belongs to (and whose masks follow, e.g. an
enlarged heart), never the input. Geometry is on the LPS working grid of ``anatomy``: x index to the
patient's left, y posterior (so gravity in a supine patient points to +y), z superior. Edges are
blended with a one-voxel partial-volume ramp. ``FINDING_INSERTERS`` maps the exact CT-RATE names
(``findings.FINDINGS``) to inserters, in the order they are applied (geometry first, metal last);
``REQUIRES`` names the masks each needs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from ctlib.studies.clip3d.anatomy import BaseAnatomy

Inserter = Callable[..., BaseAnatomy]


def _grid(shape: tuple[int, ...], box: tuple[slice, ...] | None = None) -> np.ndarray:
    """Voxel indices ``(3, *shape)`` (or of the sub-box ``box``, in whole-volume coordinates)."""
    box = box or tuple(slice(0, n) for n in shape)
    return np.stack(np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float32) for b in box], indexing="ij"))


def _box(shape: tuple[int, ...], lo: np.ndarray, hi: np.ndarray, margin: float) -> tuple[slice, ...]:
    """The index box ``[lo - margin, hi + margin]`` clipped to ``shape``."""
    return tuple(
        slice(max(0, int(np.floor(a - margin))), min(n, int(np.ceil(b + margin)) + 1))
        for a, b, n in zip(lo, hi, shape, strict=True)
    )


def _mask_box(mask: np.ndarray, margin: float) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    return _box(mask.shape, idx.min(0), idx.max(0), margin)


def _choose(mask: np.ndarray, rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
    """One random voxel index ``(z, y, x)`` of ``mask`` (optionally weighted)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        raise ValueError("no voxel to place the finding in (empty mask)")
    p = None
    if weights is not None:
        w = weights.ravel()[idx].astype(np.float64)
        p = w / w.sum() if w.sum() > 0 else None
    return np.array(np.unravel_index(int(rng.choice(idx, p=p)), mask.shape))


def _blend(hu: np.ndarray, weight: np.ndarray, value: np.ndarray | float, region: np.ndarray) -> None:
    """``hu = (1 - w) hu + w value`` inside ``region`` (in place)."""
    w = np.where(region, np.clip(weight, 0.0, 1.0), 0.0).astype(np.float32)
    hu += w * (np.asarray(value, dtype=np.float32) - hu)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sd_hu: float) -> np.ndarray:
    return rng.normal(0.0, sd_hu, shape).astype(np.float32)


def insert_nodule(
    anatomy: BaseAnatomy,
    rng: np.random.Generator,
    *,
    diameter_mm: float | None = None,
    hu_value: float | None = None,
    count: int | None = None,
) -> BaseAnatomy:
    """Solid lung nodules: 1-3 spheres of 5-20 mm at 0-60 HU, wholly inside the lung, partial-volume edge."""
    out = anatomy.copy()
    s = anatomy.spacing_mm
    depth_mm = ndimage.distance_transform_edt(anatomy.lungs) * s
    for _ in range(int(count if count is not None else rng.integers(1, 4))):
        d = float(diameter_mm if diameter_mm is not None else rng.uniform(5.0, 20.0))
        d = min(d, 2.0 * (depth_mm.max() - s))
        centre = _choose(depth_mm >= d / 2 + s, rng)
        box = _box(out.shape, centre, centre, d / 2 / s + 2)
        r_mm = np.sqrt((((_grid(out.shape, box) - centre[:, None, None, None]) * s) ** 2).sum(0))
        weight = d / 2 / s + 0.5 - r_mm / s  # one-voxel linear partial-volume ramp at the radius
        value = float(hu_value if hu_value is not None else rng.uniform(0.0, 60.0))
        noisy = value + _noise(rng, weight.shape, 8.0)
        _blend(out.hu[box], weight, noisy, anatomy.lungs[box] & (weight > 0))
    return out


def insert_pleural_effusion(
    anatomy: BaseAnatomy,
    rng: np.random.Generator,
    *,
    thickness_mm: float | None = None,
    side: str | None = None,
) -> BaseAnatomy:
    """Pleural effusion: a dependent (posterior, +y) crescent of 0-20 HU fluid in the lung base.

    Per (z, x) column the last ``t(z)`` mm of lung towards the back becomes fluid; ``t`` is largest at
    the lung base and tapers to zero at 40-70% of the lung height. The fluid leaves the lung mask.
    """
    out = anatomy.copy()
    s = anatomy.spacing_mm
    lungs = anatomy.lungs
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    z0, height = zs[0], zs[-1] - zs[0] + 1
    x_mid = float(np.argwhere(lungs)[:, 2].mean())
    side = side or str(rng.choice(["right", "left", "both"], p=[0.4, 0.25, 0.35]))
    t_max = float(thickness_mm if thickness_mm is not None else rng.uniform(12.0, 40.0))
    reach = rng.uniform(0.4, 0.7) * height
    zi = np.arange(out.shape[0])
    t_z = t_max * np.clip(1.0 - (zi - z0) / reach, 0.0, 1.0)
    # distance (mm) from each lung voxel to the column's most posterior lung voxel
    y = np.arange(out.shape[1], dtype=np.float32)[None, :, None]
    last = np.where(lungs, y, -1).max(axis=1, keepdims=True)
    from_back = (last - y) * s
    fluid = lungs & (from_back < t_z[:, None, None])
    xs = np.arange(out.shape[2])[None, None, :]
    if side == "right":
        fluid &= xs < x_mid
    elif side == "left":
        fluid &= xs >= x_mid
    value = rng.uniform(0.0, 20.0)
    out.hu[fluid] = value + _noise(rng, (int(fluid.sum()),), 6.0)
    out.lungs = lungs & ~fluid
    return out


def insert_pericardial_effusion(
    anatomy: BaseAnatomy, rng: np.random.Generator, *, thickness_mm: float | None = None
) -> BaseAnatomy:
    """Pericardial effusion: a 0-25 HU fluid rim around the heart, 4-15 mm, thicker posteriorly; within
    the heart's slices and not over enhanced vessels, bone or calcium (>= 150 HU)."""
    out = anatomy.copy()
    s = anatomy.spacing_mm
    t = float(thickness_mm if thickness_mm is not None else rng.uniform(4.0, 15.0))
    box = _mask_box(anatomy.heart, 1.3 * t / s + 2)
    dist_mm = np.zeros(out.shape, dtype=np.float32)
    dist_mm[box] = ndimage.distance_transform_edt(~anatomy.heart[box]) * s
    yy = np.arange(out.shape[1], dtype=np.float32)[None, :, None]
    hy = np.argwhere(anatomy.heart)[:, 1]
    posterior = np.clip((yy - hy.min()) / max(1, hy.max() - hy.min()), 0.0, 1.0)
    local_t = t * (0.8 + 0.5 * posterior)
    rim = (dist_mm > 0) & (dist_mm <= local_t) & anatomy.body & ~anatomy.bone
    rim &= anatomy.hu < 150.0  # enhanced vessels, bone and calcium are not replaced by fluid
    heart_z = np.flatnonzero(anatomy.heart.any(axis=(1, 2)))
    rim[heart_z[-1] :] = False  # within the heart's height: not above it, not below the diaphragm
    rim[: heart_z[0]] = False
    if anatomy.aorta is not None:
        rim &= ~anatomy.aorta
    out.hu[rim] = rng.uniform(0.0, 25.0) + _noise(rng, (int(rim.sum()),), 6.0)
    out.lungs = anatomy.lungs & ~rim
    out.heart = anatomy.heart | rim  # the pericardial sac grows (a cardiomegaly-like silhouette)
    return out


def _smooth_blob(
    anatomy: BaseAnatomy, rng: np.random.Generator, radius_mm: float, centre: np.ndarray
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Soft weight in [0, 1] on a box: a sphere of ``radius_mm`` with a smoothed random (lobulated)
    boundary (Gaussian-filtered noise, sd 35% of the radius). Returns ``(box, weight)``."""
    s = anatomy.spacing_mm
    box = _box(anatomy.shape, centre, centre, 1.6 * radius_mm / s + 2)
    r_mm = np.sqrt((((_grid(anatomy.shape, box) - centre[:, None, None, None]) * s) ** 2).sum(0))
    wobble = ndimage.gaussian_filter(rng.normal(0.0, 1.0, r_mm.shape).astype(np.float32), 8.0 / s)
    wobble *= 0.35 * radius_mm / max(1e-6, float(wobble.std()))
    return box, np.clip((radius_mm + wobble - r_mm) / s + 0.5, 0.0, 1.0)


def _airspace(
    anatomy: BaseAnatomy,
    rng: np.random.Generator,
    low_hu: float,
    high_hu: float,
    radius_mm: float | None,
    air_bronchogram: bool,
) -> BaseAnatomy:
    out = anatomy.copy()
    zs = np.flatnonzero(anatomy.lungs.any(axis=(1, 2)))
    zw = np.clip(1.2 - (np.arange(anatomy.shape[0]) - zs[0]) / max(1, zs[-1] - zs[0]), 0.2, 1.2)
    centre = _choose(anatomy.lungs, rng, weights=np.broadcast_to(zw[:, None, None], anatomy.shape))
    radius = float(radius_mm if radius_mm is not None else rng.uniform(15.0, 40.0))
    box, weight = _smooth_blob(anatomy, rng, radius, centre)
    target = rng.uniform(low_hu, high_hu) + _noise(rng, weight.shape, 15.0)
    hu = anatomy.hu[box]
    region = anatomy.lungs[box] & (weight > 0)
    if air_bronchogram:
        region &= hu > -950.0  # the darkest voxels (airways) stay air
    blended = hu + weight * (target - hu)
    out.hu[box] = np.where(region, np.maximum(hu, blended), hu)  # vessels (denser) stay
    return out


def insert_lung_opacity(
    anatomy: BaseAnatomy, rng: np.random.Generator, *, radius_mm: float | None = None
) -> BaseAnatomy:
    """Ground-glass opacity: a lobulated region of lung raised to -700..-300 HU, vessels kept."""
    return _airspace(anatomy, rng, -700.0, -300.0, radius_mm, air_bronchogram=False)


def insert_consolidation(
    anatomy: BaseAnatomy,
    rng: np.random.Generator,
    *,
    radius_mm: float | None = None,
    air_bronchogram: bool | None = None,
) -> BaseAnatomy:
    """Consolidation: a lobulated, mostly dependent lung region at -100..50 HU, optional air bronchogram."""
    bronchogram = bool(rng.random() < 0.5) if air_bronchogram is None else air_bronchogram
    return _airspace(anatomy, rng, -100.0, 50.0, radius_mm, air_bronchogram=bronchogram)


def insert_emphysema(
    anatomy: BaseAnatomy, rng: np.random.Generator, *, fraction: float | None = None
) -> BaseAnatomy:
    """Centrilobular emphysema: clusters of 3-9 mm low-attenuation areas (-1000..-960 HU), upper-lobe
    predominant, until ``fraction`` (6-20%) of the lung is below -950 HU."""
    out = anatomy.copy()
    s = anatomy.spacing_mm
    parenchyma = anatomy.lungs & (anatomy.hu < -500.0) & (anatomy.hu > -950.0)
    zs = np.flatnonzero(anatomy.lungs.any(axis=(1, 2)))
    up = np.clip((np.arange(anatomy.shape[0]) - zs[0]) / max(1, zs[-1] - zs[0]), 0.0, 1.0) ** 1.5 + 0.1
    goal = float(fraction if fraction is not None else rng.uniform(0.06, 0.20)) * anatomy.lungs.sum()
    seeds = np.zeros(anatomy.shape, dtype=bool)
    n = max(1, int(goal / max(1.0, (6.0 / s) ** 3)))
    idx = np.flatnonzero(parenchyma)
    w = np.broadcast_to(up[:, None, None], anatomy.shape).ravel()[idx]
    seeds.ravel()[rng.choice(idx, size=min(n, idx.size), replace=False, p=w / w.sum())] = True
    holes = ndimage.binary_dilation(seeds, iterations=1) & parenchyma
    values = rng.uniform(-1000.0, -960.0, anatomy.shape).astype(np.float32)
    out.hu[holes] = values[holes]
    return out


def _shell_specks(
    anatomy: BaseAnatomy, rng: np.random.Generator, shell: np.ndarray, centres: np.ndarray
) -> BaseAnatomy:
    """Calcified specks of 200-1000 HU at ``centres`` (N, 3) and one random shell neighbour each."""
    out = anatomy.copy()
    specks = np.zeros(anatomy.shape, dtype=bool)
    offsets = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)])
    for c in centres:
        specks[tuple(c)] = True
        for o in rng.permutation(offsets)[: int(rng.integers(0, 4))]:
            p = np.clip(c + o, 0, np.array(anatomy.shape) - 1)
            if shell[tuple(p)]:
                specks[tuple(p)] = True
    values = rng.uniform(200.0, 1000.0, anatomy.shape).astype(np.float32)
    out.hu[specks] = np.maximum(out.hu[specks], values[specks])
    return out


def wall_shell(mask: np.ndarray) -> np.ndarray:
    """The outer one-voxel layer of ``mask`` (the vessel or heart wall on the working grid)."""
    return mask & ~ndimage.binary_erosion(mask)


def insert_arterial_wall_calcification(
    anatomy: BaseAnatomy, rng: np.random.Generator, *, count: int | None = None
) -> BaseAnatomy:
    """Aortic wall calcification: 3-15 specks of 200-1000 HU on the aortic wall."""
    shell = wall_shell(anatomy.aorta)
    idx = np.argwhere(shell)
    n = int(count if count is not None else rng.integers(3, 16))
    centres = idx[rng.choice(len(idx), size=min(n, len(idx)), replace=False)]
    return _shell_specks(anatomy, rng, shell, centres)


def insert_coronary_calcification(
    anatomy: BaseAnatomy, rng: np.random.Generator, *, count: int | None = None
) -> BaseAnatomy:
    """Coronary calcification: 2-8 specks of 200-1000 HU on the heart surface along a LAD-like path,
    from the top of the heart's anterior surface to the apex (most anterior-left-inferior point)."""
    heart = anatomy.heart
    shell = wall_shell(heart)
    pts = np.argwhere(shell).astype(np.float64)
    start = pts[np.argmax(pts[:, 0] - 0.5 * pts[:, 1])]  # superior and anterior
    apex = pts[np.argmax(pts[:, 2] - pts[:, 1] - pts[:, 0])]  # left, anterior, inferior
    n = int(count if count is not None else rng.integers(2, 9))
    t = np.sort(rng.uniform(0.05, 0.8, n))
    along = start[None] + t[:, None] * (apex - start)[None]
    nearest = [np.argwhere(shell)[np.argmin(((pts - a) ** 2).sum(1))] for a in along]
    return _shell_specks(anatomy, rng, shell, np.array(nearest))


def insert_cardiomegaly(
    anatomy: BaseAnatomy, rng: np.random.Generator, *, scale: float | None = None
) -> BaseAnatomy:
    """Cardiomegaly: the heart resampled about its centroid, 1.15-1.35x in-plane and half that in z,
    into the lung and soft tissue around it (never bone or aorta); the lung mask shrinks."""
    out = anatomy.copy()
    f = float(scale if scale is not None else rng.uniform(1.15, 1.35))
    scales = np.array([1.0 + (f - 1.0) / 2.0, f, f], dtype=np.float32)
    heart = anatomy.heart
    idx = np.argwhere(heart)
    c = idx.mean(0).astype(np.float32)
    lo, hi = c + (idx.min(0) - c) * scales, c + (idx.max(0) - c) * scales
    box = _box(anatomy.shape, lo, hi, 2)
    src = (
        c[:, None, None, None]
        + (_grid(anatomy.shape, box) - c[:, None, None, None]) / scales[:, None, None, None]
    )
    inside = np.zeros(anatomy.shape, dtype=bool)
    inside[box] = ndimage.map_coordinates(heart.astype(np.float32), src, order=1, mode="constant") >= 0.5
    allowed = anatomy.body & ~anatomy.bone
    if anatomy.aorta is not None:
        allowed &= ~anatomy.aorta
    new_heart = inside & allowed
    moved = out.hu.copy()
    moved[box] = ndimage.map_coordinates(anatomy.hu, src, order=1, mode="nearest")
    out.hu[new_heart] = moved[new_heart]
    out.heart = new_heart | (heart & allowed)
    out.lungs = anatomy.lungs & ~out.heart
    return out


def insert_medical_material(anatomy: BaseAnatomy, rng: np.random.Generator) -> BaseAnatomy:
    """Medical material: a cardiac device (pacemaker or port) as metal > 2000 HU: a 2-voxel-thick disk of
    12-20 mm radius under the anterior upper chest wall and a one-voxel lead from it to the heart (or,
    without a heart, to the mediastinum at the lowest lung slice)."""
    out = anatomy.copy()
    s = anatomy.spacing_mm
    lungs, body = anatomy.lungs, anatomy.body
    lz = np.flatnonzero(lungs.any(axis=(1, 2)))
    x_mid = float(np.argwhere(lungs)[:, 2].mean())
    side = rng.choice([-1.0, 1.0])
    k = int(lz[0] + rng.uniform(0.6, 0.85) * (lz[-1] - lz[0]))
    lung_x = np.argwhere(lungs[k])[:, 1]
    x = int(np.clip(x_mid + side * 0.6 * (lung_x.max() - lung_x.min()) / 2, 0, anatomy.shape[2] - 1))
    ys = np.flatnonzero(body[k, :, x])
    y = int(min(ys[0] + round(12.0 / s), ys[-1]))
    centre = np.array([k, y, x], dtype=np.float32)
    radius = rng.uniform(12.0, 20.0)
    box = _box(anatomy.shape, centre, centre, radius / s + 1)
    g = _grid(anatomy.shape, box)
    disk = np.zeros(anatomy.shape, dtype=bool)
    disk[box] = ((((g[0] - centre[0]) * s) ** 2 + ((g[2] - centre[2]) * s) ** 2) <= radius**2) & (
        np.abs(g[1] - centre[1]) <= 1
    )
    if anatomy.has("heart"):
        end = np.argwhere(anatomy.heart).mean(0)
    else:
        end = np.array([lz[0], np.argwhere(lungs[lz[0]])[:, 0].mean(), x_mid])
    via = np.array([min(k + 10.0 / s, anatomy.shape[0] - 1), centre[1] + 25.0 / s, x_mid - 10.0 / s])
    path = np.zeros(anatomy.shape, dtype=bool)
    for a, b in ((centre, via), (via, end)):
        for t in np.linspace(0.0, 1.0, int(np.abs(b - a).max() * 2) + 2):
            p = np.clip(np.rint(a + t * (b - a)).astype(int), 0, np.array(anatomy.shape) - 1)
            path[tuple(p)] = True
    metal = (disk | path) & body
    out.hu[metal] = rng.uniform(2200.0, 3071.0, int(metal.sum())).astype(np.float32)
    return out


# Applied in this order: geometry (heart size, fluid) first, then parenchyma, then calcium and metal.
FINDING_INSERTERS: dict[str, Inserter] = {
    "Cardiomegaly": insert_cardiomegaly,
    "Pericardial effusion": insert_pericardial_effusion,
    "Pleural effusion": insert_pleural_effusion,
    "Emphysema": insert_emphysema,
    "Lung opacity": insert_lung_opacity,
    "Consolidation": insert_consolidation,
    "Lung nodule": insert_nodule,
    "Arterial wall calcification": insert_arterial_wall_calcification,
    "Coronary artery wall calcification": insert_coronary_calcification,
    "Medical material": insert_medical_material,
}
REQUIRES: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("heart",),
    "Pericardial effusion": ("heart",),
    "Pleural effusion": ("lungs",),
    "Emphysema": ("lungs",),
    "Lung opacity": ("lungs",),
    "Consolidation": ("lungs",),
    "Lung nodule": ("lungs",),
    "Arterial wall calcification": ("aorta",),
    "Coronary artery wall calcification": ("heart",),
    "Medical material": ("lungs", "body"),
}


def can_insert(anatomy: BaseAnatomy, finding: str) -> bool:
    """Whether ``anatomy`` has every structure ``finding`` needs (``REQUIRES``)."""
    return all(anatomy.has(s) for s in REQUIRES[finding])
