"""An ensemble of trained dose models: the voxel-wise mean of their predictions (the OpenKBP winner
averaged several models, Liu et al. 2021, and test-time flips; ``DoseModelBundle.tta`` does the flips).

``DoseEnsemble`` has what ``ctlib.studies.dose.evaluation.evaluate_patient`` asks of a bundle
(``run_id``, ``variant``, ``model_kind``, ``predict``), so it is scored by the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctlib.studies.dose.evaluation import DoseModelBundle
from ctlib.studies.dose.patient_file import DosePatient


@dataclass
class DoseEnsemble:
    """The mean dose of ``members`` (each with its own input normalization and test-time options)."""

    members: Sequence[DoseModelBundle]
    variant: str = "ensemble"

    def __post_init__(self) -> None:
        if len(self.members) < 1:
            raise ValueError("DoseEnsemble: needs at least one member")

    @property
    def run_id(self) -> str:
        """The members' run ids joined by ``+``."""
        return "+".join(m.run_id for m in self.members)

    @property
    def model_kind(self) -> str:
        """The members' model kind (``"mixed"`` when they differ)."""
        kinds = {m.model_kind for m in self.members}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def predict(self, patient: DosePatient) -> np.ndarray:
        """Voxel-wise mean of the members' ``(D, H, W)`` predictions in Gy."""
        total = None
        for member in self.members:
            pred = member.predict(patient).astype(np.float64)
            total = pred if total is None else total + pred
        return (total / len(self.members)).astype(np.float32)
