"""Image-quality metrics and the slice-interpolation protocol against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from ctlib.data import phantom
from ctlib.metrics import image_quality
from ctlib.studies.interp import scoring as interpolation
from ctlib.studies.interp import thick_slices


def test_psnr_closed_form():
    target = np.zeros((2, 4, 4), np.float32)
    prediction = target + 409.5  # a tenth of the 4095 HU window
    psnr = image_quality.psnr_hu(prediction, target, low_hu=-1024, high_hu=3071)
    assert psnr == pytest.approx(20.0, abs=1e-5)  # float32 scaling
    assert image_quality.psnr_hu(target, target, low_hu=-1024, high_hu=3071) == float("inf")
    mask = np.zeros_like(target, bool)
    with pytest.raises(ValueError, match="empty"):
        image_quality.psnr_hu(prediction, target, low_hu=-1024, high_hu=3071, mask=mask)


def test_ssim_identical_is_one_and_noise_lowers_it():
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 200, size=(3, 32, 32)).astype(np.float32)
    ssim = image_quality.ssim_slices_hu(volume, volume, low_hu=-1024, high_hu=3071)
    np.testing.assert_allclose(ssim, 1.0, atol=1e-6)
    noisy = volume + rng.normal(0, 300, size=volume.shape).astype(np.float32)
    assert np.all(image_quality.ssim_slices_hu(noisy, volume, low_hu=-1024, high_hu=3071) < 0.9)
    mask = np.zeros(volume.shape, bool)
    mask[0] = True
    masked = image_quality.ssim_slices_hu(noisy, volume, low_hu=-1024, high_hu=3071, mask=mask)
    assert np.isfinite(masked[0]) and np.all(np.isnan(masked[1:]))


def test_protocol_on_a_phantom_pair():
    volume = phantom.ct_phantom(shape=(36, 48, 48), seed=0)
    pair = thick_slices.thick_thin_pair(volume, 6)
    perfect = interpolation.evaluate(pair.thin, pair)
    assert perfect["psnr_full_db"] == float("inf") and perfect["ssim_full"] == pytest.approx(1.0)
    assert perfect["slab_residual_hu"] == pytest.approx(0.0, abs=1e-3)
    linear = thick_slices.upsample_z(pair.thick, 6, "linear", n_thin=pair.thin.shape[0])
    scores = interpolation.evaluate(linear, pair)
    assert 20 < scores["psnr_full_db"] < 60 and scores["psnr_soft_db"] < scores["psnr_full_db"]
    assert 0.5 < scores["ssim_full"] < 1.0 and scores["slab_residual_hu"] > 1.0
    with pytest.raises(ValueError, match="shape"):
        interpolation.evaluate(linear.array[:-1], pair)
