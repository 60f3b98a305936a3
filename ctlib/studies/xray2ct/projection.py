"""Projection consistency, the physics of the X-ray-to-CT study: re-render a predicted volume with the real
renderer (``ViewGeometry.render_hu``: Beer-Lambert, cone beam, both angles) and compare with the input
views, as a training loss and as a data-consistency step at sampling time.

No per-sample normalization anywhere (bug 5 of issue 14): a volume twice too dense renders line integrals
twice too large, and the loss sees it. The loss divides by the fixed ``LINE_INTEGRAL_SCALE`` only, so
its size is comparable across runs.
"""

from __future__ import annotations

import torch

from ctlib.data import windows
from ctlib.physics import attenuation
from ctlib.studies.xray2ct import normalization
from ctlib.studies.xray2ct.views import ViewGeometry

LINE_INTEGRAL_SCALE = 5.0  # about the line integral through 25 cm of water at 60 keV


def projection_loss(
    x: torch.Tensor, drrs: torch.Tensor, geometry: ViewGeometry, window: windows.HUWindow
) -> torch.Tensor:
    """Per-sample mean |render(x) - drrs| / ``LINE_INTEGRAL_SCALE``: ``(B,)`` for volumes ``(B, 1, D, H, W)``
    in model units and views ``(B, V, rows, cols)`` (line integrals)."""
    rendered = geometry.render_hu(normalization.to_hu(x[:, 0].float(), window))
    return (rendered - drrs.float()).abs().flatten(1).mean(dim=1) / LINE_INTEGRAL_SCALE


class SIRTConsistency:
    """Data consistency by SIRT (Gilbert 1972; Andersen & Kak 1984) in ``mu``: one step moves a volume
    towards agreeing with its views, ``mu += weight * C A^T (R (y - A mu))`` with ``R = 1 / A 1`` (inverse
    ray lengths) and ``C = 1 / A^T 1`` (inverse back-projected ray counts); ``A`` is the renderer and
    ``A^T`` its exact adjoint by autograd. Called on the predicted x0 at every sampling step."""

    def __init__(
        self, drrs: torch.Tensor, geometry: ViewGeometry, window: windows.HUWindow, weight: float
    ) -> None:
        self.drrs, self.geometry, self.window, self.weight = drrs.float(), geometry, window, float(weight)
        self.mu_water = attenuation.mu_water(geometry.energy_kev)
        ones = torch.ones((1, *geometry.shape), device=drrs.device)
        with torch.enable_grad():
            ones.requires_grad_(True)
            ray_lengths = self.geometry.render_mu(ones)
            (column,) = torch.autograd.grad(ray_lengths, ones, torch.ones_like(ray_lengths))
        self.inverse_rays = torch.where(ray_lengths > 0, 1.0 / ray_lengths.detach().clamp(min=1e-6), 0.0)
        self.inverse_columns = torch.where(column > 0, 1.0 / column.clamp(min=1e-6), 0.0)

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        """One SIRT step on ``x0`` ``(B, 1, D, H, W)`` in model units; returns the corrected x0."""
        if self.weight == 0:
            return x0
        hu = normalization.to_hu(x0[:, 0].float(), self.window)
        mu = (self.mu_water * (1.0 + hu / 1000.0)).clamp(min=0.0).detach()
        with torch.enable_grad():
            mu.requires_grad_(True)
            rendered = self.geometry.render_mu(mu)
            residual = (self.drrs.expand_as(rendered) - rendered.detach()) * self.inverse_rays
            (update,) = torch.autograd.grad(rendered, mu, residual)
        mu = (mu.detach() + self.weight * self.inverse_columns * update).clamp(min=0.0)
        corrected = windows.normalize(1000.0 * (mu / self.mu_water - 1.0), self.window)
        return corrected[:, None].to(x0.dtype)
