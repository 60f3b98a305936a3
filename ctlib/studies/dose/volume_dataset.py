"""Whole dose patients at coarse resolution, held in memory (on the training device), augmented on the fly.

``CoarseDoseVolumes`` loads every patient once, pools it by ``factor`` (``ctlib.studies.dose.coarse``) and
pads all of them to one shape (a multiple of the network's ``multiple``, with each channel's "far outside"
value), so a batch is a stack of whole patients. Index ``i`` is copy ``i % copies_per_epoch`` of patient
``i // copies_per_epoch``; ``sample(i, rng)`` draws its augmentation (``ctlib.studies.dose.augment``)
from ``rng``, which ``ctlib.train.streams.BatchStream`` seeds by the data position, so a resumed run sees
the same samples. Nothing is re-read from disk after the constructor (the H100 run of issue 5 lost
0.72 s per step re-reading patients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ctlib.data import windows
from ctlib.studies.dose import augment, coarse, datasets
from ctlib.studies.dose.patient_file import SDF_CLIP_MM, DosePatient, load_dose_patient


class CoarseDoseVolumes:
    """Coarse whole-patient training samples (see the module docstring); the same dict keys as
    ``ctlib.studies.dose.datasets.DosePatchDataset``: ``inputs``, ``constraints``, ``dose``, ``pdm``,
    ``masks``, ``patient_index``."""

    def __init__(
        self,
        patients: Sequence[str | DosePatient],
        *,
        factor: int = 2,
        multiple: int = 8,
        window: str | windows.HUWindow = "full",
        sdf_clip_mm: float = SDF_CLIP_MM,
        include_pdm: bool = True,
        augmentation: augment.AugmentConfig | None = None,
        copies_per_epoch: int = 1,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if not patients:
            raise ValueError("CoarseDoseVolumes: the patient list is empty")
        if factor < 1 or copies_per_epoch < 1:
            raise ValueError(f"CoarseDoseVolumes: need factor >= 1 and copies_per_epoch >= 1, "
                             f"got {factor}, {copies_per_epoch}")
        self.factor, self.copies = int(factor), int(copies_per_epoch)
        self.window = windows.get_window(window)
        self.sdf_clip_mm, self.include_pdm = float(sdf_clip_mm), bool(include_pdm)
        self.augmentation = augmentation or augment.AugmentConfig(0.0, 0.0, 0.0)
        self.seed = int(seed)
        items, self.patient_ids = [], []
        for source in patients:
            patient = source if isinstance(source, DosePatient) else load_dose_patient(source)
            items.append(self._pooled(patient))
            self.patient_ids.append(patient.patient_id)
            self.roi_names = [str(n) for n in patient.roi_names]
            self.constraint_names = [str(n) for n in patient.constraint_names]
        shape = np.max([item["inputs"].shape[-3:] for item in items], axis=0)
        self.shape = tuple(int(-(-n // multiple) * multiple) for n in shape)
        fill = coarse.input_fill(items[0]["inputs"].shape[0], self.include_pdm)
        self.items = [
            {
                "inputs": coarse.pad_to_shape(it["inputs"], self.shape, fill).to(device),
                "constraints": it["constraints"].to(device),
                "dose": coarse.pad_to_shape(it["dose"], self.shape, [0.0]).to(device),
                "pdm": coarse.pad_to_shape(it["pdm"], self.shape, [0]).to(device),
                "masks": coarse.pad_to_shape(it["masks"], self.shape, [0] * it["masks"].shape[0]).to(device),
            }
            for it in items
        ]
        self.groups = [self.copies] * len(self.items)
        self.lru_size = len(self.items)  # all in memory: BatchStream shuffles across every patient

    def _pooled(self, patient: DosePatient) -> dict[str, torch.Tensor]:
        t = datasets.patient_tensors(patient, window=self.window, sdf_clip_mm=self.sdf_clip_mm,
                                     include_pdm=self.include_pdm)
        dose, pdm = coarse.pool_dose(t["dose"], t["pdm"], self.factor)
        return {
            "inputs": coarse.pool_inputs(t["inputs"], self.factor, include_pdm=self.include_pdm)[0],
            "constraints": t["constraints"][0],
            "dose": dose[0],
            "pdm": pdm[0],
            "masks": coarse.pool_masks(t["masks"], self.factor)[0],
        }

    @property
    def normalization(self) -> dict[str, Any]:
        """The HU-window record stored with checkpoints, plus the SDF clip and the pdm channel flag."""
        return {**windows.normalization_record(self.window), "sdf_clip_mm": self.sdf_clip_mm,
                "include_pdm": self.include_pdm}

    def __len__(self) -> int:
        return len(self.items) * self.copies

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index, np.random.default_rng([self.seed, int(index)]))

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Copy ``index`` of its patient, augmented by choices drawn from ``rng``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        number = index // self.copies
        sample = augment.augment_sample(dict(self.items[number]), self.augmentation, rng, self.roi_names,
                                        self.constraint_names)
        return {**sample, "patient_index": number}
