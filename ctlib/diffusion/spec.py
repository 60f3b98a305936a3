"""What every diffusion run records about its training: parameterization, noise schedule, loss weighting.

Studies extend ``DiffusionSpec`` with their own fields (thick-slice factor, dose scaling, ...); the
base validates the shared ones once and builds the schedule the loss and the samplers use.
"""

from __future__ import annotations

import dataclasses

from ctlib.config import ConfigDict
from ctlib.diffusion import schedules
from ctlib.diffusion.parameterization import check_prediction

SCHEDULES = ("linear", "scaled_linear", "cosine")


@dataclasses.dataclass
class DiffusionSpec(ConfigDict):
    """Parameterization (Salimans & Ho 2022 for v), noise schedule,
    and min-SNR-gamma weighting (Hang et al. 2023)."""

    prediction: str = "v"  # "epsilon" | "v" | "x0"
    schedule: str = "scaled_linear"  # "linear" | "scaled_linear" | "cosine"
    num_train_timesteps: int = 1000
    min_snr_gamma: float | None = 5.0  # None = unweighted

    def __post_init__(self) -> None:
        check_prediction(self.prediction)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be 'linear', 'scaled_linear' or 'cosine', got {self.schedule!r}")

    def noise_schedule(self) -> schedules.NoiseSchedule:
        """The schedule object the loss and the samplers use."""
        return schedules.make_schedule(self.schedule, num_train_timesteps=self.num_train_timesteps)  # type: ignore[arg-type]
