"""Lifting the two X-ray views into the volume (X2CT-GAN, Ying et al. 2019): each view is encoded by its
own 2D U-Net at detector resolution, and its feature maps, with the view's mean attenuation along each
ray, are spread back along the rays (``ctlib.physics.backproject``) and concatenated on channels.

The lifted tensor keeps every channel at full volume resolution: ``(B, V * (channels + 1), D, H, W)``
conditions the 3D network by concatenation (bug 11 of issue 14: not 512 features squeezed to 1 and added
at weight 0.1; bug 7: no 16^3 token bottleneck).
"""

from __future__ import annotations

import dataclasses

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from ctlib.config import ConfigDict
from ctlib.physics import attenuation, backproject
from ctlib.studies.xray2ct.views import ViewGeometry

# GroupNorm in the U-Nets: unlike instance norm (BasicUNet's default) it works down to a 1 x 1 bottleneck.
NORM_GROUPS = 4
NORM = ("group", {"num_groups": NORM_GROUPS})


@dataclasses.dataclass
class LiftConfig(ConfigDict):
    """Per-view 2D encoders (MONAI ``BasicUNet``) and the number of lifted feature channels per view."""

    channels: int = 16  # feature maps per view lifted to 3D
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)  # BasicUNet widths (5 levels + the last up block)

    def __post_init__(self) -> None:
        self.features = tuple(int(f) for f in self.features)
        if self.channels < 1 or len(self.features) != 6 or any(f % NORM_GROUPS for f in self.features):
            raise ValueError(
                f"LiftConfig: need channels >= 1 and six BasicUNet widths divisible by {NORM_GROUPS}: {self}"
            )


class ViewLifter(nn.Module):
    """``(B, V, rows, cols)`` line integrals -> ``(B, V * (channels + 1), D, H, W)`` lifted features."""

    def __init__(self, geometry: ViewGeometry, config: LiftConfig) -> None:
        super().__init__()
        self.geometry, self.config = geometry, config
        self.encoders = nn.ModuleList(
            BasicUNet(
                spatial_dims=2,
                in_channels=1,
                out_channels=config.channels,
                features=config.features,
                norm=NORM,
            )
            for _ in geometry.angles_deg
        )
        self.register_buffer("grids", geometry.detector_grids(), persistent=False)
        mu_water = attenuation.mu_water(geometry.energy_kev)
        # 1 / (chord * mu_water): turns a line integral into the ray's mean attenuation relative to water
        chords = geometry.chord_lengths_mm() * mu_water
        self.register_buffer(
            "inverse_chords", torch.where(chords > 0, 1.0 / chords.clamp(min=1e-6), 0.0), persistent=False
        )

    @property
    def out_channels(self) -> int:
        """Channels of the lifted tensor."""
        return len(self.encoders) * (self.config.channels + 1)

    def forward(self, drrs: torch.Tensor) -> torch.Tensor:
        """Encode, lift and concatenate the views of ``drrs`` ``(B, V, rows, cols)``."""
        if drrs.ndim != 4 or drrs.shape[1] != len(self.encoders):
            raise ValueError(
                f"ViewLifter: expected (B, {len(self.encoders)}, rows, cols), got {tuple(drrs.shape)}"
            )
        lifted = []
        for v, encoder in enumerate(self.encoders):
            mean_density = drrs[:, v : v + 1] * self.inverse_chords[v]  # ~1 for water all along the ray
            image = torch.cat([mean_density, encoder(mean_density)], dim=1)
            lifted.append(backproject.backproject(image, self.grids[v]))
        return torch.cat(lifted, dim=1)
