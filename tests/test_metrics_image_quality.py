"""PSNR and SSIM in a named HU window (ctlib.metrics.image_quality) against closed forms.

Written against the mutants that survived `make mutation` (bench/results/mutation.md): the window's clipping,
its validation, the mask and the messages were not pinned by the protocol tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctlib.metrics import image_quality

MEDIASTINUM = {"low_hu": -160.0, "high_hu": 240.0}  # width 400 HU


def _psnr_db(error_fraction: float) -> float:
    return 10.0 * math.log10(1.0 / error_fraction**2)


@pytest.mark.parametrize(("prediction", "target", "expected_db"), [
    (1000.0, 0.0, _psnr_db(0.6)),  # prediction above the window counts as 240 HU
    (-1000.0, 0.0, _psnr_db(0.4)),  # below as -160 HU
    (240.0, 5000.0, math.inf),  # the target is clipped too
    (-160.0, -5000.0, math.inf),
])
def test_psnr_clips_both_images_to_the_window(prediction, target, expected_db):
    pred = np.full((2, 3, 3), prediction, np.float32)
    true = np.full((2, 3, 3), target, np.float32)
    # float32 scaling
    assert image_quality.psnr_hu(pred, true, **MEDIASTINUM) == pytest.approx(expected_db, abs=1e-5)


def test_psnr_mask_restricts_the_mean():
    true = np.zeros((1, 2, 2))
    pred = np.array([[[40.0, 0.0], [0.0, 120.0]]])  # errors 0.1 and 0.3 of the width
    mask = np.array([[[True, True], [False, False]]])
    assert image_quality.psnr_hu(pred, true, **MEDIASTINUM, mask=mask) == pytest.approx(
        10 * math.log10(2 / 0.01)
    )
    assert image_quality.psnr_hu(pred, true, **MEDIASTINUM) == pytest.approx(10 * math.log10(4 / 0.1))


def test_psnr_refusals_say_what_is_wrong():
    a = np.zeros((1, 2, 2))
    with pytest.raises(ValueError, match=r"shapes differ: prediction \(1, 2, 2\), target \(1, 2, 3\)"):
        image_quality.psnr_hu(a, np.zeros((1, 2, 3)), **MEDIASTINUM)
    with pytest.raises(ValueError, match=r"high > low, got \[40.0, 40.0\]"):
        image_quality.psnr_hu(a, a, low_hu=40.0, high_hu=40.0)
    with pytest.raises(ValueError, match=r"mask shape \(1, 2\) differs from the images' \(1, 2, 2\)"):
        image_quality.psnr_hu(a, a, **MEDIASTINUM, mask=np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="mask is empty: PSNR over no voxels is undefined"):
        image_quality.psnr_hu(a, a, **MEDIASTINUM, mask=np.zeros((1, 2, 2), bool))


def _ssim_reference(x: np.ndarray, y: np.ndarray, sigma: float = 1.5, size: int = 11) -> float:
    """Wang et al. 2004 SSIM of two [0, 1] images: Gaussian window, valid region, population moments."""
    from scipy.signal import convolve2d

    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    window = np.outer(g, g) / g.sum() ** 2

    def local_mean(a: np.ndarray) -> np.ndarray:
        return convolve2d(a, window, mode="valid")

    mx, my = local_mean(x), local_mean(y)
    sxx, syy, sxy = local_mean(x * x) - mx**2, local_mean(y * y) - my**2, local_mean(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return float(((2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean())


def test_ssim_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    target = rng.normal(0, 200, (2, 20, 20))
    prediction = target + rng.normal(0, 150, target.shape)
    got = image_quality.ssim_slices_hu(prediction, target, low_hu=-1024, high_hu=3071)

    def unit(a: np.ndarray) -> np.ndarray:
        return (np.clip(a, -1024, 3071) + 1024) / 4095

    expected = [_ssim_reference(unit(prediction[k]), unit(target[k])) for k in range(2)]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_ssim_of_constant_slices_clips_to_the_window():
    """Constant slices a, b in [0, 1]: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (no variance)."""
    pred = np.stack([np.full((12, 12), v) for v in (1000.0, -5000.0, -60.0)])  # -> 1, 0, 0.25 of the window
    true = np.stack([np.full((12, 12), v) for v in (-5000.0, 1000.0, 140.0)])  # -> 0, 1, 0.75
    c1 = 0.01**2
    expected = [c1 / (1 + c1), c1 / (1 + c1), (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)]
    got = image_quality.ssim_slices_hu(pred, true, **MEDIASTINUM)
    np.testing.assert_allclose(got[:2], expected[:2], rtol=1e-3)  # 1e-4: unclipped, it would be 1e-5
    np.testing.assert_allclose(got[2], expected[2], atol=1e-3)  # float32 moments


def test_ssim_needs_two_volumes_of_one_shape():
    with pytest.raises(ValueError, match=r"expected two \(z, y, x\) volumes of one shape, got \(12, 12\)"):
        image_quality.ssim_slices_hu(np.zeros((12, 12)), np.zeros((12, 12)), **MEDIASTINUM)
    with pytest.raises(ValueError, match="one shape"):
        image_quality.ssim_slices_hu(np.zeros((1, 12, 12)), np.zeros((1, 12, 13)), **MEDIASTINUM)


def test_ssim_mask_on_non_square_slices_and_single_pixels():
    rng = np.random.default_rng(1)
    target = rng.normal(0, 200, (2, 14, 20))
    prediction = target + rng.normal(0, 150, target.shape)
    everywhere = image_quality.ssim_slices_hu(prediction, target, low_hu=-1024, high_hu=3071)
    full = np.ones(target.shape, bool)
    masked = image_quality.ssim_slices_hu(prediction, target, low_hu=-1024, high_hu=3071, mask=full)
    np.testing.assert_allclose(masked, everywhere, rtol=1e-12)
    one = np.zeros(target.shape, bool)
    one[:, 5, 5] = True  # the first pixel the 11 x 11 window fits around: map entry (0, 0)
    single = image_quality.ssim_slices_hu(prediction, target, low_hu=-1024, high_hu=3071, mask=one)

    def unit(a: np.ndarray) -> np.ndarray:
        return (np.clip(a, -1024, 3071) + 1024) / 4095

    expected = [_ssim_reference(unit(prediction[k, :11, :11]), unit(target[k, :11, :11])) for k in range(2)]
    np.testing.assert_allclose(single, expected, atol=1e-5)
