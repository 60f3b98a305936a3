"""DICOM-RT import for the dose study: CT series + RTSTRUCT (+ RTPLAN, RTDOSE) -> ``OpenKBPPatient``.

The readers live in ``ctlib.io.dicom_rt`` and ``ctlib.io.dicom_rt_folder``; this module adds what is the
study's: ROI names mapped to the OpenKBP structures by ``structure_names`` (unmatched names listed,
ambiguous ones refused) and the body mask standing in for the possible-dose mask.

``read_rt_folder`` reads a clinical export folder as it comes (one CT series, one RTSTRUCT, optionally
RTPLAN / RTDOSE, checked to be one patient); ``read_rt_patient`` reads three explicit paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctlib import paths
from ctlib.data import body_mask
from ctlib.errors import CTInputError
from ctlib.io import dicom_read, dicom_rt_folder
from ctlib.io.dicom_rt import RTStructureSet, read_rtdose, read_rtstruct
from ctlib.io.openkbp import ROI_NAMES, OpenKBPPatient
from ctlib.io.volume import Volume
from ctlib.studies.dose import structure_names

DICOMPYLER_EXAMPLE_ENV_VAR = "CTLIB_DICOMPYLER_EXAMPLE"


@dataclass
class RTCase:
    """One clinical DICOM-RT case read by ``read_rt_folder``."""

    patient: OpenKBPPatient            # structures under OpenKBP names; dose_gy zeros when has_dose is False
    has_dose: bool
    ct_files: list[Path]               # CT slice files in the Volume's slice order (k = 0, 1, ...)
    rtstruct_file: Path
    rtdose_file: Path | None
    rtplan_file: Path | None
    roi_names: dict[str, str] = field(default_factory=dict)   # canonical name -> ROI name in the RTSTRUCT
    unmatched_roi_names: list[str] = field(default_factory=list)  # ROI names with no OpenKBP name
    missing_structures: list[str] = field(default_factory=list)   # OpenKBP names not found (or empty)
    empty_roi_names: list[str] = field(default_factory=list)      # ROIs with no contour / no voxel on the CT
    warnings: list[str] = field(default_factory=list)


def dicompyler_example_folder() -> Path:
    """The dicompyler-core 0.5.6 example case (one CT slice, breast RTSTRUCT, RTPLAN, RTDOSE; fetched by
    ``make dicompyler-example``): ``$CTLIB_DICOMPYLER_EXAMPLE``, else ``<repo>/cache/dicompyler_example``.
    The folder may not exist."""
    env = os.environ.get(DICOMPYLER_EXAMPLE_ENV_VAR)
    return Path(env).expanduser() if env else paths.repo_root() / "cache" / "dicompyler_example"


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


def read_rt_folder(
    folder: str | os.PathLike,
    *,
    patient_id: str | None = None,
    split: str | None = None,
    series_uid: str | None = None,
    structure_set_uid: str | None = None,
    plan_uid: str | None = None,
    dose_uid: str | None = None,
    same_study: bool = True,
) -> RTCase:
    """A clinical export folder (searched recursively) -> ``RTCase``.

    Files are found and checked by ``io.dicom_rt_folder.scan_rt_folder`` (one patient, one frame of
    reference; several CT series, RTSTRUCTs, plans or doses refused unless a ``*_uid`` picks one). A CT
    of one slice is read with dz = its slice thickness. Contours beyond the CT's slices are skipped with
    a warning (exports that hold part of the CT). Without RTDOSE, ``patient.dose_gy`` is zeros on the
    CT grid and ``has_dose`` is False. ``patient_id`` defaults to the CT's PatientID, else the folder name.
    """
    found = dicom_rt_folder.scan_rt_folder(
        folder, series_uid=series_uid, structure_set_uid=structure_set_uid, plan_uid=plan_uid,
        dose_uid=dose_uid, same_study=same_study,
    )
    warnings = list(found.warnings)
    ct = dicom_read.read_dicom_series(found.ct_files, allow_single_slice=True)
    if ct.shape[0] == 1:
        warnings.append(f"single-slice CT {found.ct_files[0].name}: dz = {ct.spacing[0]:g} mm taken from "
                        "its SpacingBetweenSlices / SliceThickness")
    structures = read_structures(found.rtstruct.path, ct, outside_ct="skip")
    warnings += structures.warnings
    if found.rtdose is not None:
        dose_gy = read_rtdose(found.rtdose.path, ct)
        if not dose_gy.any():
            warnings.append(f"{found.rtdose.path.name}: the dose grid does not cover the CT (all zero)")
    else:
        dose_gy = np.zeros(ct.shape, dtype=np.float32)
    ct.meta["unmatched_roi_names"] = structures.unmatched
    patient = OpenKBPPatient(
        patient_id=patient_id or found.patient_id or Path(folder).resolve().name, ct=ct, dose_gy=dose_gy,
        possible_dose_mask=body_mask.body_mask(ct), structures=structures.masks, split=split,
    )
    return RTCase(
        patient=patient, has_dose=found.rtdose is not None, ct_files=found.ct_files,
        rtstruct_file=found.rtstruct.path, rtdose_file=found.rtdose.path if found.rtdose else None,
        rtplan_file=found.rtplan.path if found.rtplan else None, roi_names=dict(structures.raw_names),
        unmatched_roi_names=structures.unmatched,
        missing_structures=[n for n in ROI_NAMES if n not in structures.masks],
        empty_roi_names=structures.empty, warnings=warnings,
    )
