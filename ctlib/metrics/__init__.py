"""Metrics: image quality (PSNR in a named HU window)."""
