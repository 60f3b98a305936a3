"""Biplanar X-ray to CT by conditional diffusion, trained on DRR pairs rendered from real CT (issue 14)."""
