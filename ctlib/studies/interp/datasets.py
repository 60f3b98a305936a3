"""Training datasets over a preprocessing run's cache: random axial slices, and thick/thin 3D patch pairs.

Volumes are read lazily from ``<run>/cache/volumes/<id>.npz`` and kept as int16 HU in a small LRU, so
memory holds ``lru_size`` volumes whatever the split size. Index ``i`` names a depth position (a slice,
or an aligned block of thin slices); the in-plane position is drawn from the ``rng`` that
``sample(i, rng)`` receives (``ctlib.train.streams.BatchStream`` seeds it from the data position, so
resumed runs see the same crops); ``dataset[i]`` uses a generator seeded by ``(seed, i)``. Values are
window-normalized to ``[-1, 1]`` (``windows.normalize``); in-plane padding, where a patch is larger
than the slice, is ``-1`` (the bottom of the window, air for the usual windows).
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctlib import runs
from ctlib.data import cache, lru, windows
from ctlib.data.splits import load_manifest
from ctlib.errors import CTInputError
from ctlib.io.volume import Volume
from ctlib.studies.interp import thick_slices

VolumeList = Sequence[tuple[str, str | os.PathLike]]


def load_split(run_id_or_dir: str | os.PathLike, split: str) -> list[tuple[str, Path]]:
    """``[(volume_id, cache file)]`` of one split of a preprocessing run (a run id, or its folder)."""
    candidate = Path(run_id_or_dir)
    run_dir = (
        candidate if (candidate / "cache" / "manifest.csv").is_file() else runs.run_dir_of(str(run_id_or_dir))
    )
    manifest_path = run_dir / "cache" / "manifest.csv"
    if not manifest_path.is_file():
        raise CTInputError(manifest_path, "no manifest: is this the run of the preprocessing notebook?")
    manifest = load_manifest(manifest_path)
    missing = [c for c in ("volume_id", "split", "cache_file", "status") if c not in manifest.columns]
    if missing:
        raise CTInputError(manifest_path, f"manifest lacks column(s) {missing}")
    cached = manifest[manifest["status"] == "cached"]
    rows = cached[cached["split"] == split]
    if rows.empty:
        raise ValueError(
            f"{manifest_path}: no cached volumes in split {split!r}; splits: {sorted(set(cached['split']))}"
        )
    out = [(str(r.volume_id), run_dir / "cache" / str(r.cache_file)) for r in rows.itertuples()]
    absent = [str(p) for _, p in out if not p.is_file()]
    if absent:
        raise CTInputError(
            absent[0], f"cache file listed in the manifest is missing ({len(absent)} missing in all)"
        )
    return out


def cached_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(z, y, x)`` of a cached volume from its ``.npz`` header alone (no decompression of the data)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("hu.npy") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, _ = np.lib.format.read_array_header_2_0(handle)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise CTInputError(path, f"not a ctlib cache file ({type(err).__name__}: {err})") from None
    return tuple(int(n) for n in shape)


def _load_int16(path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A cached volume as ``(int16 HU (z, y, x), spacing_mm)``, the form the volume LRU keeps."""
    volume = cache.load_volume(path)
    return volume.array.astype(np.int16), volume.spacing


def _pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"patch size must be positive, got {size}")
    return int(h), int(w)


def _inplane_window(
    shape_yx: tuple[int, int], patch: tuple[int, int] | None, rng: np.random.Generator
) -> tuple[slice, slice]:
    """Random in-plane crop (the whole axis where the patch is not smaller than the slice)."""
    if patch is None:
        return slice(None), slice(None)
    out = []
    for n, p in zip(shape_yx, patch, strict=True):
        start = int(rng.integers(0, n - p + 1)) if n > p else 0
        out.append(slice(start, start + p))
    return out[0], out[1]


def _pad_inplane(x: np.ndarray, patch: tuple[int, int] | None) -> np.ndarray:
    """Pad the last two axes to ``patch`` with -1, centred (only where the slice is smaller)."""
    if patch is None or (x.shape[-2] >= patch[0] and x.shape[-1] >= patch[1]):
        return x
    pads = [(0, 0)] * (x.ndim - 2)
    for n, p in zip(x.shape[-2:], patch, strict=True):
        extra = max(0, p - n)
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(x, pads, constant_values=-1.0)


class _CachedVolumes:
    """Shared parts: volume list, window, LRU, index -> (volume, depth position)."""

    def __init__(self, volumes: VolumeList, window: str | windows.HUWindow, seed: int, lru_size: int) -> None:
        if not volumes:
            raise ValueError("dataset: the volume list is empty")
        self.volume_ids = [str(v) for v, _ in volumes]
        self.paths = [Path(p) for _, p in volumes]
        self.window = windows.get_window(window)
        self.seed = int(seed)
        self.lru_size = max(1, int(lru_size))
        self.lru = lru.LoadingLRU(_load_int16, self.lru_size)
        self.groups: list[int] = []

    def _set_groups(self, groups: list[int]) -> None:
        self.groups = groups
        self._offsets = np.concatenate([[0], np.cumsum(groups)])

    @property
    def normalization(self) -> dict[str, Any]:
        """The record to store with checkpoints (``windows.normalization_record``)."""
        return windows.normalization_record(self.window)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(volume number, position within the volume)`` of a dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        v = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return v, int(index - self._offsets[v])

    def __getitem__(self, index: int) -> Any:
        return self.sample(index, np.random.default_rng([self.seed, int(index)]))

    def sample(self, index: int, rng: np.random.Generator) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class SliceDataset(_CachedVolumes):
    """Axial slices (or random in-plane patches of them) of cached volumes: ``(1, H, W)`` in ``[-1, 1]``.

    Index ``i`` is one slice of one volume (every slice once per epoch). ``patch_size=None`` gives
    whole slices (volumes must then share their in-plane size to be batched).
    """

    def __init__(
        self,
        volumes: VolumeList,
        *,
        window: str | windows.HUWindow = "full",
        patch_size: int | Sequence[int] | None = None,
        seed: int = 0,
        lru_size: int = 4,
    ) -> None:
        super().__init__(volumes, window, seed, lru_size)
        self.patch_size = _pair(patch_size)
        self._set_groups([cached_shape(p)[0] for p in self.paths])

    def sample(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        """Slice ``index`` with a random in-plane crop drawn from ``rng``: ``(1, H, W)`` float32."""
        v, z = self.locate(index)
        hu, _ = self.lru.get(self.paths[v])
        ys, xs = _inplane_window(hu.shape[1:], self.patch_size, rng)
        image = windows.normalize(hu[z, ys, xs].astype(np.float32), self.window)
        return torch.from_numpy(np.ascontiguousarray(_pad_inplane(image, self.patch_size))[None])


class PairPatchDataset(_CachedVolumes):
    """Thick/thin training pairs: 3D patches ``(D, h, w)`` of the thin volume with their simulated thick
    slices.

    Thick slice ``k`` of a volume is ``thick_slices.simulate_thick(volume, factor, mode, slab)`` slice
    ``k`` (slab mean of thin slices ``k * factor + [0, slab)``, or decimation), the grid of
    ``thick_thin_pair(..., offset=0)``. Index ``i`` is an aligned depth position: a patch starts at
    thin slice ``b * factor`` and holds ``depth`` thin slices (``depth // factor`` thick ones). Each
    sample is a dict of ``(1, ., h, w)`` float32 tensors in ``[-1, 1]``:

    - ``"thin"``: the target, ``(1, D, h, w)``;
    - ``"thick"``: the thick slices of the patch, ``(1, D / factor, h, w)``;
    - ``"thick_on_thin_grid"``: each thick slice repeated over its ``factor`` thin slices, ``(1, D, h, w)``;
    - ``"linear"``: linear z-interpolation of the thick slices on the thin grid, ``(1, D, h, w)``,
      computed with one thick slice of context on each side so it equals the crop of the whole
      volume's ``upsample_linear_z``;

    plus ``"volume_index"`` and ``"z0"`` (first thin slice). Slabs are averaged in HU, then normalized.
    Volumes too short for one patch are skipped with a warning.
    """

    def __init__(
        self,
        volumes: VolumeList,
        *,
        factor: int,
        depth: int,
        patch_size: int | Sequence[int] | None = None,
        window: str | windows.HUWindow = "full",
        mode: thick_slices.ThickMode = "slab",
        slab: int | None = None,
        seed: int = 0,
        lru_size: int = 4,
    ) -> None:
        super().__init__(volumes, window, seed, lru_size)
        if mode not in thick_slices.THICK_MODES:
            raise ValueError(f"mode must be one of {list(thick_slices.THICK_MODES)}, got {mode!r}")
        if factor < 1 or depth < factor or depth % factor:
            raise ValueError(
                f"depth must be a positive multiple of factor; got depth={depth}, factor={factor}"
            )
        self.factor, self.depth, self.mode = int(factor), int(depth), mode
        self.slab = 1 if mode == "decimate" else int(slab or factor)
        self.patch_size = _pair(patch_size)
        self.blocks_per_patch = self.depth // self.factor
        centre0 = (self.slab - 1) / 2.0
        self._context_before = max(1, math.ceil(centre0 / self.factor))
        keep, groups, self.n_blocks, short = [], [], [], []
        for i, path in enumerate(self.paths):
            n_thin = cached_shape(path)[0]
            n_blocks = (
                min((n_thin - self.slab) // self.factor + 1, n_thin // self.factor)
                if n_thin >= self.slab
                else 0
            )
            if n_blocks < self.blocks_per_patch:
                short.append(f"{self.volume_ids[i]} ({n_thin} slices)")
                continue
            keep.append(i)
            groups.append(n_blocks - self.blocks_per_patch + 1)
            self.n_blocks.append(n_blocks)
        if short:
            warnings.warn(
                f"PairPatchDataset: skipping volumes too short for depth={depth}: {short}", stacklevel=2
            )
        if not keep:
            raise ValueError(
                f"PairPatchDataset: no volume has enough slices for depth={depth} at factor {factor}"
            )
        self.volume_ids = [self.volume_ids[i] for i in keep]
        self.paths = [self.paths[i] for i in keep]
        self._set_groups(groups)

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Patch ``index`` with a random in-plane crop drawn from ``rng`` (see the class docstring)."""
        v, b0 = self.locate(index)
        hu, spacing = self.lru.get(self.paths[v])
        f, nb = self.factor, self.blocks_per_patch
        e0 = max(0, b0 - self._context_before)
        e1 = min(self.n_blocks[v], b0 + nb + 1)
        ys, xs = _inplane_window(hu.shape[1:], self.patch_size, rng)
        region = Volume(hu[e0 * f : (e1 - 1) * f + self.slab, ys, xs].astype(np.float32), spacing)
        thick = thick_slices.simulate_thick(region, f, self.mode, self.slab if self.mode == "slab" else None)
        linear = thick_slices.upsample_linear_z(thick, f, n_thin=(e1 - e0) * f).array
        k0 = b0 - e0
        thick_hu = thick.array[k0 : k0 + nb]
        parts = {
            "thin": hu[b0 * f : (b0 + nb) * f, ys, xs].astype(np.float32),
            "thick": thick_hu,
            "thick_on_thin_grid": np.repeat(thick_hu, f, axis=0),
            "linear": linear[k0 * f : (k0 + nb) * f],
        }
        out: dict[str, Any] = {
            name: torch.from_numpy(
                np.ascontiguousarray(_pad_inplane(windows.normalize(a, self.window), self.patch_size))[None]
            )
            for name, a in parts.items()
        }
        out["volume_index"] = v
        out["z0"] = b0 * f
        return out
