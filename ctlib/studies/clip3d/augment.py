"""Seeded anatomy augmentation for the generated demonstration set: more variety from few real bases.

``deform_anatomy``: random z crop that keeps the whole lung (and heart) height plus a random margin,
then a smooth random elastic deformation (Gaussian noise on a coarse control grid, upsampled
trilinearly, ``max_shift_mm`` at most) applied with one ``grid_sample`` to the HU and, thresholded
at 0.5, to every mask. ``perturb_intensity``: ``hu * scale + offset`` (soft tissue and air move
together by a few percent, as between scanners and kernels) plus Gaussian noise, applied after the
findings so that they are noisy too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ctlib.studies.clip3d.anatomy import STRUCTURES, BaseAnatomy


def crop_z(
    anatomy: BaseAnatomy, rng: np.random.Generator, *, margin_mm: tuple[float, float] = (6.0, 60.0)
) -> BaseAnatomy:
    """Random z crop keeping every slice with lung or heart plus a random margin of ``margin_mm``."""
    keep = anatomy.lungs.any(axis=(1, 2))
    if anatomy.heart is not None:
        keep |= anatomy.heart.any(axis=(1, 2))
    zs = np.flatnonzero(keep)
    if zs.size == 0:
        return anatomy
    lo_m, hi_m = (int(round(rng.uniform(*margin_mm) / anatomy.spacing_mm)) for _ in range(2))
    z0, z1 = max(0, zs[0] - lo_m), min(anatomy.shape[0], zs[-1] + 1 + hi_m)
    cut = slice(z0, z1)
    arrays = {s: (None if getattr(anatomy, s) is None else getattr(anatomy, s)[cut]) for s in STRUCTURES}
    origin = tuple(np.asarray(anatomy.origin) + np.array([0.0, 0.0, z0 * anatomy.spacing_mm]))
    return anatomy.replace(hu=anatomy.hu[cut], origin=origin, **arrays)


def elastic(
    anatomy: BaseAnatomy, rng: np.random.Generator, *, max_shift_mm: float = 8.0, control_mm: float = 60.0
) -> BaseAnatomy:
    """Smooth random elastic deformation (coarse random displacement grid, trilinear upsampling)."""
    shape = anatomy.shape
    coarse = [max(2, int(round(n * anatomy.spacing_mm / control_mm)) + 1) for n in shape]
    disp = rng.uniform(-1.0, 1.0, (1, 3, *coarse)).astype(np.float32)
    field = F.interpolate(torch.from_numpy(disp), size=shape, mode="trilinear", align_corners=True)[0]
    # grid_sample coordinates are in [-1, 1] per axis, ordered (x, y, z): shift of 1 voxel = 2 / (n - 1)
    scale = torch.tensor([max_shift_mm / anatomy.spacing_mm * 2.0 / max(1, n - 1) for n in shape])
    base = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij"))
    grid = (base + field * scale[:, None, None, None]).permute(1, 2, 3, 0).flip(-1)[None]
    hu = F.grid_sample(
        torch.from_numpy(anatomy.hu)[None, None],
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )[0, 0].numpy()
    # Masks travel as the bits of one channel, sampled by nearest neighbour (exact in float32: 5 bits).
    names = [s for s in STRUCTURES if getattr(anatomy, s) is not None]
    code = sum(getattr(anatomy, s).astype(np.float32) * float(2**i) for i, s in enumerate(names))
    warped = (
        F.grid_sample(
            torch.from_numpy(np.asarray(code, dtype=np.float32))[None, None],
            grid,
            mode="nearest",
            padding_mode="border",
            align_corners=True,
        )[0, 0]
        .numpy()
        .astype(np.int32)
    )
    masks = {s: (warped >> i & 1).astype(bool) for i, s in enumerate(names)}
    return anatomy.replace(hu=np.ascontiguousarray(hu), **masks)


def deform_anatomy(
    anatomy: BaseAnatomy, rng: np.random.Generator, *, max_shift_mm: float = 8.0
) -> BaseAnatomy:
    """Random z crop, then smooth elastic deformation (module docstring); the input is not modified."""
    return elastic(crop_z(anatomy, rng), rng, max_shift_mm=max_shift_mm)


def perturb_intensity(
    hu: np.ndarray,
    rng: np.random.Generator,
    *,
    scale_range: tuple[float, float] = (0.97, 1.03),
    offset_hu: float = 15.0,
    noise_sd_hu: tuple[float, float] = (5.0, 25.0),
) -> np.ndarray:
    """``hu * scale + offset + N(0, sd)`` with scale, offset and sd drawn once per volume; float32 copy."""
    scale = rng.uniform(*scale_range)
    offset = rng.uniform(-offset_hu, offset_hu)
    sd = rng.uniform(*noise_sd_hu)
    return (hu * scale + offset + rng.normal(0.0, sd, hu.shape)).astype(np.float32)
