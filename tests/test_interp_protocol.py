"""The scoring protocol in closed form: which slices and voxels count, and in which window.

Each case builds a box phantom (air around a body of constant HU), an estimate that differs from the
truth by known amounts in chosen places, and checks PSNR against 10 log10(W^2 / MSE) computed by hand.
Odd slabs and decimation put observed thin slices on the grid, so scoring them would show.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctlib.data import windows
from ctlib.io.volume import Volume
from ctlib.studies.interp import evaluation, scoring, thick_slices

BODY = (slice(None), slice(8, 24), slice(8, 24))  # 16 x 16 body in a 32 x 32 slice
BODY_HU = 40.0
FULL_WIDTH = windows.FULL.width


def _phantom(n: int = 19) -> Volume:
    array = np.full((n, 32, 32), -1000.0, dtype=np.float32)
    array[BODY] = BODY_HU
    return Volume(array, spacing=(1.25, 0.8, 0.8))


def _expected_psnr(error_hu: float, fraction: float, width: float = FULL_WIDTH) -> float:
    """PSNR when ``fraction`` of the scored voxels are off by ``error_hu`` and the rest exact."""
    return -10.0 * math.log10(fraction * (error_hu / width) ** 2)


PROTOCOLS = {
    "decimate": scoring.Protocol(mode="decimate"),
    "odd slab": scoring.Protocol(mode="slab", slab=3),
}


def _pair(name: str, factor: int = 3) -> thick_slices.ThickThinPair:
    return PROTOCOLS[name].pair(_phantom(), factor)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_observed_slices_exist_and_are_not_scored(name):
    pair = _pair(name)
    assert pair.observed.any(), "the case must have observed thin slices, or it tests nothing"
    estimate = pair.thin.array.copy()
    estimate[pair.observed] += 100.0  # wrong only where the thick slices were observed
    assert math.isinf(scoring.evaluate(estimate, pair, PROTOCOLS[name])["psnr_full_db"])


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_error_on_synthesized_slices_in_the_body_gives_the_closed_form(name):
    pair = _pair(name)
    estimate = pair.thin.array.copy()
    estimate[pair.synthesized] += 50.0  # everywhere on synthesized slices, background too
    # Background error of +50 HU keeps air below the mask threshold, so only body voxels count.
    result = scoring.evaluate(estimate, pair, PROTOCOLS[name])
    assert result["psnr_full_db"] == pytest.approx(_expected_psnr(50.0, 1.0), abs=1e-5)
    soft = PROTOCOLS[name].soft_window
    assert result["psnr_soft_db"] == pytest.approx(_expected_psnr(50.0, 1.0, soft.width), abs=1e-5)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_background_is_not_scored_and_the_mask_comes_from_the_truth(name):
    """The estimate paints body-like HU into the air: a mask from the estimate would score it."""
    pair = _pair(name)
    estimate = pair.thin.array.copy()
    synthesized = np.flatnonzero(pair.synthesized)
    estimate[synthesized, 8:24, 8:16] += 30.0  # half of the body off by 30 HU
    estimate[synthesized, 0:4, :] = 500.0  # a 'table' in the air, 1500 HU off
    estimate[synthesized, 24:28, 8:24] = 500.0  # the body grown into the air: in a mask of the estimate
    result = scoring.evaluate(estimate, pair, PROTOCOLS[name])
    assert result["psnr_full_db"] == pytest.approx(_expected_psnr(30.0, 0.5), abs=1e-5)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_values_beyond_the_window_are_clipped_before_scoring(name):
    volume = _phantom()
    volume.array[:, 8:24, 8:16] = 3500.0  # half of the body above the FULL window (3071 HU)
    pair = PROTOCOLS[name].pair(volume, 3)
    estimate = pair.thin.array.copy()
    estimate[pair.synthesized] += 400.0  # 3900 on the bright half (clipped: no error), 440 on the rest
    result = scoring.evaluate(estimate, pair, PROTOCOLS[name])
    assert result["psnr_full_db"] == pytest.approx(_expected_psnr(400.0, 0.5), abs=1e-5)


def test_decimation_keeps_the_last_observed_slice_and_scores_no_edge_copy():
    """Before: n_thick = min(...) dropped slice 18 of 19 at x6 and scored edge-replicated copies."""
    volume = _phantom(19)
    volume.array[:] += np.arange(19, dtype=np.float32)[:, None, None] * 10.0 * (volume.array > -500)
    pair = scoring.Protocol(mode="decimate").pair(volume, 6)
    assert pair.thick.shape[0] == 4 and pair.thin.shape[0] == 19  # observed 0, 6, 12, 18
    np.testing.assert_array_equal(np.flatnonzero(pair.observed), [0, 6, 12, 18])
    comparison = evaluation.compare_methods(volume, 6, protocol=scoring.Protocol(mode="decimate"))
    rows = {row["method"]: row for row in comparison.scores()}
    # HU grows linearly in z inside the body: linear interpolation between observed slices is exact.
    assert math.isinf(rows["linear"]["psnr_full_db"])
    assert comparison.estimates["linear"].shape == pair.thin.shape


def test_decimation_needs_two_observed_slices():
    with pytest.raises(ValueError, match="two decimated thick slices"):
        thick_slices.thick_thin_pair(_phantom(6), 6, "decimate")


def test_protocol_describes_itself_and_changes_the_numbers():
    slab, comparable = scoring.Protocol(), scoring.Protocol.comparable()
    assert comparable.describe(6)["soft_window_hu"] == [-160.0, 240.0]
    assert slab.describe(6)["soft_window_hu"] == [-125.0, 225.0]
    assert slab.describe(6)["slab"] == 6 and comparable.describe(6)["slab"] == 1
    assert "HU > -500" in slab.describe(6)["mask"]
    pair = slab.pair(_phantom(), 3)
    estimate = pair.thin.array + 10.0
    assert scoring.evaluate(estimate, pair, slab)["psnr_soft_db"] != pytest.approx(
        scoring.evaluate(estimate, pair, comparable)["psnr_soft_db"])


def test_mask_threshold_is_a_parameter():
    volume = _phantom()
    volume.array[:, 8:24, 8:16] = -600.0  # half of the body between -700 and -500 HU
    pair = scoring.Protocol(mode="decimate").pair(volume, 3)
    wide = scoring.Protocol(mode="decimate", mask_threshold_hu=-700.0, mask_opening=0)
    narrow = scoring.Protocol(mode="decimate", mask_opening=0)
    n_scored = int(pair.synthesized.sum())
    assert scoring.scored_mask(pair, narrow).sum() == n_scored * 16 * 8
    assert scoring.scored_mask(pair, wide).sum() == n_scored * 16 * 16
