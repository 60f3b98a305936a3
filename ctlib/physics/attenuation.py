"""Linear attenuation from Hounsfield units: ``mu = mu_water(E) * (1 + HU / 1000)``, in 1/mm.

``mu_water`` interpolates, log-log in energy, the mass attenuation coefficient of liquid water (total,
with coherent scattering) from the NIST table: J. H. Hubbell and S. M. Seltzer, *Tables of X-Ray Mass
Attenuation Coefficients and Mass Energy-Absorption Coefficients*, NIST Standard Reference Database 126
(NISTIR 5632), "Water, Liquid", and NIST XCOM; density 1.0 g/cm^3. Monoenergetic: no beam spectrum.
"""

from __future__ import annotations

import numpy as np
import torch

# Energy (keV) -> mass attenuation coefficient mu/rho (cm^2/g) of liquid water, NIST (see module docstring).
WATER_MASS_ATTENUATION: dict[float, float] = {
    20.0: 0.8096,
    30.0: 0.3756,
    40.0: 0.2683,
    50.0: 0.2269,
    60.0: 0.2059,
    80.0: 0.1837,
    100.0: 0.1707,
    150.0: 0.1505,
}
WATER_DENSITY_G_CM3 = 1.0
_ENERGIES = np.array(sorted(WATER_MASS_ATTENUATION), dtype=np.float64)
_MU_RHO = np.array([WATER_MASS_ATTENUATION[e] for e in _ENERGIES], dtype=np.float64)


def mu_water(energy_kev: float) -> float:
    """Linear attenuation of water in 1/mm at ``energy_kev`` (log-log interpolation of the NIST table).

    Raises ValueError outside the table's range (20-150 keV).
    """
    energy = float(energy_kev)
    if not np.isfinite(energy) or energy < _ENERGIES[0] or energy > _ENERGIES[-1]:
        raise ValueError(
            f"energy_kev={energy_kev} outside the water table range [{_ENERGIES[0]:g}, {_ENERGIES[-1]:g}] keV"
        )
    mu_rho = float(np.exp(np.interp(np.log(energy), np.log(_ENERGIES), np.log(_MU_RHO))))
    return mu_rho * WATER_DENSITY_G_CM3 / 10.0  # 1/cm -> 1/mm


def hu_to_mu(hu: torch.Tensor | np.ndarray, energy_kev: float = 60.0) -> torch.Tensor | np.ndarray:
    """``mu_water(E) * (1 + HU / 1000)`` in 1/mm, HU clipped below at -1000 (air -> 0).

    Keeps the input's type (torch tensors stay differentiable above -1000 HU).
    """
    mu_w = mu_water(energy_kev)
    if isinstance(hu, torch.Tensor):
        return mu_w * (1.0 + hu.clamp(min=-1000.0) / 1000.0)
    return mu_w * (1.0 + np.maximum(np.asarray(hu, dtype=np.float32), -1000.0) / 1000.0)
