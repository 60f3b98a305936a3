"""Scores of a reconstructed CT volume (X-ray -> CT, issue 14): PSNR with the peak equal to the width of the
window used, in 3D and slice-averaged over the three orientations, per-slice SSIM, X2CT-GAN's published PSNR
beside them (the +4.3 dB trap), projection consistency of re-rendered DRRs, and K-sample statistics.

Volumes are ``(D, H, W) = (z, y, x)`` in HU (``ctlib.io``): axis 0 gives axial slices, axis 1 (fixed y,
anterior-posterior) coronal, axis 2 (fixed x, left-right) sagittal. Inputs may be numpy arrays or CPU tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ctlib.data.windows import HUWindow, get_window
from ctlib.metrics import image_quality

ORIENTATIONS: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}

# X2CT-GAN (Ying et al., CVPR 2019), github.com/kylekma/X2CT, 3DGAN/: stored CT values are HU + 1024
# (CT2XRAY/ctxray_utils.py convert2hu subtracts 1024), clipped to CT_MIN_MAX = [0, 2500]
# (experiment/*/d2_*2500.yml), and PSNR is taken with PIXEL_MAX = 4095 (test.py).
X2CT_OFFSET_HU = 1024.0
X2CT_RANGE = 2500.0
X2CT_PEAK = 4095.0
X2CT_WINDOW = HUWindow("x2ct_range", -X2CT_OFFSET_HU + X2CT_RANGE / 2, X2CT_RANGE)  # [-1024, 1476] HU


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _pair(prediction_hu: Any, target_hu: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    prediction, target = _numpy(prediction_hu), _numpy(target_hu)
    if prediction.shape != target.shape or prediction.ndim != 3:
        raise ValueError(
            f"volume_quality.{where}: expected two (D, H, W) volumes of one shape, "
            f"got {prediction.shape} and {target.shape}"
        )
    return prediction, target


def _axis(axis: int | str) -> int:
    value = ORIENTATIONS.get(axis, axis) if isinstance(axis, str) else axis
    if value not in (0, 1, 2):
        raise ValueError(
            f"volume_quality: axis must be 0, 1, 2 or one of {sorted(ORIENTATIONS)}, got {axis!r}"
        )
    return int(value)


def psnr_x2ct_gan(prediction_hu: Any, target_hu: Any, *, axis: int | str | None = None) -> float:
    """X2CT-GAN's PSNR (Ying et al., CVPR 2019), reproduced from github.com/kylekma/X2CT, 3DGAN/.

    Their chain, step by step (``axis=None``: their ``psnr-3d``; ``axis`` 0/1/2: their 2D ``PSNR-1/2/3``):
    - data (``lib/dataset/data_augmentation.py`` ``CT_XRAY_Data_Test_Multi``, ``lib/utils/transform_3d.py``):
      stored CT = HU + 1024 clipped to ``CT_MIN_MAX = [0, 2500]`` (``Limit_Min_Max_Threshold``), scaled to
      [0, 1] by ``Normalization`` (float32, rounded to 6 decimals); the network output is clipped to [0, 1];
    - ``test.py``: both back to [0, 2500] by ``tensor_back_to_unMinMax`` (x * 2500, float32) and
      ``.astype(np.int32)`` (truncation: about 6 % of integer HU lose 1 through the float32 round trip);
    - ``lib/utils/metrics_np.py`` ``Peak_Signal_to_Noise_Rate_3D``: ``20 log10(4095 / sqrt(MSE))`` with
      ``PIXEL_MAX=4095``, MSE = 0 scored 100 dB; ``Peak_Signal_to_Noise_Rate``: the same per slice, then
      the mean over slices.
    The values span 2500 but the peak is 4095, so the score sits 20 log10(4095/2500) = +4.29 dB above the
    PSNR whose peak is the range actually used (``psnr_hu`` over ``X2CT_WINDOW``, [-1024, 1476] HU).
    Here the prediction (HU) enters as the network output would: (HU + 1024) / 2500 clipped to [0, 1].
    """
    prediction, target = _pair(prediction_hu, target_hu, "psnr_x2ct_gan")
    scale = np.float32(X2CT_RANGE)
    stored = np.clip(target.astype(np.float32) + np.float32(X2CT_OFFSET_HU), 0.0, scale)
    true_unit = np.round(stored / scale, 6)
    pred_unit = np.clip((prediction.astype(np.float32) + np.float32(X2CT_OFFSET_HU)) / scale, 0.0, 1.0)
    true = (true_unit * scale).astype(np.int32).astype(np.float64)
    pred = (pred_unit * scale).astype(np.int32).astype(np.float64)
    squared = (true - pred) ** 2
    if axis is None:
        mse = np.atleast_1d(squared.mean())
    else:
        mse = np.moveaxis(squared, _axis(axis), 0).reshape(squared.shape[_axis(axis)], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        psnr = np.where(mse == 0, 100.0, 20.0 * np.log10(X2CT_PEAK / np.sqrt(mse)))
    return float(psnr.mean())


def psnr_per_slice(
    prediction_hu: Any,
    target_hu: Any,
    window: str | HUWindow,
    axis: int | str,
    *,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """2D PSNR (``image_quality.psnr_hu``, peak = the window width) of every slice along ``axis``: ``(n,)``.

    A slice predicted exactly is ``inf``; a slice with no voxel of ``mask`` is NaN.
    """
    prediction, target = _pair(prediction_hu, target_hu, "psnr_per_slice")
    w, axis = get_window(window), _axis(axis)
    if mask is not None:
        mask = _numpy(mask).astype(bool)
        if mask.shape != prediction.shape:
            where = "volume_quality.psnr_per_slice"
            raise ValueError(f"{where}: mask {mask.shape} differs from the volumes' {prediction.shape}")
        if not mask.any():
            raise ValueError("volume_quality.psnr_per_slice: mask is empty, PSNR over no voxels is undefined")
    values = np.full(prediction.shape[axis], np.nan)
    for i in range(prediction.shape[axis]):
        inside = None if mask is None else np.take(mask, i, axis=axis)
        if inside is not None and not inside.any():
            continue
        values[i] = image_quality.psnr_hu(np.take(prediction, i, axis=axis), np.take(target, i, axis=axis),
                                          low_hu=w.low, high_hu=w.high, mask=inside)
    return values


def psnr_slices(
    prediction_hu: Any,
    target_hu: Any,
    window: str | HUWindow,
    axis: int | str,
    *,
    mask: np.ndarray | None = None,
) -> float:
    """Slice-averaged 2D PSNR in dB: the mean of ``psnr_per_slice`` along ``axis`` (0 axial, 1 coronal, 2
    sagittal).

    Slices predicted exactly (MSE 0, e.g. air padding that both volumes clip to the window's floor) and slices
    with no voxel of ``mask`` are left out of the mean, instead of counting as 100 dB as in X2CT-GAN, which
    inflates the mean with padding; ``inf`` when every scored slice is exact.
    """
    values = psnr_per_slice(prediction_hu, target_hu, window, axis, mask=mask)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.inf


def ssim_slices(
    prediction_hu: Any,
    target_hu: Any,
    window: str | HUWindow,
    axis: int | str,
    *,
    mask: np.ndarray | None = None,
    kernel_size: int = 11,
    kernel_sigma: float = 1.5,
) -> np.ndarray:
    """SSIM (Wang et al. 2004) of every slice along ``axis``: ``image_quality.ssim_slices_hu`` on the volume
    with ``axis`` moved first. ``(n,)`` values; NaN for a slice where ``mask`` has no pixel the window fits
    around.
    """
    prediction, target = _pair(prediction_hu, target_hu, "ssim_slices")
    w, axis = get_window(window), _axis(axis)
    if mask is not None:
        mask = np.moveaxis(_numpy(mask).astype(bool), axis, 0)
    return image_quality.ssim_slices_hu(np.moveaxis(prediction, axis, 0), np.moveaxis(target, axis, 0),
                                        low_hu=w.low, high_hu=w.high, mask=mask, kernel_size=kernel_size,
                                        kernel_sigma=kernel_sigma)


def volume_scores(
    prediction_hu: Any,
    target_hu: Any,
    windows: Sequence[str | HUWindow] = ("soft_tissue", "full"),
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """All image scores of one reconstructed ``(D, H, W)`` volume against its CT, in each named window.

    For each window ``w`` (its ``HUWindow.name``), PSNR in dB with peak = the width of ``w``:
    ``psnr_3d_{w}_db`` (one MSE over the volume), ``psnr_{axial,coronal,sagittal}_{w}_db``
    (``psnr_slices``) and ``psnr_slices_{w}_db``, the mean of the three; SSIM:
    ``ssim_{axial,coronal,sagittal}_{w}`` (NaN-mean of ``ssim_slices``) and ``ssim_slices_{w}``, the mean of
    the three. ``mask`` (e.g. the body) restricts all of
    these. Beside them, on the whole volume (no mask, as published): ``psnr_3d_x2ct_gan_db``
    (``psnr_x2ct_gan``: peak 4095 over the 2500-wide range) and ``psnr_3d_x2ct_range_db`` (the same range
    [-1024, 1476] HU with its width as peak); the first exceeds the second by about 4.3 dB.
    """
    prediction, target = _pair(prediction_hu, target_hu, "volume_scores")
    mask = None if mask is None else _numpy(mask).astype(bool)
    scores: dict[str, float] = {}
    for window in windows:
        w = get_window(window)
        scores[f"psnr_3d_{w.name}_db"] = image_quality.psnr_hu(prediction, target, low_hu=w.low,
                                                               high_hu=w.high, mask=mask)
        for name, axis in ORIENTATIONS.items():
            scores[f"psnr_{name}_{w.name}_db"] = psnr_slices(prediction, target, w, axis, mask=mask)
            scores[f"ssim_{name}_{w.name}"] = float(np.nanmean(ssim_slices(prediction, target, w, axis,
                                                                           mask=mask)))
        for metric, unit in (("psnr", "_db"), ("ssim", "")):
            scores[f"{metric}_slices_{w.name}{unit}"] = float(
                np.mean([scores[f"{metric}_{name}_{w.name}{unit}"] for name in ORIENTATIONS])
            )
    scores["psnr_3d_x2ct_gan_db"] = psnr_x2ct_gan(prediction, target)
    scores["psnr_3d_x2ct_range_db"] = image_quality.psnr_hu(prediction, target, low_hu=X2CT_WINDOW.low,
                                                            high_hu=X2CT_WINDOW.high)
    return scores


def projection_consistency(rendered: Any, inputs: Any) -> dict[str, float]:
    """Agreement of DRRs re-rendered from a reconstruction with the input DRRs, both ``(V, R, C)`` line
    integrals (``ctlib.physics.drr.render``); the study renders, this only scores.

    ``rel_l2`` = ||rendered - inputs||_2 / ||inputs||_2 over all views; ``psnr_db`` = 10 log10(peak^2 / MSE)
    with ``peak`` = max(inputs) - min(inputs) over all views (one peak, so views compare); the same per view
    as ``rel_l2_view{v}`` and ``psnr_view{v}_db``. Identical images give ``rel_l2`` 0 and ``psnr`` inf.
    """
    rendered_np, inputs_np = _numpy(rendered).astype(np.float64), _numpy(inputs).astype(np.float64)
    if rendered_np.shape != inputs_np.shape or rendered_np.ndim != 3:
        raise ValueError(
            f"volume_quality.projection_consistency: expected rendered and inputs (V, R, C) of one shape, "
            f"got {rendered_np.shape} and {inputs_np.shape}"
        )
    peak = float(inputs_np.max() - inputs_np.min())
    if not peak > 0:
        raise ValueError("volume_quality.projection_consistency: the input DRRs are constant (zero range)")

    def scores(r: np.ndarray, x: np.ndarray) -> tuple[float, float]:
        mse = float(((r - x) ** 2).mean())
        norm = float(np.linalg.norm(x))
        rel = float(np.linalg.norm(r - x) / norm) if norm > 0 else math.inf
        return rel, math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)

    result = {"peak": peak}
    result["rel_l2"], result["psnr_db"] = scores(rendered_np, inputs_np)
    for v in range(inputs_np.shape[0]):
        result[f"rel_l2_view{v}"], result[f"psnr_view{v}_db"] = scores(rendered_np[v], inputs_np[v])
    return result


def sample_statistics(
    samples_hu: Any,
    target_hu: Any,
    window: str | HUWindow = "full",
    *,
    mask: np.ndarray | None = None,
    max_voxels: int = 2_000_000,
) -> dict[str, Any]:
    """Scores of K sampled reconstructions ``(K, D, H, W)`` (HU) of one case, and how well their spread
    flags their error.

    - ``psnr_3d_db_per_sample`` / ``ssim_axial_per_sample`` (lists, window ``window``, inside ``mask``) with
      their ``*_mean`` and ``*_std`` over the K samples (ddof = 1);
    - ``psnr_3d_of_mean_db`` / ``ssim_axial_of_mean``: the same scores of the per-voxel mean volume;
    - per-voxel std over K in HU (ddof = 1, as ``ctlib.diffusion.sample_statistics.sample_k``; not imported:
      metrics and diffusion are sibling layers): ``std_hu_mean`` over the volume, ``std_hu_inside`` /
      ``std_hu_outside`` of ``mask`` (NaN without a mask or where that side is empty);
    - ``spearman_error_std`` (and ``spearman_p``): Spearman rank correlation over voxels (inside ``mask``)
      between |mean - target| and the std, both in unclipped HU; on at most ``max_voxels`` voxels taken at an
      even stride, so the result is deterministic.
    """
    from scipy.stats import spearmanr

    samples = _numpy(samples_hu)
    target = _numpy(target_hu)
    if samples.ndim != 4 or samples.shape[1:] != target.shape or samples.shape[0] < 2:
        raise ValueError(
            f"volume_quality.sample_statistics: expected samples (K, D, H, W) with K >= 2 and a target "
            f"(D, H, W) of the same D, H, W, got {samples.shape} and {target.shape}"
        )
    w = get_window(window)
    inside = None if mask is None else _numpy(mask).astype(bool)
    if inside is not None and inside.shape != target.shape:
        raise ValueError(f"volume_quality.sample_statistics: mask {inside.shape} differs from {target.shape}")

    def psnr(volume: np.ndarray) -> float:
        return image_quality.psnr_hu(volume, target, low_hu=w.low, high_hu=w.high, mask=inside)

    def ssim(volume: np.ndarray) -> float:
        return float(np.nanmean(ssim_slices(volume, target, w, 0, mask=inside)))

    result: dict[str, Any] = {"k": int(samples.shape[0]), "window": w.name}
    for name, score in (("psnr_3d_db", psnr), ("ssim_axial", ssim)):
        values = [score(sample) for sample in samples]
        result[f"{name}_per_sample"] = values
        with np.errstate(invalid="ignore"):  # an exact sample scores inf: its std is NaN
            result[f"{name}_mean"] = float(np.mean(values))
            result[f"{name}_std"] = float(np.std(values, ddof=1))
    mean = samples.astype(np.float64).mean(axis=0)
    std = samples.std(axis=0, ddof=1, dtype=np.float64)
    result["psnr_3d_of_mean_db"] = psnr(mean)
    result["ssim_axial_of_mean"] = ssim(mean)
    result["std_hu_mean"] = float(std.mean())
    for side, where in (("inside", inside), ("outside", None if inside is None else ~inside)):
        result[f"std_hu_{side}"] = float(std[where].mean()) if where is not None and where.any() else math.nan
    error = np.abs(mean - target)
    error, std = (error[inside], std[inside]) if inside is not None else (error.ravel(), std.ravel())
    stride = max(1, math.ceil(error.size / max_voxels))
    rho, p_value = spearmanr(error[::stride], std[::stride])
    result["spearman_error_std"], result["spearman_p"] = float(rho), float(p_value)
    return result
