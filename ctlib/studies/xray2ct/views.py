"""The two X-ray views of a reconstruction: cone-beam geometry, angles (0 = PA, 90 = lateral), energy and
ray sampling, as one config stored with every model, and the differentiable renderer they define.

The volume is a cube of ``volume_size``^3 voxels of ``voxel_mm`` on the LPS grid, isocentre at its centre
(``ctlib.physics.drr`` conventions). Rendering is Beer-Lambert line integrals of ``mu = mu_water(E) (1 +
HU / 1000)``, never a plain sum of values (bug 10 of issue 14), at both angles (bug 6).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ctlib.config import ConfigDict
from ctlib.physics import attenuation, backproject, drr


@dataclasses.dataclass
class ViewGeometry(ConfigDict):
    """Cone-beam biplanar geometry of a pair set (defaults: X2CT-GAN's 541 / 949 mm)."""

    volume_size: int = 32
    voxel_mm: float = 8.0
    detector_size_mm: tuple[float, float] = (449.0, 449.0)
    detector_pixels: tuple[int, int] = (32, 32)
    source_to_isocentre_mm: float = 541.0
    source_to_detector_mm: float = 949.0
    angles_deg: tuple[float, ...] = (0.0, 90.0)
    energy_kev: float = 60.0
    n_samples: int = 128  # ray-march samples per ray

    def __post_init__(self) -> None:
        self.detector_size_mm = tuple(float(x) for x in self.detector_size_mm)
        self.detector_pixels = tuple(int(x) for x in self.detector_pixels)
        self.angles_deg = tuple(float(a) for a in self.angles_deg)
        if self.volume_size < 2 or self.voxel_mm <= 0 or self.n_samples < 1 or not self.angles_deg:
            raise ValueError(
                f"ViewGeometry: need volume_size >= 2, voxel_mm > 0, n_samples >= 1, angles; got {self}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` of the volume."""
        return (self.volume_size,) * 3

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """``(dz, dy, dx)``, isotropic."""
        return (float(self.voxel_mm),) * 3

    def cone(self) -> drr.ConeBeam:
        """The ``ctlib.physics.drr`` geometry."""
        return drr.ConeBeam(
            source_to_isocentre_mm=self.source_to_isocentre_mm,
            source_to_detector_mm=self.source_to_detector_mm,
            detector_size_mm=self.detector_size_mm,
            detector_pixels=self.detector_pixels,
        )

    @classmethod
    def from_pair_file(cls, pairs: Any, n_samples: int | None = None) -> ViewGeometry:
        """The geometry a ``pairs.PairFile`` was rendered with (optionally another ray sampling)."""
        cone = pairs.geometry
        return cls(
            volume_size=int(round(pairs.fov_mm / pairs.spacing_mm[0])),
            voxel_mm=float(pairs.spacing_mm[0]),
            detector_size_mm=tuple(cone.detector_size_mm),
            detector_pixels=tuple(cone.detector_pixels),
            source_to_isocentre_mm=float(cone.source_to_isocentre_mm),
            source_to_detector_mm=float(cone.source_to_detector_mm),
            angles_deg=tuple(pairs.angles_deg),
            energy_kev=float(pairs.energy_kev),
            n_samples=int(n_samples or pairs.n_samples),
        )

    def render_mu(self, mu: torch.Tensor) -> torch.Tensor:
        """Line integrals ``(B, V, rows, cols)`` of attenuation volumes ``(B, D, H, W)`` in 1/mm."""
        return drr.render(mu, self.spacing_mm, self.cone(), list(self.angles_deg), n_samples=self.n_samples)

    def render_hu(self, hu: torch.Tensor) -> torch.Tensor:
        """Line integrals ``(B, V, rows, cols)`` of HU volumes ``(B, D, H, W)`` (differentiable)."""
        return self.render_mu(attenuation.hu_to_mu(hu, self.energy_kev))

    def detector_grids(self) -> torch.Tensor:
        """``(V, D, H, W, 2)``: where every voxel projects on each view's detector (``backproject``)."""
        return torch.stack(
            [
                backproject.voxel_detector_grid(self.shape, self.spacing_mm, self.cone(), a)
                for a in self.angles_deg
            ]
        )

    def chord_lengths_mm(self) -> torch.Tensor:
        """``(V, rows, cols)``: each ray's length inside the volume box."""
        return torch.stack(
            [
                backproject.chord_lengths_mm(self.shape, self.spacing_mm, self.cone(), a)
                for a in self.angles_deg
            ]
        )
