"""The preprocessing cache: one ``.npz`` per volume (int16 HU + geometry) and a manifest.

Cached volumes hold HU rounded to integers (lossless for DICOM, OpenKBP and integer NIfTI sources)
and the full geometry, so a cached volume writes back to DICOM or NIfTI exactly where it came from.
No patient identifiers are stored: ids come from file and folder names chosen by the data source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ctlib.atomic import atomic_path
from ctlib.data import body_mask as body_mask_module
from ctlib.errors import CTInputError
from ctlib.io.volume import Volume

INT16_MIN, INT16_MAX = -32768, 32767


def save_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` to ``path`` (``.npz``) atomically, HU rounded to int16."""
    path = Path(path)
    hu = np.clip(np.rint(volume.array), INT16_MIN, INT16_MAX).astype(np.int16)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                hu=hu,
                spacing_mm=np.asarray(volume.spacing),
                origin_lps_mm=np.asarray(volume.origin),
                direction=volume.direction,
                modality=np.asarray(volume.modality),
                slice_thickness_mm=np.asarray(
                    np.nan if volume.slice_thickness_mm is None else volume.slice_thickness_mm
                ),
            )
    return path


def load_volume(path: str | os.PathLike) -> Volume:
    """Read a cached volume written by ``save_volume``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            thickness = float(data["slice_thickness_mm"])
            return Volume(
                array=data["hu"].astype(np.float32),
                spacing=tuple(data["spacing_mm"]),
                origin=tuple(data["origin_lps_mm"]),
                direction=data["direction"],
                modality=str(data["modality"]),
                slice_thickness_mm=None if np.isnan(thickness) else thickness,
                meta={"format": "cache", "source": str(path)},
            )
    except (OSError, KeyError, ValueError) as err:
        raise CTInputError(path, f"not a ctlib cache file ({type(err).__name__}: {err})") from None


def downsample_inplane(volume: Volume, max_size: int) -> Volume:
    """Block-average in-plane by the smallest integer factor that brings y and x to ``max_size`` or less.

    The geometry follows: spacing grows by the factor and the origin moves to the centre of the
    first block. Slices are untouched, so z-interpolation studies keep their native depth.
    """
    _, ny, nx = volume.shape
    factor = max(1, int(np.ceil(max(ny, nx) / max_size))) if max_size > 0 else 1
    if factor == 1:
        return volume
    ny_crop, nx_crop = (ny // factor) * factor, (nx // factor) * factor
    array = volume.array[:, :ny_crop, :nx_crop]
    blocks = array.reshape(volume.shape[0], ny_crop // factor, factor, nx_crop // factor, factor)
    array = blocks.mean(axis=(2, 4))
    dz, dy, dx = volume.spacing
    shift = (factor - 1) / 2.0
    origin = np.asarray(volume.origin) + volume.direction @ np.array([shift * dx, shift * dy, 0.0])
    return volume.with_array(array, spacing=(dz, dy * factor, dx * factor), origin=tuple(origin))


def volume_stats(volume: Volume) -> dict[str, Any]:
    """QC numbers for the manifest: shape, spacing, HU range and percentiles, body fraction."""
    mask = body_mask_module.body_mask(volume)
    inside = volume.array[mask] if mask.any() else volume.array.ravel()
    p01, p50, p99 = np.percentile(inside, [1, 50, 99])
    z, y, x = volume.shape
    dz, dy, dx = volume.spacing
    return {
        "shape_z": z,
        "shape_y": y,
        "shape_x": x,
        "spacing_z_mm": round(dz, 4),
        "spacing_y_mm": round(dy, 4),
        "spacing_x_mm": round(dx, 4),
        "slice_thickness_mm": (
            None if volume.slice_thickness_mm is None else round(volume.slice_thickness_mm, 4)
        ),
        "hu_min": float(volume.array.min()),
        "hu_max": float(volume.array.max()),
        "body_hu_p01": round(float(p01), 1),
        "body_hu_median": round(float(p50), 1),
        "body_hu_p99": round(float(p99), 1),
        "body_fraction": round(float(mask.mean()), 4),
    }
