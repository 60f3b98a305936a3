"""Back-projection: spreading detector images back along their rays into the volume (the transpose
direction of ``ctlib.physics.drr``), for feature lifting (X2CT-GAN, Ying et al. 2019, lift 2D features
to 3D along the view direction) and for unfiltered back-projection estimates.

Same conventions as ``ctlib.physics.drr``: volumes ``(D, H, W) = (z, y, x)`` on the LPS grid with the
isocentre at the volume centre, view angle ``theta`` about the superior axis (0 = PA, 90 = lateral),
image row 0 superior. Voxel centre ``p`` projects from the source ``S = SID * s`` onto the detector
plane ``{q : q . s = -(SDD - SID)}`` at ``q = S + lambda (p - S)`` with ``lambda = SDD / (SID - p . s)``
(cone beam), or along ``-s`` (parallel beam); the detector coordinates are ``u = q . u_axis`` (columns)
and ``v = q . v_axis`` (rows, ``v_axis = -z``). Images are sampled bilinearly there (zeros off the
detector), so a voxel receives the value of the detector pixel its central ray hits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ctlib.physics.drr import ConeBeam, Geometry, ParallelBeam, detector_rays, ray_box_segment


def voxel_centres_mm(
    shape: tuple[int, int, int], spacing_mm: tuple[float, float, float], dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """LPS mm of every voxel centre relative to the volume centre: ``(D, H, W, 3)`` as ``(x, y, z)``."""
    depth, height, width = (int(n) for n in shape)
    dz, dy, dx = (float(s) for s in spacing_mm)
    z = (torch.arange(depth, dtype=dtype) - (depth - 1) / 2) * dz
    y = (torch.arange(height, dtype=dtype) - (height - 1) / 2) * dy
    x = (torch.arange(width, dtype=dtype) - (width - 1) / 2) * dx
    zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def voxel_detector_grid(
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    geometry: Geometry,
    angle_deg: float,
) -> torch.Tensor:
    """Where each voxel centre projects on the detector of one view: ``(D, H, W, 2)`` float32 in
    ``grid_sample`` units (``(column, row)``, ``align_corners=True``: -1 and 1 are the edge pixel centres)."""
    theta = math.radians(float(angle_deg))
    s = torch.tensor([-math.sin(theta), math.cos(theta), 0.0], dtype=torch.float64)
    u_axis = torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=torch.float64)
    v_axis = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    p = voxel_centres_mm(shape, spacing_mm)
    if isinstance(geometry, ConeBeam):
        sid, sdd = geometry.source_to_isocentre_mm, geometry.source_to_detector_mm
        source = sid * s
        depth_along = p @ s  # p . s
        if bool((depth_along >= sid).any()):
            raise ValueError(f"voxels at or behind the source plane (SID {sid} mm): the volume is too large")
        lam = sdd / (sid - depth_along)
        q = source + lam[..., None] * (p - source)
    elif isinstance(geometry, ParallelBeam):
        q = p
    else:
        raise TypeError(f"geometry must be ConeBeam or ParallelBeam, got {type(geometry).__name__}")
    rows, cols = (int(n) for n in geometry.detector_pixels)
    size_v, size_u = (float(x) for x in geometry.detector_size_mm)
    half_u = (cols - 1) / 2 * (size_u / cols)
    half_v = (rows - 1) / 2 * (size_v / rows)
    u = (q @ u_axis) / half_u if cols > 1 else torch.zeros_like(q[..., 0])
    v = (q @ v_axis) / half_v if rows > 1 else torch.zeros_like(q[..., 0])
    return torch.stack([u, v], dim=-1).float()


def backproject(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Lift detector images ``(B, C, rows, cols)`` along the rays of ``grid`` (``voxel_detector_grid``,
    ``(D, H, W, 2)``) into volumes ``(B, C, D, H, W)``: every voxel takes the bilinear image value where it
    projects (0 off the detector). Differentiable with respect to ``images``."""
    if images.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(
            f"backproject: expected images (B, C, rows, cols) and grid (D, H, W, 2), got "
            f"{tuple(images.shape)} and {tuple(grid.shape)}"
        )
    batch = images.shape[0]
    depth, height, width, _ = grid.shape
    flat = grid.to(device=images.device, dtype=images.dtype).reshape(1, depth * height, width, 2)
    lifted = F.grid_sample(
        images, flat.expand(batch, -1, -1, -1), mode="bilinear", padding_mode="zeros", align_corners=True
    )  # (B, C, D*H, W)
    return lifted.reshape(batch, images.shape[1], depth, height, width)


def chord_lengths_mm(
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    geometry: Geometry,
    angle_deg: float,
    extent: str = "voxels",
) -> torch.Tensor:
    """Length (mm) of every detector pixel's ray inside the volume box of ``drr.render``'s ``extent``
    (``"voxels"``: whole voxels; ``"centres"``: between edge voxel centres): ``(rows, cols)`` float32; 0 where
    the ray misses."""
    if extent not in ("voxels", "centres"):
        raise ValueError(f"extent must be 'voxels' or 'centres', got {extent!r}")
    sizes = [n if extent == "voxels" else n - 1 for n in (int(n) for n in shape)]
    depth, height, width = sizes
    dz, dy, dx = (float(s) for s in spacing_mm)
    half = torch.tensor([width * dx / 2, height * dy / 2, depth * dz / 2], dtype=torch.float64)
    origins, directions, t_min, t_max = detector_rays(geometry, angle_deg, dtype=torch.float64)
    _, length = ray_box_segment(origins, directions, half, t_min, t_max)
    rows, cols = (int(n) for n in geometry.detector_pixels)
    return length.reshape(rows, cols).float()
