"""Scoring every reconstruction method of the X-ray-to-CT study on one split, case by case.

Methods: the training-mean volume and the calibrated back-projection (``baselines``), the deterministic
2D-to-3D network, and the diffusion model as the mean of K DDIM samples (with and without the SIRT
data-consistency step). Each prediction is scored in HU against the truth over the whole field-of-view cube
(``ctlib.metrics.volume_quality.volume_scores``: 3D and slice-averaged PSNR with the window width as peak,
per-slice SSIM, X2CT-GAN's 4095-peak PSNR beside them) and re-rendered with the views' own geometry for
projection consistency (relative L2 and PSNR against the input views).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctlib.metrics import volume_quality
from ctlib.studies.xray2ct import normalization, sampling
from ctlib.studies.xray2ct.run_kind import X2CTRun
from ctlib.studies.xray2ct.views import ViewGeometry

HEADLINE = ("psnr_3d_soft_tissue_db", "psnr_slices_soft_tissue_db", "ssim_slices_soft_tissue",
            "psnr_3d_full_db", "ssim_slices_full", "psnr_3d_x2ct_gan_db", "projection_rel_l2")  # fmt: skip


@torch.no_grad()
def predict_deterministic(run: X2CTRun, drrs: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """``(N, V, rows, cols)`` views -> ``(N, D, H, W)`` HU from a deterministic run."""
    device = next(run.model.parameters()).device
    out = []
    for start in range(0, len(drrs), batch_size):
        views = torch.from_numpy(np.asarray(drrs[start : start + batch_size], np.float32)).to(device)
        out.append(normalization.to_hu(run.model(views)[:, 0].clamp(-1, 1), run.window).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def sample_case(
    run: X2CTRun, drrs: np.ndarray, *, num_samples: int, num_steps: int, eta: float = 0.0,
    consistency_weight: float = 0.0, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """K DDIM samples of one case's views ``(V, rows, cols)`` from a diffusion run: ``(K, D, H, W)`` HU."""
    volumes = sampling.sample_volumes(
        run.model, torch.from_numpy(np.asarray(drrs, np.float32)), run.spec, num_samples=num_samples,
        num_steps=num_steps, eta=eta, consistency_weight=consistency_weight, window=run.window,
        seed=seed,
    )  # fmt: skip
    return normalization.to_hu(volumes, run.window).cpu().numpy().astype(np.float32)


def score_case(
    prediction_hu: np.ndarray,
    truth_hu: np.ndarray,
    views: np.ndarray,
    geometry: ViewGeometry,
    windows: Sequence[str] = ("soft_tissue", "full"),
) -> dict[str, float]:
    """Image scores of one prediction plus its projection consistency (``projection_`` keys)."""
    scores = volume_quality.volume_scores(prediction_hu, truth_hu, windows=tuple(windows))
    rendered = geometry.render_hu(torch.tensor(np.asarray(prediction_hu, np.float32))[None])[0]  # a copy
    consistency = volume_quality.projection_consistency(rendered.numpy(), np.asarray(views, np.float32))
    scores.update({f"projection_{k}": float(v) for k, v in consistency.items()})
    return scores


def summary_table(frame: pd.DataFrame, columns: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """Mean and standard deviation over cases of each method's headline scores (``method`` x ``score``)."""
    kept = [c for c in columns if c in frame]
    grouped = frame.groupby("method", sort=False)[kept]
    mean, std = grouped.mean(), grouped.std(ddof=1)
    table = pd.concat({"mean": mean, "std": std}, axis=1).swaplevel(axis=1)
    return table[[(c, s) for c in kept for s in ("mean", "std")]]


def paired_difference(frame: pd.DataFrame, a: str, b: str, column: str) -> dict[str, Any]:
    """Mean of ``a - b`` over the cases both methods scored, with its standard error and the number of cases
    where ``a`` is better (higher)."""
    pivot = frame.pivot(index="case_id", columns="method", values=column)[[a, b]].dropna()
    diff = pivot[a] - pivot[b]
    n = int(len(diff))
    sem = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(diff.mean()), "sem": sem, "cases": n, "a_better": int((diff > 0).sum())}
