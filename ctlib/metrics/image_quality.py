"""Image-quality metrics in a named HU window (the evaluation protocol of ../DESIGN: state the window)."""

from __future__ import annotations

import numpy as np


def psnr_hu(
    prediction_hu: np.ndarray,
    target_hu: np.ndarray,
    *,
    low_hu: float,
    high_hu: float,
    mask: np.ndarray | None = None,
) -> float:
    """Peak signal-to-noise ratio in dB after clipping HU to [low, high] and scaling to [0, 1].

    PSNR = 10 log10(1 / MSE) with the peak 1 = the window width; ``mask`` restricts the MSE to
    voxels inside it (e.g. the body, on synthesized slices only). Identical inputs give ``inf``.
    """
    if prediction_hu.shape != target_hu.shape:
        raise ValueError(f"shapes differ: prediction {prediction_hu.shape}, target {target_hu.shape}")
    if high_hu <= low_hu:
        raise ValueError(f"window must have high > low, got [{low_hu}, {high_hu}]")
    width = high_hu - low_hu
    pred = (np.clip(prediction_hu, low_hu, high_hu) - low_hu) / width
    true = (np.clip(target_hu, low_hu, high_hu) - low_hu) / width
    squared = (pred.astype(np.float64) - true) ** 2
    if mask is not None:
        if mask.shape != squared.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the images' {squared.shape}")
        if not mask.any():
            raise ValueError("mask is empty: PSNR over no voxels is undefined")
        squared = squared[mask]
    mse = float(squared.mean())
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def ssim_slices_hu(
    prediction_hu: np.ndarray,
    target_hu: np.ndarray,
    *,
    low_hu: float,
    high_hu: float,
    mask: np.ndarray | None = None,
    kernel_size: int = 11,
    kernel_sigma: float = 1.5,
) -> np.ndarray:
    """SSIM (Wang et al. 2004) of every axial slice of ``(z, y, x)`` volumes: ``(z,)`` values.

    HU are clipped to [low, high] and scaled to [0, 1] (data range 1); the Gaussian-window SSIM map
    (MONAI's ``compute_ssim_and_cs``, valid convolution) is averaged over the pixels of ``mask`` that
    the window fits around, or over the whole map without a mask. A slice with no such pixel is NaN.
    """
    import torch
    from monai.metrics.regression import compute_ssim_and_cs

    if prediction_hu.shape != target_hu.shape or prediction_hu.ndim != 3:
        raise ValueError(
            f"expected two (z, y, x) volumes of one shape, got {prediction_hu.shape}, {target_hu.shape}"
        )
    width = high_hu - low_hu
    pred = torch.from_numpy((np.clip(prediction_hu, low_hu, high_hu) - low_hu) / width).float()[:, None]
    true = torch.from_numpy((np.clip(target_hu, low_hu, high_hu) - low_hu) / width).float()[:, None]
    ssim_map, _ = compute_ssim_and_cs(pred, true, spatial_dims=2, kernel_size=(kernel_size,) * 2,
                                      kernel_sigma=(kernel_sigma,) * 2, data_range=1.0)
    ssim_map = ssim_map[:, 0].double().numpy()
    if mask is None:
        return ssim_map.mean(axis=(1, 2))
    half = kernel_size // 2
    inner = mask[:, half : mask.shape[1] - half, half : mask.shape[2] - half]
    counts = inner.sum(axis=(1, 2))
    sums = np.where(inner, ssim_map, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
