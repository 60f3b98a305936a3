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
