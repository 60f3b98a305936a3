"""Heuristic chest masks for bases without organ labels: lungs, bone, heart and descending aorta.

All functions take ``(z, y, x)`` HU on an isotropic LPS grid (x index to the patient's left, y
posterior, z superior) with ``spacing_mm`` and return bool masks of the same shape. They are
threshold + connected-component + geometry rules, checked against the TotalSegmentator-style labels of
the embedded chest CT (``tests/test_clip3d_synthetic.py`` asserts the Dice), not segmentation models:

- lungs: ``hu < -400`` inside the body, components of at least 5% of the largest (so the stomach
  bubble and bowel gas drop out), vessel holes under 4 cm^2 filled per slice. The trachea and main
  bronchi stay in (they are connected to the lungs at this threshold).
- bone: ``hu > bone_hu`` inside the body (250 HU; 700 HU for contrast scans, whose blood pool reaches
  400 HU), components of at least 0.5 cm^3.
- heart: soft tissue (> -120 HU, not bone) between the lungs (inside the per-slice convex hull of
  the lung mask), in the 25-70% band of the lung height and anterior of ``lung centre + 15% of the
  lung depth``; opened with a 9 mm ball, largest component, holes filled. Contrast scans merge the
  ascending aorta and the pulmonary trunk into it.
- descending aorta (non-contrast scans): per slice, the deepest point of soft tissue (-60..150 HU)
  off the heart, in front of the vertebral body (the largest > 150 HU region near the midline) and
  at most 10 mm right of its centre, touching the left lung, taken as a disk of that depth (8-18 mm
  radius); the longest z-continuous track is kept and median-filtered. A tube model of the
  descending thoracic aorta only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, spatial


def _ball(radius_vox: int) -> np.ndarray:
    r = int(radius_vox)
    g = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (g**2).sum(0) <= r * r


def _largest(mask: np.ndarray, keep_fraction: float = 1.0) -> np.ndarray:
    """Largest connected component (6-connectivity), plus those of at least ``keep_fraction`` of it."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= keep_fraction * sizes.max()
    keep[0] = False
    return keep[labels]


def _hull2d(mask: np.ndarray) -> np.ndarray:
    """Convex hull of a 2-D bool mask (Delaunay triangulation of its pixels' corners)."""
    pts = np.argwhere(mask)
    if len(pts) < 3 or np.linalg.matrix_rank(pts - pts.mean(0)) < 2:
        return mask.copy()
    corners = (pts[:, None, :] + np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])).reshape(
        -1, 2
    )
    hull = spatial.ConvexHull(corners)
    tri = spatial.Delaunay(corners[hull.vertices])
    (y0, x0), (y1, x1) = pts.min(0), pts.max(0) + 1
    grid = np.stack(np.mgrid[y0:y1, x0:x1], axis=-1).reshape(-1, 2)
    out = np.zeros(mask.shape, dtype=bool)
    out[y0:y1, x0:x1] = (tri.find_simplex(grid) >= 0).reshape(y1 - y0, x1 - x0)
    return out


def between_lungs(lungs: np.ndarray) -> np.ndarray:
    """Convex hull of the lungs per axial slice, lungs excluded (the mediastinum and the spine)."""
    out = np.zeros(lungs.shape, dtype=bool)
    for k in np.flatnonzero(lungs.any(axis=(1, 2))):
        out[k] = _hull2d(lungs[k])
    return out & ~lungs


def lung_mask(hu: np.ndarray, body: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Lungs: ``hu < -400`` in the body, components >= 5% of the largest, small holes filled per slice."""
    low = (hu < -400.0) & body
    low = ndimage.binary_opening(low, structure=ndimage.generate_binary_structure(3, 1))
    lungs = _largest(low, keep_fraction=0.05)
    max_hole_vox = 400.0 / spacing_mm**2  # 4 cm^2: vessels and nodules, not the mediastinum
    for k in range(lungs.shape[0]):
        if not lungs[k].any():
            continue
        holes = ndimage.binary_fill_holes(lungs[k]) & ~lungs[k]
        labels, n = ndimage.label(holes)
        if n:
            sizes = np.bincount(labels.ravel())
            small = sizes <= max_hole_vox
            small[0] = False
            lungs[k] |= small[labels]
    return lungs


def bone_mask(hu: np.ndarray, body: np.ndarray, spacing_mm: float, bone_hu: float = 250.0) -> np.ndarray:
    """Bone: ``hu > bone_hu`` in the body, components of at least 0.5 cm^3."""
    labels, n = ndimage.label((hu > bone_hu) & body)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel()) * spacing_mm**3
    keep = sizes >= 500.0
    keep[0] = False
    return keep[labels]


def _lung_extent(lungs: np.ndarray) -> tuple[int, int, float, float]:
    """z range of the lungs (first, last slice) and the lung centre and depth along y (voxels)."""
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    ys = np.flatnonzero(lungs.any(axis=(0, 2)))
    centre_y = float(np.argwhere(lungs)[:, 1].mean())
    return int(zs[0]), int(zs[-1]), centre_y, float(ys[-1] - ys[0] + 1)


def heart_mask(hu: np.ndarray, lungs: np.ndarray, bone: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Heart: soft tissue between the lungs, low in the chest and anterior (module docstring)."""
    if not lungs.any():
        return np.zeros(hu.shape, dtype=bool)
    z0, z1, centre_y, depth_y = _lung_extent(lungs)
    candidate = between_lungs(lungs) & (hu > -120.0) & ~ndimage.binary_dilation(bone, iterations=1)
    height = z1 - z0 + 1
    candidate[: z0 + int(0.25 * height)] = False
    candidate[z0 + int(np.ceil(0.70 * height)) :] = False
    candidate[:, int(centre_y + 0.15 * depth_y) :] = False
    radius = max(1, int(round(9.0 / spacing_mm)))
    opened = ndimage.binary_opening(candidate, structure=_ball(radius))
    heart = _largest(opened)
    if not heart.any():
        return heart
    heart = ndimage.binary_closing(heart, structure=_ball(1), iterations=1) & ~bone & ~lungs
    for k in np.flatnonzero(heart.any(axis=(1, 2))):
        heart[k] = ndimage.binary_fill_holes(heart[k])
    return heart & ~lungs


def _longest_track(centres: dict[int, tuple[float, float, float]], max_step_vox: float) -> list[int]:
    """The longest run of consecutive slices whose centres move less than ``max_step_vox`` per slice."""
    best: list[int] = []
    run: list[int] = []
    for k in sorted(centres):
        if run and (
            k != run[-1] + 1 or np.hypot(*np.subtract(centres[k][:2], centres[run[-1]][:2])) > max_step_vox
        ):
            run = []
        run.append(k)
        best = run if len(run) > len(best) else best
    return list(best)


def aorta_mask(
    hu: np.ndarray, lungs: np.ndarray, bone: np.ndarray, heart: np.ndarray, spacing_mm: float
) -> np.ndarray:
    """Descending thoracic aorta as a tube: per slice, the deepest soft-tissue point in front of and left
    of the vertebral body that touches the left lung; the longest z-continuous track, median-filtered.

    For non-contrast scans only (the blood pool must be below the 150 HU used to find the spine).
    """
    out = np.zeros(hu.shape, dtype=bool)
    if not lungs.any():
        return out
    s = spacing_mm
    between = between_lungs(lungs)
    soft = between & (hu > -60.0) & (hu < 150.0) & ~bone & ~ndimage.binary_dilation(heart)
    x_mid = float(np.argwhere(lungs)[:, 2].mean())
    near_lung = ndimage.binary_dilation(lungs, iterations=2)
    centres: dict[int, tuple[float, float, float]] = {}
    for k in np.flatnonzero(between.any(axis=(1, 2))):
        spine = (hu[k] > 150.0) & between[k]
        spine[:, : int(x_mid - 25.0 / s)] = False
        spine[:, int(x_mid + 25.0 / s) :] = False
        spine = _largest(spine)  # the vertebral body (ribs and calcified nodes are smaller)
        if spine.sum() * s**2 < 150.0:
            continue
        sy, sx = np.argwhere(spine).T
        front, centre_x = float(np.percentile(sy, 5)), float(np.median(sx))
        region = soft[k].copy()
        region[: max(0, int(front - 40.0 / s))] = False
        region[int(front + 15.0 / s) :] = False
        region[:, : max(0, int(centre_x - 10.0 / s))] = False
        region[:, int(centre_x + 40.0 / s) :] = False
        if not region.any():
            continue
        depth = ndimage.distance_transform_edt(region) * s
        j, i = np.unravel_index(int(np.argmax(depth)), depth.shape)
        r = float(min(depth[j, i], 18.0))
        yy, xx = np.ogrid[: hu.shape[1], : hu.shape[2]]
        rim = ((yy - j) ** 2 + (xx - i) ** 2) * s**2 <= (r + 2 * s) ** 2
        if r >= 8.0 and (rim & near_lung[k])[:, i:].any():
            centres[k] = (float(j), float(i), r)
    ks = _longest_track(centres, max_step_vox=10.0 / s)
    if len(ks) < 3:
        return out
    track = ndimage.median_filter(np.array([centres[k] for k in ks]), size=(5, 1), mode="nearest")
    yy, xx = np.mgrid[: hu.shape[1], : hu.shape[2]]
    for k, (j, i, r) in zip(ks, track, strict=True):
        out[k] = ((yy - j) ** 2 + (xx - i) ** 2) * s**2 <= max(r, 8.0) ** 2
    return out & ~bone & ~lungs


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2|A & B| / (|A| + |B|)`` of two bool masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total
