"""Slice-interpolation preprocessing: cache volumes, assign patient-wise splits, build thick/thin pairs.

The cache lives in the run directory of the preprocessing notebook (``<run>/cache/``); later
notebooks take that run's id, never a bare path.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ctlib.data import body_mask, cache, splits, windows
from ctlib.data.catalog import VolumeSource
from ctlib.errors import CTInputError
from ctlib.metrics import image_quality
from ctlib.studies.interp import thick_slices

MANIFEST = "manifest.csv"
PAIRS = "pairs.csv"


def cache_volumes(
    sources: Sequence[VolumeSource],
    cache_dir: str | os.PathLike,
    *,
    max_inplane_size: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Read every source, optionally shrink it in-plane, write ``<cache_dir>/volumes/<id>.npz``.

    Returns one manifest row per source with its QC numbers; a source that cannot be read gets
    ``status="refused"`` and the one-line reason instead of stopping the whole run.
    """
    cache_dir = Path(cache_dir)
    rows: list[dict[str, Any]] = []
    for source in tqdm(sources, desc="cache", disable=not progress):
        row: dict[str, Any] = {
            "volume_id": source.volume_id, "patient_id": source.patient_id, "format": source.format,
            "fixed_split": source.fixed_split,
        }
        try:
            volume = source.load()
        except CTInputError as err:
            rows.append({**row, "status": "refused", "error": str(err)})
            continue
        native = volume.spacing
        volume = cache.downsample_inplane(volume, max_inplane_size)
        path = cache.save_volume(volume, cache_dir / "volumes" / f"{source.volume_id}.npz")
        rows.append({
            **row, "status": "cached", "error": "", "cache_file": path.relative_to(cache_dir).as_posix(),
            "native_spacing_y_mm": round(native[1], 4), "native_spacing_x_mm": round(native[2], 4),
            **cache.volume_stats(volume),
        })
    return pd.DataFrame(rows)


def assign_splits(
    manifest: pd.DataFrame,
    *,
    fractions: Mapping[str, float],
    seed: int,
    held_out_patterns: Sequence[str] = (),
    same_patient_patterns: Sequence[str] = (),
    train_patterns: Sequence[str] = (),
) -> pd.DataFrame:
    """Add a ``split`` column: patient-wise and seeded.

    Volumes whose id matches one ``same_patient_patterns`` glob are one patient (e.g. a scan and a crop
    of it); volumes whose id matches a ``held_out_patterns`` glob go to ``test`` and a ``train_patterns``
    glob to ``train`` (matching both is an error); sources with a split of their own (OpenKBP's challenge
    split) keep it; the other patients are split by ``fractions``.
    """
    manifest = manifest.copy()
    for pattern in same_patient_patterns:
        matches = manifest["volume_id"].map(lambda vid, p=pattern: fnmatch.fnmatch(vid, p))
        manifest.loc[matches, "patient_id"] = f"group:{pattern}"
    cached = manifest[manifest["status"] == "cached"]
    fixed: dict[str, str] = {}
    for _, row in cached.iterrows():
        held_out = any(fnmatch.fnmatch(row["volume_id"], p) for p in held_out_patterns)
        trained = any(fnmatch.fnmatch(row["volume_id"], p) for p in train_patterns)
        if held_out and trained:
            raise ValueError(f"{row['volume_id']}: matches both held_out_patterns and train_patterns")
        if held_out:
            fixed[row["patient_id"]] = "test"
        elif trained:
            fixed[row["patient_id"]] = "train"
        elif isinstance(row["fixed_split"], str) and row["fixed_split"]:
            fixed.setdefault(row["patient_id"], row["fixed_split"])
    patients = sorted(set(cached["patient_id"]))
    by_patient = splits.make_splits(patients, dict(fractions), seed=seed, fixed=fixed) if patients else {}
    manifest["split"] = [by_patient.get(p, "") for p in manifest["patient_id"]]
    splits.check_no_leak(manifest[manifest["status"] == "cached"])
    return manifest


def split_of_sources(
    sources: Sequence[VolumeSource], *, fractions: Mapping[str, float], seed: int, **patterns: Sequence[str]
) -> dict[str, str]:
    """``{volume_id: split}`` that ``assign_splits`` gives ``sources`` (all readable), without reading them.

    ``patterns``: ``held_out_patterns``, ``train_patterns``, ``same_patient_patterns``.
    """
    manifest = pd.DataFrame([{"volume_id": s.volume_id, "patient_id": s.patient_id, "format": s.format,
                              "fixed_split": s.fixed_split, "status": "cached"} for s in sources])
    manifest = assign_splits(manifest, fractions=fractions, seed=seed, **patterns)
    return dict(zip(manifest["volume_id"], manifest["split"], strict=True))


def build_pairs(
    manifest: pd.DataFrame,
    cache_dir: str | os.PathLike,
    *,
    factors: Sequence[int],
    mode: thick_slices.ThickMode = "slab",
    progress: bool = True,
) -> pd.DataFrame:
    """Simulate thick volumes at each factor, save them, and score the classic baselines.

    Thick volumes go to ``<cache_dir>/thick/<id>_x<factor>.npz``; the thin target is the cached volume
    cropped to ``[thin_start, thin_start + n_thin)``. Linear and cubic interpolation along z are scored
    by PSNR on synthesized thin slices only, inside the body mask, in the FULL window [-1024, 3071] HU.
    """
    cache_dir = Path(cache_dir)
    rows = []
    cached = manifest[manifest["status"] == "cached"]
    for _, entry in tqdm(list(cached.iterrows()), desc="pairs", disable=not progress):
        volume = cache.load_volume(cache_dir / entry["cache_file"])
        for factor in factors:
            row: dict[str, Any] = {
                "volume_id": entry["volume_id"],
                "split": entry["split"],
                "factor": int(factor),
            }
            try:
                pair = thick_slices.thick_thin_pair(volume, int(factor), mode=mode)
            except ValueError as err:  # too few slices for this factor
                rows.append({**row, "status": "skipped", "error": str(err)})
                continue
            path = cache.save_volume(pair.thick, cache_dir / "thick" / f"{entry['volume_id']}_x{factor}.npz")
            rows.append(
                {
                    **row,
                    "status": "built",
                    "error": "",
                    "mode": mode,
                    "thick_file": path.relative_to(cache_dir).as_posix(),
                    "n_thick": pair.thick.shape[0],
                    "n_thin": pair.thin.shape[0],
                    "thin_start": pair.offset,
                    "thick_spacing_mm": round(pair.thick.spacing[0], 4),
                    "thick_thickness_mm": round(pair.thick.slice_thickness_mm or 0.0, 4),
                    **baseline_psnr(pair),
                }
            )
    return pd.DataFrame(rows)


def baseline_psnr(pair: thick_slices.ThickThinPair) -> dict[str, float]:
    """PSNR (dB, FULL window) of linear and cubic z-interpolation on synthesized slices in the body."""
    scored = pair.synthesized[:, None, None] & body_mask.body_mask(pair.thin)
    if not scored.any():
        return {"linear_psnr_db": float("nan"), "cubic_psnr_db": float("nan")}
    window = windows.FULL
    result = {}
    for method in ("linear", "cubic"):
        estimate = thick_slices.upsample_z(pair.thick, pair.factor, method, n_thin=pair.thin.shape[0])
        result[f"{method}_psnr_db"] = round(
            image_quality.psnr_hu(estimate.array, pair.thin.array, low_hu=window.low, high_hu=window.high,
                                  mask=scored), 3)
    return result


def summary_metrics(manifest: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, float]:
    """Flat metrics for ``metrics.json``: counts and mean baseline PSNR per factor."""
    metrics: dict[str, float] = {
        "n_volumes": int((manifest["status"] == "cached").sum()),
        "n_refused": int((manifest["status"] == "refused").sum()),
    }
    for split, count in manifest[manifest["status"] == "cached"]["split"].value_counts().sort_index().items():
        metrics[f"n_{split}"] = int(count)
    built = pairs[pairs["status"] == "built"] if len(pairs) else pairs
    for factor, group in built.groupby("factor"):
        metrics[f"x{factor}_linear_psnr_db"] = round(float(np.nanmean(group["linear_psnr_db"])), 3)
        metrics[f"x{factor}_cubic_psnr_db"] = round(float(np.nanmean(group["cubic_psnr_db"])), 3)
    return metrics
