"""The one in-memory CT type, ``Volume``, and its geometry.

Conventions (stated once, here; everything else converts at the boundary):

- ``array`` is ``(z, y, x)`` float32 in Hounsfield units; axis 0 is the slice axis.
  Network tensors are ``(B, C, D, H, W)`` with ``D = z``, ``H = y``, ``W = x``.
- ``spacing`` is ``(dz, dy, dx)`` in mm.
- Patient coordinates are DICOM LPS (x to the patient's left, y posterior, z superior), in mm.
- ``origin`` is the LPS position of the centre of voxel ``[0, 0, 0]``.
- ``direction`` is a 3x3 matrix whose columns are the LPS unit vectors of increasing x index
  (column), y index (row) and z index (slice), in that order. So the voxel ``array[k, j, i]`` sits at
  ``origin + direction @ (i * dx, j * dy, k * dz)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """A CT volume in HU with the geometry needed to write it back exactly."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = "CT"
    slice_thickness_mm: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=np.float32)
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3-D (z, y, x), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if len(self.spacing) != 3 or min(self.spacing) <= 0 or not np.all(np.isfinite(self.spacing)):
            raise ValueError(
                f"Volume.spacing must be three positive numbers (dz, dy, dx) in mm, got {self.spacing}"
            )
        if not np.allclose(self.direction.T @ self.direction, np.eye(3), atol=1e-4):
            raise ValueError(f"Volume.direction must be orthonormal, got\n{self.direction}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` voxel counts."""
        return tuple(int(n) for n in self.array.shape)

    @property
    def slice_normal(self) -> np.ndarray:
        """LPS unit vector of increasing slice index."""
        return self.direction[:, 2]

    def index_to_lps(self) -> np.ndarray:
        """4x4 affine from voxel index ``(i, j, k, 1)`` = (x, y, z index) to LPS mm."""
        dz, dy, dx = self.spacing
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag([dx, dy, dz])
        affine[:3, 3] = self.origin
        return affine

    def index_to_ras(self) -> np.ndarray:
        """4x4 affine from voxel index ``(i, j, k, 1)`` to RAS mm (the NIfTI convention)."""
        affine = self.index_to_lps()
        affine[:3, :] = LPS_TO_RAS @ affine[:3, :]
        return affine

    def slice_positions(self) -> np.ndarray:
        """``(z, 3)`` LPS position of the first voxel of every slice (DICOM ImagePositionPatient)."""
        k = np.arange(self.shape[0], dtype=np.float64)
        return np.asarray(self.origin)[None, :] + k[:, None] * self.spacing[0] * self.slice_normal[None, :]

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A copy with a new array (same geometry unless ``changes`` says otherwise)."""
        return replace(self, array=array, meta=dict(self.meta), **changes)

    def hu_range(self) -> tuple[float, float]:
        """``(min, max)`` of the array in HU."""
        return float(self.array.min()), float(self.array.max())

    def __repr__(self) -> str:
        z, y, x = self.shape
        dz, dy, dx = self.spacing
        return (
            f"Volume(shape=(z={z}, y={y}, x={x}), spacing_mm=({dz:.3g}, {dy:.3g}, {dx:.3g}), "
            f"modality={self.modality})"
        )


def from_index_to_lps(
    array: np.ndarray, affine_lps: np.ndarray, **fields: Any
) -> Volume:
    """Build a Volume from a ``(z, y, x)`` array and a 4x4 index (i, j, k) -> LPS affine."""
    affine_lps = np.asarray(affine_lps, dtype=np.float64)
    columns = affine_lps[:3, :3]
    sizes = np.linalg.norm(columns, axis=0)
    if np.any(sizes <= 0):
        raise ValueError(f"degenerate affine (a zero-length axis):\n{affine_lps}")
    direction = columns / sizes
    dx, dy, dz = sizes
    return Volume(
        array=array, spacing=(dz, dy, dx), origin=tuple(affine_lps[:3, 3]), direction=direction, **fields
    )
