"""Line integrals by Joseph's method (P. M. Joseph, "An improved algorithm for reprojecting rays through
pixel images", IEEE Trans. Med. Imaging 1(3):192-196, 1982), the fast path of ``ctlib.physics.drr``.

Each ray is cut by the planes of voxel centres across the axis it runs most along (``argmax |d|``, so
a cone beam at 45 degrees splits its rays between the x- and y-planes). At every cut the plane is
sampled bilinearly (``grid_sample`` on the plane stack, edge values clamped) and weighted by the length
of the ray inside that plane's one-voxel slab clipped to the ray's box segment ``[t_in, t_out]``:

    L = sum_j w_j mu_j,   w_j = |[t_j - h, t_j + h] ∩ [t_in, t_out]|,   t_j = (c_j - o_a) / d_a,
    h = spacing_a / (2 |d_a|)

so the weights add up to the chord exactly and the samples follow the voxels (one per plane) instead of
a fixed count per ray. A 2-D bilinear lookup in one plane stays in cache, where a 3-D trilinear lookup
over a 512 x 512 x 133 CT keeps leaving it: about 4 ns against 60 ns per sample on one CPU core
(measured), which is where the speed comes from.

Coordinates follow ``ctlib.physics.drr``: volumes ``(B, D, H, W) = (z, y, x)``, rays in LPS mm
``(x, y, z)`` from the volume centre, voxel ``[k, j, i]`` at
``((i - (W-1)/2) dx, (j - (H-1)/2) dy, (k - (D-1)/2) dz)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CPU_CHUNK = 1 << 16  # samples per grid_sample call on a CPU: fastest on one core (measured, 2^15..2^22)
GPU_CHUNK = 1 << 22  # elsewhere: fewer, larger kernels
_TENSOR_DIM = {0: 3, 1: 2, 2: 1}  # world axis (x, y, z) -> tensor dim of (B, D, H, W)


def plane_stack(volumes: torch.Tensor, axis: int) -> torch.Tensor:
    """The planes of ``volumes (B, D, H, W)`` across world ``axis`` (0 x, 1 y, 2 z) as ``(P, B, n1, n2)``,
    the other two tensor dims in order. x-planes are copied by one 2-D transpose (3x faster than a
    permuted copy on a CPU, measured); y-planes keep contiguous rows as a view, z-planes are a view."""
    batch, depth, height, width = volumes.shape
    if axis == 0:
        return volumes.reshape(-1, width).t().contiguous().reshape(width, batch, depth, height)
    return volumes.movedim(_TENSOR_DIM[axis], 0)


def plane_integrals(
    volumes: torch.Tensor,
    spacing_mm: tuple[float, float, float],
    origins: torch.Tensor,
    directions: torch.Tensor,
    t_in: torch.Tensor,
    t_out: torch.Tensor,
    chunk_elements: int | None = None,
) -> torch.Tensor:
    """``sum_j w_j mu(ray ∩ plane j)`` for ``volumes (B, D, H, W)`` and rays ``(R, 3)`` with unit
    ``directions``, integrated over ``[t_in, t_out]`` ``(R,)`` (``t_out <= t_in``: 0). Returns ``(B, R)``
    in the volumes' dtype and device. Ray tensors are best float64 (the setup is per ray, cheap);
    the per-sample work runs in the volumes' dtype. Differentiable with respect to ``volumes``.
    ``chunk_elements``: samples per ``grid_sample`` call (default ``CPU_CHUNK`` or ``GPU_CHUNK``)."""
    batch, depth, height, width = volumes.shape
    dtype, device = volumes.dtype, volumes.device
    chunk = chunk_elements or (CPU_CHUNK if device.type == "cpu" else GPU_CHUNK)
    o, d = origins.double().cpu(), directions.double().cpu()
    t_in, t_out = t_in.double().cpu(), t_out.double().cpu()
    spacing = torch.tensor([spacing_mm[2], spacing_mm[1], spacing_mm[0]], dtype=torch.float64)  # (x, y, z)
    sizes = torch.tensor([width, height, depth], dtype=torch.float64)
    half_centres = (sizes - 1) / 2 * spacing  # grid_sample's -1 and 1 (align_corners=True)
    out = volumes.new_zeros(batch, o.shape[0])
    axis_of = d.abs().argmax(dim=1)
    for axis in range(3):
        rays = torch.nonzero((axis_of == axis) & (t_out > t_in)).squeeze(1)
        if rays.numel() == 0:
            continue
        planes = plane_stack(volumes, axis)  # (P, B, n1, n2)
        row_axis, col_axis = (k for k in (2, 1, 0) if k != axis)  # world axes of n1 (grid y), n2 (grid x)
        inv = 1.0 / d[rays, axis]
        t0 = -o[rays, axis] * inv  # t at the plane through the centre; t_j = t0 + c_j inv
        # grid_sample coordinates (x = col, y = row) at plane c are affine in c: grid_a + c grid_b, (r, 2)
        in_plane = [col_axis, row_axis]
        scale = half_centres[in_plane]
        grid_a = (o[rays][:, in_plane] + t0[:, None] * d[rays][:, in_plane]) / scale
        grid_b = inv[:, None] * d[rays][:, in_plane] / scale
        to = {"dtype": dtype, "device": device}
        grid_a, grid_b = grid_a.to(**to), grid_b.to(**to)
        half_slab = (spacing[axis] / 2 * inv.abs()).to(**to)
        t0, inv = t0.to(**to), inv.to(**to)
        lo, hi = t_in[rays].to(**to), t_out[rays].to(**to)
        n_planes = planes.shape[0]
        step = max(1, chunk // rays.numel())
        acc = volumes.new_zeros(batch, rays.numel())
        # split, not slicing: its backward assembles the gradient in one pass (CT backward: 48 s -> 0.5 s)
        for j0, chunk_planes in zip(range(0, n_planes, step), planes.split(step), strict=True):
            j = torch.arange(j0, j0 + chunk_planes.shape[0], device=device, dtype=dtype)
            c = (j - (n_planes - 1) / 2) * float(spacing[axis])  # plane positions (p,) in mm
            grid = torch.addcmul(grid_a, c[:, None, None], grid_b)  # (p, r, 2)
            t_c = torch.addcmul(t0, c[:, None], inv)  # (p, r)
            w = (torch.minimum(t_c + half_slab, hi) - torch.maximum(t_c - half_slab, lo)).clamp(min=0.0)
            samples = F.grid_sample(
                chunk_planes, grid[:, None], mode="bilinear", padding_mode="border", align_corners=True
            )  # (p, B, 1, r)
            acc = acc + (samples[:, :, 0] * w[:, None]).sum(dim=0)
        out = out.index_copy(1, rays.to(device), acc)
    return out
