"""Network inputs of a dose patient and a patch dataset over preprocessed dose patients.

``network_inputs`` stacks the channels the dose U-Net sees, ``(C, D, H, W)`` float32:

- channel 0: the CT normalized by a named HU window to ``[-1, 1]`` (``ctlib.data.windows``);
- one channel per structure (``roi_names`` order): ``sdf_mm / sdf_clip_mm`` in ``[-1, 1]``
  (negative inside; a missing structure is +1, "far outside");
- optionally the possible-dose mask as 0 / 1.

``DosePatchDataset`` draws random 3D patches. Index ``i`` is draw ``i % patches_per_patient`` of
patient ``i // patches_per_patient``; ``sample(i, rng)`` takes its random choices from ``rng``, which
``ctlib.train.streams.BatchStream`` seeds by the data position, so a resumed run sees the same
patches (``dataset[i]`` seeds by ``(seed, i)``). With probability ``ptv_probability`` the patch is
centred on a random voxel of the patient's targets (PTVs; the pdm when there is none), otherwise on a
random voxel of the possible-dose mask, then shifted to lie inside the volume. A volume smaller than
the patch is padded: CT -1 (air at the window bottom), SDF +1, dose, masks and pdm 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ctlib.data import lru, windows
from ctlib.studies.dose.patient_file import SDF_CLIP_MM, DosePatient, load_dose_patient

PatientSource = str | os.PathLike | DosePatient


def network_inputs(
    patient: DosePatient,
    *,
    window: str | windows.HUWindow = "full",
    sdf_clip_mm: float = SDF_CLIP_MM,
    include_pdm: bool = True,
) -> np.ndarray:
    """``(1 + S (+ 1), D, H, W)`` float32: windowed CT, clipped SDFs / ``sdf_clip_mm``, possible-dose mask."""
    if sdf_clip_mm <= 0:
        raise ValueError(f"network_inputs: sdf_clip_mm must be > 0, got {sdf_clip_mm}")
    ct = windows.normalize(np.asarray(patient.ct_hu, dtype=np.float32), windows.get_window(window))
    sdf = np.clip(np.asarray(patient.sdf_mm, dtype=np.float32) / sdf_clip_mm, -1.0, 1.0)
    parts = [ct[None], sdf]
    if include_pdm:
        parts.append(np.asarray(patient.possible_dose_mask, dtype=np.float32)[None])
    return np.concatenate(parts, axis=0)


def num_input_channels(num_structures: int, include_pdm: bool = True) -> int:
    """Channels of ``network_inputs``: CT + one SDF per structure (+ the pdm)."""
    return 1 + int(num_structures) + int(bool(include_pdm))


def constraint_scales(constraint_names: Sequence[str], dose_scale_gy: float) -> tuple[float, ...]:
    """What the dose U-Net divides each constraint by: 1 for presence flags, ``dose_scale_gy`` for doses.

    A name containing ``present`` or ``flag`` is a 0/1 flag; every other entry is a dose in Gy.
    """
    return tuple(1.0 if ("present" in str(n).lower() or "flag" in str(n).lower()) else float(dose_scale_gy)
                 for n in constraint_names)


def _triple(size: int | Sequence[int]) -> tuple[int, int, int]:
    out = (int(size),) * 3 if isinstance(size, int) else tuple(int(s) for s in size)
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"patch_size must be one positive int or three (D, H, W), got {size}")
    return out  # type: ignore[return-value]


def patch_corner(
    centre: Sequence[int], shape: Sequence[int], patch: Sequence[int]
) -> tuple[int, ...]:
    """First voxel of a ``patch`` centred on ``centre``, shifted to lie inside ``shape``
    (0 where the patch is larger)."""
    return tuple(
        int(min(max(c - p // 2, 0), max(n - p, 0))) for c, n, p in zip(centre, shape, patch, strict=True)
    )


def crop_padded(array: np.ndarray, corner: Sequence[int], patch: Sequence[int], fill: float) -> np.ndarray:
    """The ``patch`` of the last three axes of ``array`` starting at ``corner``,
    padded with ``fill`` past the edges."""
    region = array[(..., *(slice(c, c + p) for c, p in zip(corner, patch, strict=True)))]
    pads = [(0, 0)] * (array.ndim - 3) + [(0, p - n) for n, p in zip(region.shape[-3:], patch, strict=True)]
    if any(after for _, after in pads):
        region = np.pad(region, pads, constant_values=fill)
    return np.ascontiguousarray(region)


class DosePatchDataset:
    """Random 3D patches of dose patients as dicts of tensors (see the module docstring).

    A sample holds ``inputs`` ``(C, D, H, W)``, ``constraints`` ``(K,)`` (as stored, in Gy and flags),
    ``dose`` ``(1, D, H, W)`` in Gy, ``masks`` ``(S, D, H, W)`` bool, ``pdm`` ``(1, D, H, W)`` bool,
    ``patient_index`` and ``corner`` ``(3,)`` (first voxel of the patch). ``patients`` are file paths
    (loaded lazily through an LRU of ``lru_size``) or ``DosePatient`` objects.
    """

    def __init__(
        self,
        patients: Sequence[PatientSource],
        *,
        patch_size: int | Sequence[int] = (32, 64, 64),
        patches_per_patient: int = 8,
        ptv_probability: float = 0.5,
        window: str | windows.HUWindow = "full",
        sdf_clip_mm: float = SDF_CLIP_MM,
        include_pdm: bool = True,
        seed: int = 0,
        lru_size: int = 4,
    ) -> None:
        if not patients:
            raise ValueError("DosePatchDataset: the patient list is empty")
        if not 0.0 <= ptv_probability <= 1.0 or patches_per_patient < 1:
            raise ValueError(
                f"DosePatchDataset: need 0 <= ptv_probability <= 1 and patches_per_patient >= 1, "
                f"got {ptv_probability}, {patches_per_patient}"
            )
        self.sources = list(patients)
        self.patch_size = _triple(patch_size)
        self.patches_per_patient = int(patches_per_patient)
        self.ptv_probability = float(ptv_probability)
        self.window = windows.get_window(window)
        self.sdf_clip_mm = float(sdf_clip_mm)
        self.include_pdm = bool(include_pdm)
        self.seed = int(seed)
        self.lru_size = max(1, int(lru_size))
        self.lru = lru.LoadingLRU(load_dose_patient, self.lru_size)
        # BatchStream keeps a patient's draws together
        self.groups = [self.patches_per_patient] * len(self.sources)

    @property
    def normalization(self) -> dict[str, Any]:
        """The HU-window record stored with checkpoints, plus the SDF clip and the pdm channel flag."""
        return {**windows.normalization_record(self.window), "sdf_clip_mm": self.sdf_clip_mm,
                "include_pdm": self.include_pdm}

    def patient(self, number: int) -> DosePatient:
        """Patient ``number`` of the list (loaded through the LRU when given as a path)."""
        source = self.sources[number]
        return source if isinstance(source, DosePatient) else self.lru.get(source)

    def __len__(self) -> int:
        return len(self.sources) * self.patches_per_patient

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index, np.random.default_rng([self.seed, int(index)]))

    def _centre(self, patient: DosePatient, rng: np.random.Generator) -> tuple[int, int, int]:
        names = [str(n) for n in patient.roi_names]
        targets = [i for i, n in enumerate(names) if n.upper().startswith("PTV")]
        region = None
        if targets and rng.random() < self.ptv_probability:
            region = np.asarray(patient.masks)[targets].any(axis=0)
        if region is None or not region.any():
            region = np.asarray(patient.possible_dose_mask)
        voxels = np.flatnonzero(region)
        if voxels.size == 0:  # no pdm either: anywhere in the volume
            return tuple(int(rng.integers(0, n)) for n in patient.shape)  # type: ignore[return-value]
        return tuple(
            int(v) for v in np.unravel_index(int(voxels[rng.integers(0, voxels.size)]), patient.shape)
        )  # type: ignore[return-value]

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Patch ``index`` with its position drawn from ``rng`` (see the class docstring)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        number = index // self.patches_per_patient
        patient = self.patient(number)
        corner = patch_corner(self._centre(patient, rng), patient.shape, self.patch_size)
        crop = lambda a, fill: crop_padded(np.asarray(a), corner, self.patch_size, fill)  # noqa: E731
        ct = windows.normalize(crop(patient.ct_hu, self.window.low).astype(np.float32), self.window)
        sdf = np.clip(crop(patient.sdf_mm, self.sdf_clip_mm).astype(np.float32) / self.sdf_clip_mm, -1.0, 1.0)
        pdm = crop(patient.possible_dose_mask, False)
        parts = [ct[None], sdf] + ([pdm[None].astype(np.float32)] if self.include_pdm else [])
        return {
            "inputs": torch.from_numpy(np.concatenate(parts, axis=0)),
            "constraints": torch.from_numpy(np.asarray(patient.constraints, dtype=np.float32).copy()),
            "dose": torch.from_numpy(crop(patient.dose_gy, 0.0).astype(np.float32)[None]),
            "masks": torch.from_numpy(crop(patient.masks, False)),
            "pdm": torch.from_numpy(pdm[None]),
            "patient_index": number,
            "corner": torch.tensor(corner, dtype=torch.long),
        }


def patient_tensors(
    patient: DosePatient,
    *,
    window: str | windows.HUWindow = "full",
    sdf_clip_mm: float = SDF_CLIP_MM,
    include_pdm: bool = True,
) -> dict[str, torch.Tensor]:
    """A whole patient as a batch of one: ``inputs`` ``(1, C, D, H, W)``, ``constraints`` ``(1, K)``,
    ``dose``, ``pdm``, ``masks``."""
    inputs = network_inputs(patient, window=window, sdf_clip_mm=sdf_clip_mm, include_pdm=include_pdm)
    return {
        "inputs": torch.from_numpy(inputs)[None],
        "constraints": torch.from_numpy(np.asarray(patient.constraints, dtype=np.float32).copy())[None],
        "dose": torch.from_numpy(np.asarray(patient.dose_gy, dtype=np.float32))[None, None],
        "pdm": torch.from_numpy(np.asarray(patient.possible_dose_mask, dtype=bool))[None, None],
        "masks": torch.from_numpy(np.asarray(patient.masks, dtype=bool))[None],
    }

