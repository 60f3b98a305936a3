"""Metrics: image quality (PSNR, per-slice SSIM in a named HU window) and the slice-interpolation protocol."""
