"""Volume scores of the X-ray -> CT study (ctlib.metrics.volume_quality): closed forms, orientation
handling, MONAI and numpy cross-checks, X2CT-GAN's PSNR and its +4.3 dB trap, projection consistency,
K-sample statistics.
(scikit-image and torchmetrics are not in the venv: the reference PSNR/SSIM is MONAI's and a numpy SSIM.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctlib.data import windows
from ctlib.metrics import volume_quality as vq

SHAPE = (12, 14, 16)  # (D, H, W): every side >= the 11-pixel SSIM window
SOFT = windows.SOFT_TISSUE  # [-125, 225] HU, width 350
TRAP_DB = 20 * math.log10(4095 / 2500)  # 4.286 dB


def _target(seed: int = 0) -> np.ndarray:
    """Values well inside the soft-tissue window, so offsets of up to 50 HU are never clipped."""
    return np.random.default_rng(seed).uniform(-50.0, 150.0, SHAPE)


def _ssim_reference(x: np.ndarray, y: np.ndarray, sigma: float = 1.5, size: int = 11) -> float:
    """Wang et al. 2004 SSIM of two [0, 1] images: Gaussian window, valid region, population moments."""
    from scipy.signal import convolve2d

    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    window = np.outer(g, g) / g.sum() ** 2

    def mean(a: np.ndarray) -> np.ndarray:
        return convolve2d(a, window, mode="valid")

    mx, my = mean(x), mean(y)
    sxx, syy, sxy = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return float(((2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean())


# ---- PSNR: closed forms and orientation ----

@pytest.mark.parametrize("offset_hu", [5.0, -35.0])
def test_constant_offset_gives_the_closed_form_in_every_orientation(offset_hu):
    target = _target()
    expected = 20 * math.log10(SOFT.width / abs(offset_hu))
    scores = vq.volume_scores(target + offset_hu, target, windows=("soft_tissue",))
    for key in ("psnr_3d", "psnr_axial", "psnr_coronal", "psnr_sagittal", "psnr_slices"):
        assert scores[f"{key}_soft_tissue_db"] == pytest.approx(expected, abs=1e-9)


def test_error_in_one_sagittal_slice_hits_each_orientation_as_predicted():
    target, delta, column = _target(), 40.0, 5
    prediction = target.copy()
    prediction[:, :, column] += delta  # one sagittal plane (fixed x)
    one_slice = 20 * math.log10(SOFT.width / delta)
    diluted = one_slice + 10 * math.log10(SHAPE[2])  # 1 column of W in every axial / coronal slice
    per_slice = vq.psnr_per_slice(prediction, target, "soft_tissue", "sagittal")
    assert np.isinf(np.delete(per_slice, column)).all() and per_slice[column] == pytest.approx(one_slice)
    # exact slices are left out of the mean: only the damaged one is averaged
    assert vq.psnr_slices(prediction, target, "soft_tissue", 2) == pytest.approx(one_slice)
    assert vq.psnr_slices(prediction, target, "soft_tissue", 0) == pytest.approx(diluted)
    assert vq.psnr_slices(prediction, target, "soft_tissue", "coronal") == pytest.approx(diluted)
    scores = vq.volume_scores(prediction, target, windows=("soft_tissue",))
    assert scores["psnr_3d_soft_tissue_db"] == pytest.approx(diluted)
    assert scores["psnr_sagittal_soft_tissue_db"] == pytest.approx(one_slice)
    assert scores["psnr_coronal_soft_tissue_db"] == pytest.approx(diluted)
    assert scores["ssim_sagittal_soft_tissue"] > scores["ssim_coronal_soft_tissue"]  # 15 of 16 planes exact
    assert scores["psnr_slices_soft_tissue_db"] == pytest.approx((one_slice + 2 * diluted) / 3)
    # SSIM is 2D within each sagittal plane: only the damaged plane drops below 1
    ssim = vq.ssim_slices(prediction, target, "soft_tissue", 2)
    assert ssim.shape == (SHAPE[2],) and ssim[column] < 0.99
    np.testing.assert_allclose(np.delete(ssim, column), 1.0, atol=1e-6)
    assert (vq.ssim_slices(prediction, target, "soft_tissue", 0) < 0.99).all()


def test_psnr_matches_monai_per_slice_and_in_3d():
    from monai.metrics import PSNRMetric

    rng = np.random.default_rng(1)
    target = rng.uniform(-1100, 3200, SHAPE)  # beyond the full window on both sides: clipping matters
    prediction = target + rng.normal(0, 300, SHAPE)
    unit_pred = torch.from_numpy(windows.to_unit(prediction, "full"))
    unit_true = torch.from_numpy(windows.to_unit(target, "full"))
    monai = PSNRMetric(max_val=1.0, reduction="none")
    for axis in (0, 1, 2):
        ours = vq.psnr_per_slice(prediction, target, "full", axis)
        ref = monai(unit_pred.movedim(axis, 0)[:, None], unit_true.movedim(axis, 0)[:, None])[:, 0].numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-9)
    ref_3d = float(monai(unit_pred[None, None], unit_true[None, None]))
    assert vq.volume_scores(prediction, target, windows=("full",))["psnr_3d_full_db"] == pytest.approx(ref_3d)


def test_identical_and_empty_slices():
    target = _target()
    assert vq.psnr_slices(target, target, "full", 1) == math.inf
    prediction = target.copy()
    prediction[3] += 20.0
    mask = np.zeros(SHAPE, bool)
    mask[2:5] = True  # axial slices 0, 1 and 5.. hold no mask voxel
    per_slice = vq.psnr_per_slice(prediction, target, SOFT, 0, mask=mask)
    assert np.isnan(per_slice[[0, 1, 5, 11]]).all() and np.isinf(per_slice[[2, 4]]).all()
    assert vq.psnr_slices(prediction, target, SOFT, 0, mask=mask) == pytest.approx(20 * math.log10(350 / 20))
    with pytest.raises(ValueError, match="mask is empty"):
        vq.psnr_slices(prediction, target, SOFT, 0, mask=np.zeros(SHAPE, bool))
    with pytest.raises(ValueError, match="axis must be 0, 1, 2"):
        vq.psnr_slices(prediction, target, SOFT, 3)
    with pytest.raises(ValueError, match=r"two \(D, H, W\) volumes of one shape"):
        vq.psnr_slices(prediction, target[:, :, :4], SOFT, 0)


# ---- SSIM in three orientations ----

@pytest.mark.parametrize("axis", [0, 1, 2])
def test_ssim_slices_match_a_numpy_reference_in_each_orientation(axis):
    rng = np.random.default_rng(2)
    target = rng.normal(0, 200, SHAPE)
    prediction = target + rng.normal(0, 150, SHAPE)
    got = vq.ssim_slices(prediction, target, "full", axis)
    unit_p, unit_t = windows.to_unit(prediction, "full"), windows.to_unit(target, "full")
    want = [_ssim_reference(np.take(unit_p, i, axis), np.take(unit_t, i, axis)) for i in range(SHAPE[axis])]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_ssim_slices_mask_follows_the_orientation():
    target = _target()
    prediction = target + np.random.default_rng(3).normal(0, 30, SHAPE)
    mask = np.zeros(SHAPE, bool)
    mask[:, :, 2] = True  # one sagittal plane, closer to the edge (x = 2) than the window's half-width (5)
    sagittal = vq.ssim_slices(prediction, target, SOFT, 2, mask=mask)
    assert np.isnan(np.delete(sagittal, 2)).all() and np.isfinite(sagittal[2])
    assert np.isnan(vq.ssim_slices(prediction, target, SOFT, 1, mask=mask)).all()
    assert np.isnan(vq.ssim_slices(prediction, target, SOFT, 0, mask=mask)).all()
    mask[:, :, 2], mask[:, :, 8] = False, True  # x = 8: the window fits, coronal slices have scored pixels
    assert np.isfinite(vq.ssim_slices(prediction, target, SOFT, 1, mask=mask)[5:9]).all()


# ---- X2CT-GAN's PSNR ----

def test_x2ct_gan_psnr_is_4_3_db_above_the_honest_value_on_its_own_range():
    # stored values (HU + 1024) that survive X2CT-GAN's float32 [0, 1] round trip unchanged
    target = np.full(SHAPE, 0.0)
    prediction = target + 100.0
    honest = vq.image_quality.psnr_hu(prediction, target, low_hu=-1024, high_hu=1476)
    assert honest == pytest.approx(20 * math.log10(2500 / 100))
    assert vq.psnr_x2ct_gan(prediction, target) == pytest.approx(20 * math.log10(4095 / 100), abs=1e-9)
    assert vq.psnr_x2ct_gan(prediction, target) - honest == pytest.approx(TRAP_DB, abs=1e-9)
    rng = np.random.default_rng(4)
    ct = rng.uniform(-1200, 1700, SHAPE)
    noisy = ct + rng.normal(0, 120, SHAPE)
    scores = vq.volume_scores(noisy, ct, windows=("full",))
    assert scores["psnr_3d_x2ct_gan_db"] - scores["psnr_3d_x2ct_range_db"] == pytest.approx(TRAP_DB, abs=0.02)
    assert TRAP_DB == pytest.approx(4.286, abs=1e-3)


def test_x2ct_gan_protocol_quirks():
    target = _target().round()
    assert vq.psnr_x2ct_gan(target, target) == 100.0  # exact: 100 dB, not inf
    water = np.zeros(SHAPE)
    assert vq.psnr_x2ct_gan(water + 0.4, water) == 100.0  # int32 truncation hides sub-HU errors
    assert vq.psnr_x2ct_gan(np.full(SHAPE, 3000.0), np.full(SHAPE, 1476.0)) == 100.0  # clipped at 1476 HU
    # HU -1017 is stored as 7, which comes back from [0, 1] in float32 as 6.99..., then truncated to 6
    one_hu_off = vq.psnr_x2ct_gan(np.full(SHAPE, -1016.9), np.full(SHAPE, -1017.0))
    assert one_hu_off == pytest.approx(20 * math.log10(4095 / 1))
    # the 2D variant scores exact slices 100 dB and averages them in
    prediction = water.copy()
    prediction[:, :, 5] += 50.0
    expected = (100.0 * (SHAPE[2] - 1) + 20 * math.log10(4095 / 50)) / SHAPE[2]
    assert vq.psnr_x2ct_gan(prediction, water, axis=2) == pytest.approx(expected, abs=1e-9)


# ---- projection consistency ----

def test_projection_consistency_closed_forms():
    rng = np.random.default_rng(5)
    inputs = rng.uniform(0.0, 8.0, (2, 6, 7))
    inputs[0, 0, 0], inputs[1, 0, 0] = 0.0, 8.0  # range exactly 8
    rendered = inputs.copy()
    rendered[1] *= 1.1  # the lateral view 10 % too dense
    out = vq.projection_consistency(torch.from_numpy(rendered), inputs)
    assert out["peak"] == 8.0
    assert out["rel_l2_view0"] == 0.0 and out["psnr_view0_db"] == math.inf
    assert out["rel_l2_view1"] == pytest.approx(0.1)
    assert out["rel_l2"] == pytest.approx(0.1 * np.linalg.norm(inputs[1]) / np.linalg.norm(inputs))
    mse_all = float(((rendered - inputs) ** 2).mean())
    assert out["psnr_db"] == pytest.approx(10 * math.log10(64 / mse_all))
    assert out["psnr_view1_db"] == pytest.approx(10 * math.log10(64 / (2 * mse_all)))
    shifted = vq.projection_consistency(inputs + 0.08, inputs)
    assert shifted["psnr_db"] == pytest.approx(20 * math.log10(8 / 0.08))
    with pytest.raises(ValueError, match=r"\(V, R, C\) of one shape"):
        vq.projection_consistency(inputs[0], inputs[0])
    with pytest.raises(ValueError, match="constant"):
        vq.projection_consistency(np.ones((2, 3, 3)), np.ones((2, 3, 3)))


# ---- K samples ----

def test_sample_statistics_closed_forms():
    target = _target()
    spread = np.random.default_rng(6).uniform(1.0, 20.0, SHAPE)  # per-voxel error, in HU
    mask = np.zeros(SHAPE, bool)
    mask[:, 3:10, 4:12] = True
    spread[mask] += 20.0
    # two samples: target and target + 2 * spread -> mean = target + spread, std = sqrt(2) * spread
    samples = np.stack([target, target + 2 * spread])
    out = vq.sample_statistics(samples, target, "soft_tissue", mask=mask)
    assert out["k"] == 2 and out["window"] == "soft_tissue"
    assert out["psnr_3d_db_per_sample"][0] == math.inf
    mean_error = np.sqrt(((spread[mask] / 350) ** 2).mean())
    assert out["psnr_3d_of_mean_db"] == pytest.approx(-20 * math.log10(mean_error))
    assert out["std_hu_mean"] == pytest.approx(math.sqrt(2) * spread.mean())
    assert out["std_hu_inside"] == pytest.approx(math.sqrt(2) * spread[mask].mean())
    assert out["std_hu_outside"] == pytest.approx(math.sqrt(2) * spread[~mask].mean())
    assert out["spearman_error_std"] == pytest.approx(1.0)  # the spread is exactly the error
    assert out["ssim_axial_per_sample"][0] == pytest.approx(1.0)
    assert out["ssim_axial_std"] == pytest.approx(np.std(out["ssim_axial_per_sample"], ddof=1))
    assert vq.sample_statistics(samples, target, max_voxels=100)["spearman_error_std"] == pytest.approx(1.0)


def test_sample_statistics_offsets_and_refusals():
    target = _target()
    samples = np.stack([target + 10.0, target - 10.0, target + 10.0, target - 10.0])
    out = vq.sample_statistics(samples, target, SOFT)
    assert out["psnr_3d_db_mean"] == pytest.approx(20 * math.log10(35)) and out["psnr_3d_db_std"] == 0.0
    assert out["psnr_3d_of_mean_db"] == math.inf
    assert out["std_hu_mean"] == pytest.approx(10 * math.sqrt(4 / 3))  # ddof = 1
    assert math.isnan(out["std_hu_inside"]) and math.isnan(out["std_hu_outside"])
    with pytest.raises(ValueError, match="K >= 2"):
        vq.sample_statistics(samples[:1], target)
    with pytest.raises(ValueError, match="K >= 2"):
        vq.sample_statistics(samples, target[1:])


def test_volume_scores_documents_its_keys():
    target = _target()
    scores = vq.volume_scores(target + 7.0, target, mask=np.ones(SHAPE, bool))
    expected = {"psnr_3d_x2ct_gan_db", "psnr_3d_x2ct_range_db"}
    for w in ("soft_tissue", "full"):
        expected |= {f"psnr_{k}_{w}_db" for k in ("3d", "axial", "coronal", "sagittal", "slices")}
        expected |= {f"ssim_{k}_{w}" for k in ("axial", "coronal", "sagittal", "slices")}
    assert set(scores) == expected
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["psnr_3d_full_db"] == pytest.approx(20 * math.log10(4095 / 7))
    assert scores["ssim_slices_full"] == pytest.approx(
        np.mean([scores[f"ssim_{k}_full"] for k in ("axial", "coronal", "sagittal")])
    )
