"""Metrics shared by the studies: image quality (PSNR, per-slice SSIM in a named HU window), dose
(OpenKBP dose and DVH scores, gamma index). A study's protocol (what is scored, where) lives in the study."""
