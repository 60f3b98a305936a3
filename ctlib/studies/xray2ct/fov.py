"""A CT resampled to a fixed physical field of view: a cube of ``fov_mm`` side and ``size``^3 voxels.

Every case of the study lives on the same grid, so one network sees one physical scale and one DRR
geometry fits every case:

- The cube is axis-aligned on the LPS grid (``reorient_to_lps``; array axes ``(z, y, x)``), isotropic
  spacing ``fov_mm / size``, centred on the centre of the body's bounding box (``ctlib.data.body_mask``
  on a grid of about ``MASK_SPACING_MM``), so the table and the air around the patient do not shift it.
- Values are trilinear samples of the HU volume; when the cube is coarser than the source along an axis,
  the source is first smoothed by a Gaussian of ``sigma = (factor - 1) / 2`` source voxels, ``factor``
  being the ratio of spacings (the anti-aliasing rule of ``skimage.transform.resize``).
- Outside the source's voxel box (edge voxel centres plus half a voxel) the cube holds air, ``AIR_HU``.

Default ``fov_mm = 256``: the head and neck (the OpenKBP patients, most of the data) fit laterally and in
depth, and ``256 / 64 = 4 mm`` (CPU) is about OpenKBP's native in-plane spacing (4.6-4.7 mm) while
``256 / 128 = 2 mm`` (GPU) keeps bone edges; a chest (about 330 mm wide) is cut at the lateral ribs and arms
(X2CT-GAN's chest set used 320 mm).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctlib.data.body_mask import body_mask
from ctlib.errors import CTInputError
from ctlib.io.orientation import reorient_to_lps
from ctlib.io.volume import Volume

AIR_HU = -1000.0
DEFAULT_FOV_MM = 256.0
MASK_SPACING_MM = 2.0  # the body mask is found on a grid decimated to about this spacing (speed)


def _name(volume: Volume) -> str:
    return str(volume.meta.get("source") or volume.meta.get("path") or "volume")


def body_centre_lps(volume: Volume, threshold_hu: float = -500.0) -> np.ndarray:
    """Centre of the body mask's bounding box in LPS mm ``(x, y, z)`` (``ctlib.data.body_mask``).

    The mask is computed on the volume decimated to about ``MASK_SPACING_MM``; raises ``CTInputError``
    when no voxel is above ``threshold_hu`` (no body).
    """
    lps = reorient_to_lps(volume)
    stride = [max(1, int(MASK_SPACING_MM // s)) for s in lps.spacing]  # (z, y, x)
    mask = body_mask(lps.array[:: stride[0], :: stride[1], :: stride[2]], threshold_hu=threshold_hu)
    if not mask.any():
        raise CTInputError(_name(volume), f"no body found (no connected region above {threshold_hu:g} HU)")
    idx = np.argwhere(mask)  # (n, 3) decimated (k, j, i)
    centre_kji = (idx.min(axis=0) + idx.max(axis=0)) / 2.0 * np.asarray(stride)
    return lps.index_to_lps()[:3] @ np.append(centre_kji[::-1], 1.0)


def fov_grid(centre_lps_mm: np.ndarray, fov_mm: float, size: int) -> tuple[float, tuple[float, float, float]]:
    """Spacing ``fov_mm / size`` and LPS origin (voxel ``[0, 0, 0]``'s centre) of the cube around a centre."""
    spacing = float(fov_mm) / int(size)
    origin = np.asarray(centre_lps_mm, dtype=np.float64) - spacing * (int(size) - 1) / 2.0
    return spacing, tuple(float(o) for o in origin)


def resample_to_fov(
    volume: Volume,
    fov_mm: float = DEFAULT_FOV_MM,
    size: int = 64,
    *,
    centre_lps_mm: np.ndarray | None = None,
    anti_alias: bool = True,
) -> Volume:
    """Trilinear resampling of a HU ``Volume`` to the ``(size, size, size)`` LPS cube of side ``fov_mm``.

    Centred on ``centre_lps_mm`` (LPS ``(x, y, z)`` mm; default the body's bounding-box centre,
    ``body_centre_lps``); air (``AIR_HU``) outside the source volume; Gaussian pre-filter when
    downsampling (``anti_alias``). ``meta`` keeps the source's and gains ``fov_centre_lps_mm``,
    ``source_shape`` and ``source_spacing_mm`` (LPS grid).
    """
    if not np.isfinite(fov_mm) or fov_mm <= 0:
        raise ValueError(f"fov_mm must be a positive length in mm, got {fov_mm}")
    if int(size) != size or size < 2:
        raise ValueError(f"size must be an integer >= 2 voxels, got {size}")
    size = int(size)
    lps = reorient_to_lps(volume)
    centre = body_centre_lps(lps) if centre_lps_mm is None else np.asarray(centre_lps_mm, dtype=np.float64)
    if centre.shape != (3,) or not np.all(np.isfinite(centre)):
        raise ValueError(f"centre_lps_mm must be three finite LPS coordinates (x, y, z), got {centre_lps_mm}")
    spacing, origin = fov_grid(centre, fov_mm, size)

    # Continuous source index (i, j, k) of every target voxel: index = A^-1 (p - origin_src).
    to_index = np.linalg.inv(lps.index_to_lps()[:3, :3])
    axis = np.arange(size) * spacing
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=0).reshape(3, -1)  # (z, y, x) offsets
    points = np.asarray(origin)[:, None] + grid[::-1]  # (3, N) LPS (x, y, z)
    ijk = to_index @ (points - np.asarray(lps.origin)[:, None])  # (3, N) (i, j, k)
    kji = ijk[::-1]
    shape = np.asarray(lps.shape)
    inside = np.all((kji >= -0.5) & (kji <= shape[:, None] - 0.5), axis=0)
    out = np.full(size**3, AIR_HU, dtype=np.float32)
    if inside.any():
        # Work on the source crop the cube touches (plus the filter's reach), not the whole volume.
        factors = spacing / np.asarray(lps.spacing)
        sigma = np.maximum(0.0, (factors - 1.0) / 2.0) if anti_alias else np.zeros(3)
        margin = np.ceil(4.0 * sigma).astype(int) + 2
        lo = np.maximum(np.floor(kji[:, inside].min(axis=1)).astype(int) - margin, 0)
        hi = np.minimum(np.ceil(kji[:, inside].max(axis=1)).astype(int) + margin + 1, shape)
        crop = lps.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
        if np.any(sigma > 0):
            crop = ndimage.gaussian_filter(crop, sigma=tuple(sigma), mode="nearest")
        out[inside] = ndimage.map_coordinates(
            crop, kji[:, inside] - lo[:, None], order=1, mode="nearest", prefilter=False
        )
    meta = dict(volume.meta)
    meta.update(
        fov_centre_lps_mm=[float(c) for c in centre],
        source_shape=[int(n) for n in lps.shape],
        source_spacing_mm=[float(s) for s in lps.spacing],
    )
    return Volume(
        array=out.reshape(size, size, size),
        spacing=(spacing, spacing, spacing),
        origin=origin,
        direction=np.eye(3),
        modality=volume.modality,
        slice_thickness_mm=spacing,
        meta=meta,
    )
