"""The trivial reconstructions every learned one must beat: the training-mean volume, and the unfiltered
back-projection of both views with a linear HU calibration fitted on the training pairs."""

from __future__ import annotations

import numpy as np
import torch

from ctlib.physics import backproject
from ctlib.studies.xray2ct.views import ViewGeometry


def training_mean(volumes_hu: np.ndarray) -> np.ndarray:
    """The voxel-wise mean of the training volumes ``(N, D, H, W)`` -> ``(D, H, W)`` HU."""
    return np.asarray(volumes_hu, np.float64).mean(axis=0).astype(np.float32)


def backprojected_density(drrs: np.ndarray, geometry: ViewGeometry) -> np.ndarray:
    """Each view's mean attenuation along every ray relative to water, spread back along the rays and
    averaged over the views: ``(N, V, rows, cols)`` -> ``(N, D, H, W)`` (about 1 for water)."""
    from ctlib.physics import attenuation

    chords = geometry.chord_lengths_mm() * attenuation.mu_water(geometry.energy_kev)
    density = torch.from_numpy(np.asarray(drrs, np.float32)) / torch.where(chords > 0, chords, torch.inf)
    grids = geometry.detector_grids()
    lifted = [backproject.backproject(density[:, v : v + 1], grids[v])[:, 0] for v in range(len(grids))]
    return torch.stack(lifted).mean(dim=0).numpy()


class BackprojectionBaseline:
    """``HU = a * 1000 * (density - 1) + b`` on the back-projected density, ``(a, b)`` by least squares
    over every voxel of the training pairs."""

    def __init__(self, geometry: ViewGeometry) -> None:
        self.geometry, self.coefficients = geometry, (1.0, 0.0)

    def fit(self, drrs: np.ndarray, volumes_hu: np.ndarray) -> BackprojectionBaseline:
        raw = 1000.0 * (backprojected_density(drrs, self.geometry).ravel().astype(np.float64) - 1.0)
        design = np.stack([raw, np.ones_like(raw)], axis=1)
        solution, *_ = np.linalg.lstsq(design, np.asarray(volumes_hu, np.float64).ravel(), rcond=None)
        self.coefficients = (float(solution[0]), float(solution[1]))
        return self

    def predict(self, drrs: np.ndarray) -> np.ndarray:
        """``(N, V, rows, cols)`` views -> ``(N, D, H, W)`` HU."""
        a, b = self.coefficients
        raw = 1000.0 * (backprojected_density(drrs, self.geometry) - 1.0)
        return (a * raw + b).astype(np.float32)
