"""Volumes of the retrieval study as uint8 arrays of the model's input shape, in one ``.npz`` per split.

Preprocessing (``to_uint8``): reorient to LPS, crop to the body's bounding box (HU > -500, plus a margin),
resize to ``input_shape`` (Gaussian anti-aliasing before downsampling, linear interpolation; the aspect is
not kept: every volume fills the input), clip to the HU window and map it linearly to 0..255. The mapping
is recorded with the file (``window_low_hu``, ``window_high_hu``: ``hu = low + (high - low) * value / 255``).

A split file holds ``volumes`` (N, D, H, W) uint8, ``labels`` (N, C) uint8 over ``label_names``,
``case_ids``, ``patient_ids``, ``sources`` and the window; ``RetrievalSplit`` reads it back and checks it.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ctlib import atomic
from ctlib.data.body_mask import body_mask
from ctlib.io.orientation import reorient_to_lps
from ctlib.io.volume import Volume

FORMAT_VERSION = 1
REQUIRED_KEYS = ("volumes", "labels", "label_names", "case_ids", "patient_ids", "sources", "window_hu")


def body_box(hu: np.ndarray, margin: int = 2, threshold_hu: float = -500.0) -> tuple[slice, ...]:
    """Bounding box of the body (``ctlib.data.body_mask``) plus ``margin`` voxels; all of it if empty."""
    mask = body_mask(hu, threshold_hu=threshold_hu)
    if not mask.any():
        return tuple(slice(0, n) for n in hu.shape)
    box = []
    for axis, n in enumerate(hu.shape):
        other = tuple(a for a in range(hu.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, int(hit[0]) - margin), min(n, int(hit[-1]) + 1 + margin)))
    return tuple(box)


def resize(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize to ``shape``: Gaussian prefilter (sigma = (factor - 1) / 2 on downsampled axes), then linear."""
    factors = np.array(array.shape, float) / np.array(shape, float)
    sigma = np.maximum(factors - 1.0, 0.0) / 2.0
    smooth = (
        ndimage.gaussian_filter(array.astype(np.float32), sigma) if sigma.any() else array.astype(np.float32)
    )
    zoom = np.array(shape, float) / np.array(array.shape, float)
    out = ndimage.zoom(smooth, zoom, order=1, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # zoom rounds each output size; pad or crop the last voxel
        pads = [(0, max(0, s - o)) for s, o in zip(shape, out.shape, strict=True)]
        out = np.pad(out, pads, mode="edge")[tuple(slice(0, s) for s in shape)]
    return out


def to_uint8(volume: Volume, input_shape: Sequence[int], window_hu: tuple[float, float]) -> np.ndarray:
    """``(D, H, W)`` uint8 of a CT volume: LPS, body crop, resize, window (see the module docstring)."""
    low, high = (float(w) for w in window_hu)
    if not high > low:
        raise ValueError(f"window_hu must be (low, high) with high > low, got {window_hu}")
    hu = reorient_to_lps(volume).array
    hu = hu[body_box(hu)]
    resized = resize(hu, input_shape)
    return np.round((np.clip(resized, low, high) - low) / (high - low) * 255.0).astype(np.uint8)


def uint8_to_hu(values: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """Inverse of the stored mapping (within the window)."""
    low, high = (float(w) for w in window_hu)
    return low + (high - low) * np.asarray(values, np.float32) / 255.0


def write_split(
    path: str | os.PathLike,
    volumes: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    case_ids: Sequence[str],
    patient_ids: Sequence[str],
    sources: Sequence[str],
    window_hu: tuple[float, float],
) -> Path:
    """Write one split file atomically (a failed write leaves an existing file untouched)."""
    volumes, labels = np.asarray(volumes), np.asarray(labels)
    n = len(case_ids)
    if volumes.dtype != np.uint8 or volumes.ndim != 4 or len(volumes) != n:
        raise ValueError(
            f"{path}: volumes must be uint8 (N, D, H, W) with N = {n}, got {volumes.dtype} {volumes.shape}"
        )
    if labels.shape != (n, len(label_names)) or len(patient_ids) != n or len(sources) != n:
        raise ValueError(
            f"{path}: labels {labels.shape}, {len(patient_ids)} patients, {len(sources)} sources "
            f"for {n} cases and {len(label_names)} label names"
        )
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle, volumes=volumes, labels=labels.astype(np.uint8),
                label_names=np.array(label_names, str),
                case_ids=np.array(case_ids, str), patient_ids=np.array(patient_ids, str),
                sources=np.array(sources, str), window_hu=np.array(window_hu, np.float64),
                format_version=np.array(FORMAT_VERSION),
            )  # fmt: skip
    return Path(path)


@dataclass
class RetrievalSplit:
    """One split file in memory (see the module docstring)."""

    path: Path
    volumes: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    case_ids: list[str]
    patient_ids: list[str]
    sources: list[str]
    window_hu: tuple[float, float]

    @classmethod
    def load(cls, path: str | os.PathLike) -> RetrievalSplit:
        """Read and check a split file; a clear one-line error names the file and the problem."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such retrieval split file")
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("one .npy array, not an .npz archive")
            with data:
                missing = [k for k in REQUIRED_KEYS if k not in data.files]
                arrays = {k: data[k] for k in REQUIRED_KEYS if k not in missing}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # ValueError: not .npy/.npz bytes
            raise ValueError(f"{path}: unreadable retrieval split file ({err})") from None
        if missing:
            raise ValueError(f"{path}: not a retrieval split file (missing {missing})")
        n = len(arrays["case_ids"])
        counts = [len(arrays[k]) for k in ("volumes", "labels", "patient_ids", "sources")]
        columns_ok = arrays["labels"].shape[1:] == (len(arrays["label_names"]),)
        if arrays["volumes"].dtype != np.uint8 or counts != [n] * 4 or not columns_ok:
            raise ValueError(f"{path}: volumes, labels, label names and ids disagree in count or type")
        return cls(
            path=path, volumes=arrays["volumes"], labels=arrays["labels"].astype(np.uint8),
            label_names=arrays["label_names"].tolist(), case_ids=arrays["case_ids"].tolist(),
            patient_ids=arrays["patient_ids"].tolist(), sources=arrays["sources"].tolist(),
            window_hu=tuple(float(w) for w in arrays["window_hu"]),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.volumes.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: Sequence[int]) -> RetrievalSplit:
        """The cases at ``indices`` (e.g. the train_eval subset), same file and window."""
        idx = np.asarray(indices, int)
        pick = (
            [self.case_ids[i] for i in idx],
            [self.patient_ids[i] for i in idx],
            [self.sources[i] for i in idx],
        )
        return RetrievalSplit(self.path, self.volumes[idx], self.labels[idx], list(self.label_names), *pick,
                              window_hu=self.window_hu)  # fmt: skip
