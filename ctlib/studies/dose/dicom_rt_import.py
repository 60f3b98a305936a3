"""DICOM-RT import for the dose study: CT series + RTSTRUCT + RTDOSE -> ``OpenKBPPatient``.

The readers live in ``ctlib.io.dicom_rt``; this module adds what is the study's: ROI names mapped to
the OpenKBP structures by ``structure_names`` (unmatched names listed, ambiguous ones refused) and the
body mask standing in for the possible-dose mask.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctlib.data import body_mask
from ctlib.errors import CTInputError
from ctlib.io import dicom_read
from ctlib.io.dicom_rt import RTStructureSet, read_rtdose, read_rtstruct
from ctlib.io.openkbp import OpenKBPPatient
from ctlib.io.volume import Volume
from ctlib.studies.dose import structure_names


def _map_openkbp_names(names: list[str], source: Path) -> dict[str, str]:
    return structure_names.map_roi_names(names, source=source)


def read_structures(path: str | os.PathLike, ct: Volume, **options) -> RTStructureSet:
    """``io.dicom_rt.read_rtstruct`` with ROI names mapped to the OpenKBP structure names."""
    return read_rtstruct(path, ct, map_names=_map_openkbp_names, **options)


def read_rt_patient(
    ct_folder: str | os.PathLike,
    rtstruct: str | os.PathLike,
    rtdose: str | os.PathLike,
    patient_id: str,
    split: str | None = None,
) -> OpenKBPPatient:
    """A CT series folder + RTSTRUCT + RTDOSE -> ``OpenKBPPatient`` (ready for
    ``ctlib.studies.dose.features``).

    DICOM-RT has no possible-dose mask: the CT's body mask (``ctlib.data.body_mask``, -500 HU
    threshold) stands in for it, as the region where a plan can deposit dose. Both RT objects must
    share the CT series' Frame of Reference.
    """
    ct = dicom_read.read_dicom_series(ct_folder)
    if not ct.meta.get("frame_of_reference_uid"):
        raise CTInputError(
            ct_folder, "the CT series has no FrameOfReferenceUID: RT objects cannot be matched to it"
        )
    structures = read_structures(rtstruct, ct)
    dose_gy = read_rtdose(rtdose, ct)
    ct.meta["unmatched_roi_names"] = structures.unmatched
    return OpenKBPPatient(
        patient_id=patient_id, ct=ct, dose_gy=dose_gy, possible_dose_mask=body_mask.body_mask(ct),
        structures=structures.masks, split=split,
    )
