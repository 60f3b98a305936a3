"""DiffDRR 0.6.1 (Gopalakrishnan & Golland, "Fast auto-differentiable digitally reconstructed radiographs
for solving inverse problems in intraoperative imaging", CLIP 2022) as the reference renderer for
``ctlib.physics.drr``: same mu volume, cone-beam geometry and detector, through DiffDRR's own pose API.

Mapping (checked, not assumed: ``geometry_mismatch_mm`` compares DiffDRR's source and detector pixel
positions with ``drr.detector_rays``; 3e-5 mm measured):
- volume: our LPS ``mu (D, H, W)`` as a torchio image ``(1, W, H, D)`` with the affine ``diag(-dx, -dy,
  dz)`` (index -> RAS mm); DiffDRR centres it on the same voxel-centre midpoint. Its ``density`` buffer
  is replaced by ``mu`` itself, so it renders physical line integrals (its own HU -> density map is unused).
- view ``theta``: ``read(orientation="PA")``, pose ``euler_angles`` ``ZXY`` rotation ``(theta, 0, 0)`` rad,
  translation ``(0, -SID, 0)``; ``sdd = SDD``, ``delx`` / ``dely`` the detector pitch (cols / rows).

Install it without its heavy dependencies (pyvista[all], torchvision, timm, roma are not needed to
render): ``pip install --no-deps diffdrr==0.6.1 && pip install torchio fastcore kornia pandas``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ctlib.physics.drr import ConeBeam, detector_rays

INSTALL = "pip install --no-deps diffdrr==0.6.1 && pip install torchio fastcore kornia pandas"
LPS_TO_RAS = torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)


def version() -> str | None:
    """The installed DiffDRR version, or ``None`` when it (or a dependency it renders with) is missing."""
    try:
        import diffdrr
        from diffdrr.drr import DRR  # noqa: F401  (needs torchio, fastcore, kornia)
    except ImportError:
        return None
    return diffdrr.__version__


def module(
    mu: torch.Tensor,
    spacing_mm: tuple[float, float, float],
    geometry: ConeBeam,
    renderer: str,
    patch_size: int | None = None,
) -> torch.nn.Module:
    """A DiffDRR ``DRR`` of ``mu (D, H, W)`` (1/mm, LPS) with our detector: ``renderer`` is "siddon" or
    "trilinear"; ``patch_size`` renders the rays in chunks of ``patch_size**2`` (DiffDRR's memory bound)."""
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from torchio import ScalarImage

    dz, dy, dx = (float(s) for s in spacing_mm)
    xyz = mu.detach().cpu().permute(2, 1, 0).contiguous()  # (W, H, D): DiffDRR indexes (i, j, k) = (x, y, z)
    image = ScalarImage(tensor=xyz[None], affine=np.diag([-dx, -dy, dz, 1.0]))
    rows, cols = geometry.detector_pixels
    size_v, size_u = geometry.detector_size_mm
    drr = DRR(read(image, orientation="PA"), sdd=geometry.source_to_detector_mm, height=rows, width=cols,
              delx=size_u / cols, dely=size_v / rows, renderer=renderer, patch_size=patch_size)
    drr.density = xyz  # physical mu instead of DiffDRR's HU -> density map
    return drr


def pose(geometry: ConeBeam, angle_deg: float, device: torch.device | str = "cpu"):  # -> RigidTransform
    """DiffDRR's pose of our view ``angle_deg`` (see the module docstring)."""
    from diffdrr.pose import convert

    rotation = torch.tensor([[math.radians(angle_deg), 0.0, 0.0]], device=device)
    translation = torch.tensor([[0.0, -geometry.source_to_isocentre_mm, 0.0]], device=device)
    return convert(rotation, translation, parameterization="euler_angles", convention="ZXY")


def render(drr: torch.nn.Module, geometry: ConeBeam, angle_deg: float, **kwargs: int) -> torch.Tensor:
    """DiffDRR's line integrals ``(rows, cols)`` of one view (kwargs go to its renderer, e.g. n_points)."""
    with torch.no_grad():
        return drr(pose(geometry, angle_deg, drr.density.device), **kwargs)[0, 0]


def geometry_mismatch_mm(drr: torch.nn.Module, geometry: ConeBeam, angle_deg: float) -> float:
    """Largest distance (mm) between DiffDRR's source / pixel positions and ours for one view."""
    source, target = drr.detector(pose(geometry, angle_deg), None)
    origins, directions, _, t_max = detector_rays(geometry, angle_deg, dtype=torch.float64)
    ours_source = origins[0] * LPS_TO_RAS
    ours_target = (origins + directions * t_max[:, None]) * LPS_TO_RAS
    return max(float((source[0, 0].double() - ours_source).abs().max()),
               float((target[0].double() - ours_target).abs().max()))
