"""Dose-prediction inputs: signed distance fields (exact Euclidean distance transform) and the constraint
vector.

``dose_patient_from_openkbp`` turns an ``OpenKBPPatient`` (or any patient built the same way: a CT
``Volume``, ``dose_gy``, ``possible_dose_mask`` and ``{canonical name: mask}``) into a ``DosePatient``.

Bad input (issue 5, part 5), handled here and nowhere silently:

- a structure that is not contoured: ``present`` False, an all-False mask, ``+sdf_clip_mm`` everywhere,
  and 0 for its constraint entries (prescription or limit) with its ``<name>_present`` flag 0;
- an empty mask (contoured but no voxel on this grid): treated as missing, with a ``DoseInputWarning``
  (``ctlib.studies.dose.preprocess`` records it in the manifest);
- a dose, possible-dose mask or structure mask whose grid is not the CT's, NaN or infinite dose,
  negative dose, no dose at all, or a structure name that is not canonical: ``CTInputError``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage

from ctlib.errors import CTInputError
from ctlib.io.openkbp import ROI_NAMES, OpenKBPPatient
from ctlib.studies.dose.patient_file import SDF_CLIP_MM, DosePatient

# Prescription levels of the OpenKBP plans (70 / 63 / 56 Gy in 35 fractions; Babier et al. 2021).
PRESCRIPTION_GY = {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}
PRESCRIPTION_SOURCE = "OpenKBP plans (Babier et al. 2021): 70 / 63 / 56 Gy in 35 fractions"

# Organ-at-risk limits used as conditioning inputs: (metric, limit in Gy, source). "Dmax" is evaluated
# as D0.1cc, the OpenKBP DVH-score convention for maxima (a single hottest voxel is not robust).
OAR_LIMITS: dict[str, tuple[str, float, str]] = {
    "Brainstem": ("Dmax", 54.0, "RTOG 0615 / QUANTEC (Mayo 2010): brainstem max < 54 Gy"),
    "SpinalCord": ("Dmax", 45.0, "RTOG 0615: spinal cord max <= 45 Gy"),
    "RightParotid": ("Dmean", 26.0, "RTOG 0615 / QUANTEC (Deasy 2010): parotid mean < 26 Gy"),
    "LeftParotid": ("Dmean", 26.0, "RTOG 0615 / QUANTEC (Deasy 2010): parotid mean < 26 Gy"),
    "Esophagus": ("Dmean", 45.0, "RTOG 0615: oesophagus mean <= 45 Gy"),
    "Larynx": ("Dmean", 45.0, "RTOG 0615 glottic larynx mean <= 45 Gy (QUANTEC Rancati 2010: < 44 Gy)"),
    "Mandible": ("Dmax", 73.5, "105 % of the 70 Gy prescription: the hot-spot bound near the PTV "
                               "(RTOG 0615 asks max <= 70 Gy where achievable, 1 cc <= 75 Gy)"),
}


class DoseInputWarning(UserWarning):
    """Input that is handled by a documented rule (an empty mask treated as missing)."""


def constraint_sources() -> dict[str, str]:
    """Where each constraint value comes from, by constraint name (presence flags: this module's rule)."""
    sources = {f"{name}_prescription_gy": PRESCRIPTION_SOURCE for name in PRESCRIPTION_GY}
    sources.update({f"{name}_{metric}_gy": text for name, (metric, _, text) in OAR_LIMITS.items()})
    return {
        name: sources.get(name, "1 when the structure is contoured, else 0") for name in constraint_names()
    }


def constraint_names() -> list[str]:
    """Names of the constraint vector entries: PTV prescriptions, OAR limits,
    then one presence flag per ROI."""
    names = [f"{name}_prescription_gy" for name in ROI_NAMES if name in PRESCRIPTION_GY]
    names += [f"{name}_{OAR_LIMITS[name][0]}_gy" for name in ROI_NAMES if name in OAR_LIMITS]
    return names + [f"{name}_present" for name in ROI_NAMES]


def constraint_vector(present: dict[str, bool]) -> np.ndarray:
    """``(C,)`` float32 in ``constraint_names()`` order: the documented levels for present ROIs,
    0 for absent ones."""
    values = [PRESCRIPTION_GY[n] * present.get(n, False) for n in ROI_NAMES if n in PRESCRIPTION_GY]
    values += [OAR_LIMITS[n][1] * present.get(n, False) for n in ROI_NAMES if n in OAR_LIMITS]
    values += [float(present.get(n, False)) for n in ROI_NAMES]
    return np.asarray(values, dtype=np.float32)


def signed_distance_mm(
    mask: np.ndarray, spacing_mm: tuple[float, float, float], clip_mm: float = SDF_CLIP_MM
) -> np.ndarray:
    """Signed Euclidean distance (Maurer EDT, ``scipy.ndimage``) to a mask's surface in mm, ``(D, H, W)``
    float32.

    Outside voxels hold the distance to the nearest inside voxel, inside voxels minus the distance to the
    nearest outside voxel (so voxels on either side of the surface are one voxel spacing from it);
    anisotropic ``spacing_mm = (dz, dy, dx)``; clipped to ``[-clip_mm, clip_mm]``; an empty mask gives
    ``+clip_mm``. The transform runs on the mask's bounding box grown by ``clip_mm`` (plus one voxel),
    which gives the same values: farther voxels are clipped anyway, and the box edge is outside the mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if clip_mm <= 0:
        raise ValueError(f"clip_mm must be positive, got {clip_mm}")
    out = np.full(mask.shape, clip_mm, dtype=np.float32)
    if not mask.any():
        return out
    margin = [math.ceil(clip_mm / s) + 1 for s in spacing_mm]
    box = tuple(
        slice(max(int(idx.min()) - m, 0), min(int(idx.max()) + m + 1, n))
        for idx, m, n in zip(np.nonzero(mask), margin, mask.shape, strict=True)
    )
    crop = mask[box]
    outside = ndimage.distance_transform_edt(~crop, sampling=spacing_mm)
    # A mask that fills its box to the volume edge has no outside voxel there: the surface is the edge.
    inside = ndimage.distance_transform_edt(np.pad(crop, 1), sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
    out[box] = np.clip(outside - inside, -clip_mm, clip_mm)
    return out


def _check_grid(array: np.ndarray | None, what: str, shape: tuple[int, ...], source: str | None) -> None:
    if array is None:
        raise CTInputError(source, f"{what} is missing: a dose patient needs it")
    if np.shape(array) != shape:
        raise CTInputError(source, f"{what} grid {np.shape(array)} does not match the CT grid {shape}")


def dose_patient_from_openkbp(
    patient: OpenKBPPatient, split: str | None = None, *, sdf_clip_mm: float = SDF_CLIP_MM
) -> DosePatient:
    """``OpenKBPPatient`` -> ``DosePatient``: masks and SDFs in ``ROI_NAMES`` order, dose 0 outside the
    possible-dose mask.

    ``split`` defaults to ``patient.split``. Raises ``CTInputError`` for the bad input listed in the module
    docstring; warns (``DoseInputWarning``) for an empty mask, which is then treated as missing.
    """
    ct = patient.ct
    source = ct.meta.get("source", patient.patient_id)
    split = split or patient.split
    if not split:
        raise ValueError(f"patient {patient.patient_id}: no split given and the patient has none")
    shape = ct.shape
    _check_grid(patient.dose_gy, "dose_gy", shape, source)
    _check_grid(patient.possible_dose_mask, "possible_dose_mask", shape, source)
    dose = np.asarray(patient.dose_gy, dtype=np.float32)
    if not np.all(np.isfinite(dose)):
        raise CTInputError(source, f"dose holds {int(np.sum(~np.isfinite(dose)))} NaN or infinite voxels")
    if dose.min() < 0:
        raise CTInputError(source, f"dose holds negative values (min {dose.min():.3g} Gy)")
    unknown = sorted(set(patient.structures) - set(ROI_NAMES))
    if unknown:
        raise CTInputError(source, f"structures {unknown} are not canonical names {ROI_NAMES}; "
                                   "map them with ctlib.studies.dose.structure_names first")
    pdm = np.asarray(patient.possible_dose_mask, dtype=bool)

    masks = np.zeros((len(ROI_NAMES), *shape), dtype=bool)
    sdf = np.full((len(ROI_NAMES), *shape), sdf_clip_mm, dtype=np.float32)
    present = np.zeros(len(ROI_NAMES), dtype=bool)
    for i, name in enumerate(ROI_NAMES):
        if name not in patient.structures:
            continue
        mask = np.asarray(patient.structures[name])
        _check_grid(mask, f"mask of {name}", shape, source)
        if not mask.any():
            warnings.warn(f"{source}: {name} is contoured but its mask is empty: treated as missing",
                          DoseInputWarning, stacklevel=2)
            continue
        masks[i], present[i] = mask.astype(bool), True
        sdf[i] = signed_distance_mm(masks[i], ct.spacing, sdf_clip_mm)
    return DosePatient(
        ct_hu=ct.array.astype(np.float32),
        dose_gy=dose * pdm,
        possible_dose_mask=pdm,
        masks=masks,
        present=present,
        sdf_mm=sdf,
        constraints=constraint_vector(dict(zip(ROI_NAMES, present.tolist(), strict=True))),
        constraint_names=np.asarray(constraint_names()),
        spacing_mm=np.asarray(ct.spacing, dtype=np.float64),
        roi_names=np.asarray(ROI_NAMES),
        patient_id=str(patient.patient_id),
        split=str(split),
    )
