"""Synthetic dose case (ctlib.studies.dose.phantom): determinism, prescription, body,
OAR sparing, penumbra."""

from __future__ import annotations

import numpy as np
import pytest

from ctlib.data import phantom
from ctlib.studies.dose import phantom as dose_phantom

SMALL = {"shape": (24, 64, 64), "spacing_mm": (5.0, 2.25, 2.25)}


@pytest.fixture(scope="module")
def case():
    return dose_phantom.dose_phantom(seed=3, **SMALL)


def test_same_seed_same_case_other_seed_differs(case):
    volume, structures, dose = case
    again_volume, again_structures, again_dose = dose_phantom.dose_phantom(seed=3, **SMALL)
    np.testing.assert_array_equal(volume.array, again_volume.array)
    np.testing.assert_array_equal(dose, again_dose)
    assert structures.keys() == again_structures.keys() == {"PTV70", "Brainstem"}
    for name in structures:
        np.testing.assert_array_equal(structures[name], again_structures[name])
    assert not np.array_equal(dose, dose_phantom.dose_phantom(seed=4, **SMALL)[2])
    assert dose.dtype == np.float32 and dose.shape == volume.shape == SMALL["shape"]
    assert all(m.dtype == bool and m.shape == volume.shape and m.any() for m in structures.values())


def test_prescription_dose_covers_the_ptv(case):
    _, structures, dose = case
    ptv = dose[structures["PTV70"]]
    assert dose.max() == pytest.approx(dose_phantom.PRESCRIPTION_GY, rel=0.05)
    assert dose[structures["PTV70"]].max() == dose.max()
    assert np.mean(ptv >= 0.95 * dose_phantom.PRESCRIPTION_GY) >= 0.95  # V95 >= 95 %
    assert ptv.mean() == pytest.approx(dose_phantom.PRESCRIPTION_GY, rel=0.03)


def test_zero_outside_the_body(case):
    volume, _, dose = case
    _, labels, _ = phantom.ct_phantom_with_labels(**SMALL, seed=3, kind="head")
    outside = labels == phantom.AIR
    assert outside.any() and np.all(dose[outside] == 0)
    assert np.all(dose >= 0)


def test_organ_at_risk_gets_less_than_the_target(case):
    _, structures, dose = case
    ptv_mean, oar_mean = dose[structures["PTV70"]].mean(), dose[structures["Brainstem"]].mean()
    assert 0 < oar_mean < 0.5 * ptv_mean
    assert not np.any(structures["PTV70"] & structures["Brainstem"])


def test_penumbra_width_along_x_matches_the_parameter():
    # Fine grid along x through the PTV centre: the 80 %-20 % distance of the lateral edge.
    volume, _, dose = dose_phantom.dose_phantom(seed=0, shape=(48, 96, 288), spacing_mm=(2.5, 1.5, 0.5),
                                                penumbra_mm=6.0, bath_fraction=0.0)
    cx, cy, cz = dose_phantom.PTV_CENTRE_MM
    j = int(round((cy - volume.origin[1]) / volume.spacing[1]))
    k = int(round((cz - volume.origin[2]) / volume.spacing[0]))
    x = volume.origin[0] + np.arange(volume.shape[2]) * volume.spacing[2]
    line = dose[k, j] / dose[k, j].max()
    lateral = x <= cx  # the patient's right edge of the target, inside the brain
    xs, ds = x[lateral], line[lateral]
    x80, x20 = np.interp(0.8, ds, xs), np.interp(0.2, ds, xs)
    assert x80 - x20 == pytest.approx(6.0, abs=1.0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="penumbra_mm"):
        dose_phantom.dose_phantom(penumbra_mm=0.0)
