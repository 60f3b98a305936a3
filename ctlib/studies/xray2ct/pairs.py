"""Biplanar DRR pairs of CT cubes, one HDF5 file per split (writer ``write_split``, reader ``PairFile``).

Geometry (``pair_geometry``): X2CT-GAN's cone beam, source 541 mm and flat detector 949 mm from the
source; the detector is ``fov_mm * sdd / sid`` wide, so the field of view at the isocentre (the cube's
centre) fills it (magnification ``sdd / sid`` = 1.754). Two views (``ANGLES_DEG``): 0 = PA (detector
columns to the patient's left) and 90 = left lateral (columns to posterior), rows from superior to
inferior (``ctlib.physics.drr``). The DRRs are Beer-Lambert line integrals ``-ln(I / I0)`` at one
energy, rendered from the stored volume itself (HU clipped to ``HU_RANGE`` and rounded to int16), so
volume and radiographs agree exactly.

HDF5 layout (``h5py``): ``volumes_hu`` int16 ``(N, S, S, S)`` (z, y, x) LPS, one gzip chunk per case;
``drrs`` float32 ``(N, 2, R, C)``; ``case_ids``, ``patient_ids``, ``sources`` (UTF-8, ``(N,)``);
``centre_lps_mm``, ``source_spacing_mm`` ``(N, 3)`` and ``source_shape`` ``(N, 3)`` (the source volume on
the LPS grid). File attributes: format, split, fov, spacing, geometry, angles, energy, samples per ray.
Written to a temporary sibling and renamed (``ctlib.atomic``): a failed run leaves no half-written split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ctlib.atomic import atomic_path
from ctlib.errors import CTInputError
from ctlib.io.volume import Volume
from ctlib.physics import drr
from ctlib.physics.drr import ConeBeam
from ctlib.studies.xray2ct import fov as fov_mod

FORMAT = "ctlib.xray2ct.pairs/1"
ANGLES_DEG: tuple[float, ...] = (0.0, 90.0)
HU_RANGE = (-1000, 3071)  # stored HU: air (the DRR's zero) to the 12-bit CT ceiling (metal is clipped)
_STR = h5py.string_dtype(encoding="utf-8")
_TEXT = ("case_ids", "patient_ids", "sources")
_DATASETS = ("volumes_hu", "drrs", *_TEXT, "centre_lps_mm", "source_spacing_mm", "source_shape")


def pair_geometry(
    fov_mm: float,
    detector_pixels: int | tuple[int, int],
    source_to_isocentre_mm: float = 541.0,
    source_to_detector_mm: float = 949.0,
) -> ConeBeam:
    """Cone beam whose detector (``fov_mm * sdd / sid`` square) sees the isocentre's FOV edge to edge."""
    if not fov_mm > 0 or not source_to_detector_mm > source_to_isocentre_mm > fov_mm / 2:
        raise ValueError(
            f"need fov_mm > 0 and source_to_detector_mm > source_to_isocentre_mm > fov_mm / 2 (the source "
            f"outside the cube), got fov {fov_mm}, sid {source_to_isocentre_mm}, sdd {source_to_detector_mm}"
        )
    pixels = (detector_pixels, detector_pixels) if np.isscalar(detector_pixels) else tuple(detector_pixels)
    if len(pixels) != 2 or min(int(p) for p in pixels) < 1:
        raise ValueError(f"detector_pixels must be a positive int or (rows, cols), got {detector_pixels}")
    side = float(fov_mm) * source_to_detector_mm / source_to_isocentre_mm
    return ConeBeam(float(source_to_isocentre_mm), float(source_to_detector_mm), (side, side),
                    (int(pixels[0]), int(pixels[1])))


def render_pair(
    hu: torch.Tensor | np.ndarray,
    spacing_mm: float | tuple[float, float, float],
    geometry: ConeBeam,
    energy_kev: float = 60.0,
    n_samples: int = 256,
) -> torch.Tensor:
    """PA and lateral line integrals ``(2, R, C)`` of a cubic HU volume ``(S, S, S)`` (``drr.render_hu``)."""
    hu = torch.as_tensor(hu, dtype=torch.float32)
    if hu.ndim != 3 or len(set(hu.shape)) != 1:
        raise ValueError(f"render_pair expects a cubic (S, S, S) HU volume, got shape {tuple(hu.shape)}")
    spacing = (float(spacing_mm),) * 3 if np.isscalar(spacing_mm) else tuple(float(s) for s in spacing_mm)
    return drr.render_hu(hu, spacing, geometry, ANGLES_DEG, energy_kev=energy_kev, n_samples=int(n_samples))


def to_stored_hu(hu: np.ndarray) -> np.ndarray:
    """HU as stored: clipped to ``HU_RANGE`` and rounded to int16."""
    return np.rint(np.clip(hu, *HU_RANGE)).astype(np.int16)


@dataclass(frozen=True)
class PairCase:
    """One case to write: ids, source name and how to load its HU volume."""

    case_id: str
    patient_id: str
    source: str
    load: Callable[[], Volume]


def write_split(
    path: str | os.PathLike,
    cases: Iterable[PairCase],
    *,
    fov_mm: float,
    size: int,
    geometry: ConeBeam,
    energy_kev: float = 60.0,
    n_samples: int = 256,
    progress: Callable[[int, PairCase, Volume], None] | None = None,
) -> list[dict]:
    """Resample each case to the FOV cube (``fov.resample_to_fov``), render its pair, write one file
    atomically. Returns one manifest row per case (ids, source, centre, original spacing and shape)."""
    cases = list(cases)
    path = Path(path)
    if not cases:
        raise ValueError(f"{path}: no cases to write")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate case ids {sorted({i for i in ids if ids.count(i) > 1})}")
    n, s = len(cases), int(size)
    rows_px, cols_px = geometry.detector_pixels
    spacing = float(fov_mm) / s
    manifest = []
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(
            format=FORMAT, split=path.stem, fov_mm=float(fov_mm), size=s, spacing_mm=[spacing] * 3,
            angles_deg=list(ANGLES_DEG), energy_kev=float(energy_kev), n_samples=int(n_samples),
            geometry=json.dumps(asdict(geometry)), hu_range=list(HU_RANGE),
            orientation="LPS, array axes (z, y, x); centre of the cube = isocentre",
            drr="line integral -ln(I/I0); view 0 = PA (0 deg), 1 = left lateral (90 deg); row 0 superior",
        )
        volumes = f.create_dataset("volumes_hu", (n, s, s, s), dtype=np.int16, chunks=(1, s, s, s),
                                   compression="gzip", compression_opts=4, shuffle=True)
        drrs = f.create_dataset("drrs", (n, len(ANGLES_DEG), rows_px, cols_px), dtype=np.float32)
        centres = f.create_dataset("centre_lps_mm", (n, 3), dtype=np.float64)
        source_spacing = f.create_dataset("source_spacing_mm", (n, 3), dtype=np.float32)
        source_shape = f.create_dataset("source_shape", (n, 3), dtype=np.int32)
        for i, case in enumerate(cases):
            cube = fov_mod.resample_to_fov(case.load(), fov_mm, s)
            stored = to_stored_hu(cube.array)
            volumes[i] = stored
            drrs[i] = render_pair(stored.astype(np.float32), spacing, geometry, energy_kev, n_samples).numpy()
            centres[i] = cube.meta["fov_centre_lps_mm"]
            source_spacing[i] = cube.meta["source_spacing_mm"]
            source_shape[i] = cube.meta["source_shape"]
            manifest.append({
                "case_id": case.case_id, "patient_id": case.patient_id, "source": case.source,
                "split": path.stem,
                **{f"source_{a}_spacing_mm": round(float(v), 4)
                   for a, v in zip("zyx", cube.meta["source_spacing_mm"], strict=True)},
                **{f"source_{a}_voxels": int(v)
                   for a, v in zip("zyx", cube.meta["source_shape"], strict=True)},
                **{f"centre_{a}_mm": round(float(v), 2)
                   for a, v in zip("xyz", cube.meta["fov_centre_lps_mm"], strict=True)},
            })
            if progress is not None:
                progress(i, case, cube)
        for key, values in zip(_TEXT, ([c.case_id for c in cases], [c.patient_id for c in cases],
                                       [c.source for c in cases]), strict=True):
            f.create_dataset(key, data=np.array(values, dtype=object), dtype=_STR)
    return manifest


class PairFile:
    """Read access to a split written by ``write_split``; metadata on opening, arrays on demand.

    The HDF5 file is opened per read (no handle is kept), so a ``PairFile`` is safe to pass to
    DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CTInputError(self.path, "no such pair file")
        try:
            with h5py.File(self.path, "r") as f:
                self._read_metadata(f)
        except CTInputError:
            raise
        except OSError as err:
            raise CTInputError(self.path, f"not a readable HDF5 file ({err})") from None
        except (KeyError, TypeError, ValueError) as err:
            raise CTInputError(self.path, f"malformed xray2ct pair file ({err})") from None

    def _read_metadata(self, f: h5py.File) -> None:
        if f.attrs.get("format") != FORMAT:
            raise CTInputError(self.path, f"not an xray2ct pair file (format {f.attrs.get('format')!r}, "
                                          f"expected {FORMAT!r})")
        missing = [k for k in _DATASETS if k not in f]
        if missing:
            raise CTInputError(self.path, f"missing dataset(s) {missing}")
        for key in _TEXT:
            setattr(self, key, [v.decode() if isinstance(v, bytes) else str(v) for v in f[key][...]])
        self.spacing_mm = tuple(float(v) for v in f.attrs["spacing_mm"])
        self.fov_mm = float(f.attrs["fov_mm"])
        geometry = json.loads(f.attrs["geometry"])
        self.geometry = ConeBeam(
            float(geometry["source_to_isocentre_mm"]), float(geometry["source_to_detector_mm"]),
            tuple(float(v) for v in geometry["detector_size_mm"]),
            tuple(int(v) for v in geometry["detector_pixels"]),
        )
        self.angles_deg = tuple(float(a) for a in f.attrs["angles_deg"])
        self.energy_kev = float(f.attrs["energy_kev"])
        self.n_samples = int(f.attrs["n_samples"])
        self.centre_lps_mm = f["centre_lps_mm"][...]
        self.source_spacing_mm = f["source_spacing_mm"][...]
        self.source_shape = f["source_shape"][...]
        n, size = len(self.case_ids), int(f.attrs["size"])
        expected = {
            "volumes_hu": (n, size, size, size),
            "drrs": (n, len(self.angles_deg), *self.geometry.detector_pixels),
            "patient_ids": (n,), "sources": (n,), "centre_lps_mm": (n, 3),
        }
        wrong = {k: (tuple(f[k].shape), v) for k, v in expected.items() if tuple(f[k].shape) != v}
        if wrong:
            detail = "; ".join(f"{k} has shape {got}, expected {want}" for k, (got, want) in wrong.items())
            raise CTInputError(self.path, f"inconsistent pair file: {detail}")
        if len(set(self.spacing_mm)) != 1 or not np.isclose(self.spacing_mm[0] * size, self.fov_mm):
            raise CTInputError(self.path,
                               f"spacing {self.spacing_mm} x {size} voxels != fov {self.fov_mm} mm")

    def __len__(self) -> int:
        return len(self.case_ids)

    def __repr__(self) -> str:
        return f"PairFile({self.path.name}: {len(self)} cases, {self.geometry.detector_pixels} px DRRs)"

    def volumes_hu(self) -> np.ndarray:
        """Every volume, ``(N, S, S, S)`` float32 HU on the LPS grid (array axes z, y, x)."""
        with h5py.File(self.path, "r") as f:
            return f["volumes_hu"][...].astype(np.float32)

    def drrs(self) -> np.ndarray:
        """Every pair, ``(N, 2, R, C)`` float32 line integrals; view 0 = PA (0 deg), 1 = lateral (90 deg)."""
        with h5py.File(self.path, "r") as f:
            return f["drrs"][...].astype(np.float32)
