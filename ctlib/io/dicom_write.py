"""Write a ``Volume`` as a new DICOM CT series (CT Image Storage, one file per slice).

Geometry is the DICOM Image Plane module (PS3.3 C.7.6.2): ImageOrientationPatient holds the x and y
columns of ``volume.direction``, ImagePositionPatient the LPS position of each slice's first voxel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from ctlib.atomic import atomic_path
from ctlib.errors import CTInputError
from ctlib.io.volume import Volume

_INT16 = np.iinfo(np.int16)
# Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1): copied when a series joins a reference study
PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)


def write_dicom_series(
    volume: Volume,
    folder: str | os.PathLike,
    *,
    series_description: str = "ctlib",
    patient_name: str | None = None,
    patient_id: str | None = None,
    study_uid: str | None = None,
    reference: Dataset | str | os.PathLike | None = None,
    join_reference_study: bool = True,
) -> Path:
    """Write ``volume`` as a DICOM CT series: explicit VR little endian, uncompressed int16.

    HU are rounded to integers and stored as int16 with RescaleSlope 1 and a RescaleIntercept chosen
    so the rounded range fits (0 whenever it already does); values still outside the int16 range
    after the intercept are clipped. Files are ``slice_0000.dcm``, ... in slice-index order, with new
    Study/Series/SOP/FrameOfReference UIDs. No patient identifiers are written unless
    ``patient_name`` / ``patient_id`` are given; nothing is copied from ``volume.meta``.
    ``study_uid`` puts the series into an existing study. ``reference`` (a DICOM file or dataset of
    the source series) lends its FrameOfReferenceUID, so viewers overlay the new series on the
    original, and its PatientPosition; with ``join_reference_study`` (the default) the series also
    joins the reference's study, and then carries that study's Patient and General Study modules
    (``PATIENT_AND_STUDY``): a series of a study belongs to its patient, and archives refuse or
    misfile one whose patient module is blank. Passing the reference is asking for that; with
    ``join_reference_study=False`` the series gets a new study and no identifiers. PatientPosition
    (0018,5100) comes from the reference, else from ``volume.meta["patient_position"]`` (set by the
    DICOM reader), else is written empty (type 2: unknown). The folder is replaced atomically: a crash
    leaves the old folder (or none), never half a series.
    """
    array = volume.array
    if not np.all(np.isfinite(array)):
        raise CTInputError(folder, "cannot write DICOM: the volume contains NaN or infinite values")
    hu = np.rint(array)
    intercept = _intercept(float(hu.min()), float(hu.max()))
    stored = np.clip(hu - intercept, _INT16.min, _INT16.max).astype("<i2")

    ref = _reference_dataset(reference)
    joined = ref is not None and join_reference_study and ref.get("StudyInstanceUID")
    series = _series_dataset(
        volume,
        series_description=series_description,
        patient_name=patient_name or "",
        patient_id=patient_id or "",
        study_uid=study_uid or (ref.StudyInstanceUID if joined else None) or generate_uid(),
        frame_uid=(ref.get("FrameOfReferenceUID") if ref is not None else None) or generate_uid(),
        intercept=intercept,
    )
    if joined:
        for keyword in PATIENT_AND_STUDY:
            if keyword in ref:
                setattr(series, keyword, ref.data_element(keyword).value)
        if patient_name:
            series.PatientName = patient_name
        if patient_id:
            series.PatientID = patient_id
    position = ref.get("PatientPosition") if ref is not None else None
    series.PatientPosition = position or volume.meta.get("patient_position") or ""
    normal = np.cross(volume.direction[:, 0], volume.direction[:, 1])
    positions = volume.slice_positions()
    target = Path(folder)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        for k in range(volume.shape[0]):
            ds = _slice_dataset(series, k, positions[k], float(positions[k] @ normal), stored[k])
            ds.save_as(tmp / f"slice_{k:04d}.dcm", enforce_file_format=True)
    return target


def _intercept(lo: float, hi: float) -> float:
    """Integer shift that brings [lo, hi] into int16; centred when the range is wider than int16."""
    if lo >= _INT16.min and hi <= _INT16.max:
        return 0.0
    if hi - lo <= _INT16.max - _INT16.min:
        return lo - _INT16.min
    return float(np.round((lo + hi) / 2))


def _reference_dataset(reference: Dataset | str | os.PathLike | None) -> Dataset | None:
    if reference is None or isinstance(reference, Dataset):
        return reference
    return pydicom.dcmread(reference, stop_before_pixels=True)


def _ds(values: np.ndarray | list[float]) -> list[str]:
    """Decimal strings of at most 16 characters (the DS value representation)."""
    return [format_number_as_ds(float(v)) for v in values]


def _series_dataset(
    volume: Volume,
    *,
    series_description: str,
    patient_name: str,
    patient_id: str,
    study_uid: str,
    frame_uid: str,
    intercept: float,
) -> Dataset:
    """Attributes shared by every slice (Patient, Study, Series, Frame of Reference, Image Plane)."""
    dz, dy, dx = volume.spacing
    _, rows, cols = volume.shape
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: descriptions may hold any text
    ds.SOPClassUID = CTImageStorage
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Modality = "CT"
    ds.Manufacturer = ""
    ds.SoftwareVersions = f"ctlib {_ctlib_version()}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyID = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = series_description
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = _ds(np.concatenate([volume.direction[:, 0], volume.direction[:, 1]]))
    ds.PixelSpacing = _ds([dy, dx])  # row spacing (y) first, then column spacing (x)
    thickness = volume.slice_thickness_mm if volume.slice_thickness_mm else dz
    ds.SliceThickness = format_number_as_ds(float(thickness))
    ds.SpacingBetweenSlices = format_number_as_ds(float(dz))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1  # signed
    ds.RescaleIntercept = format_number_as_ds(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = ""
    ds.AcquisitionNumber = 1
    return ds


def _slice_dataset(
    series: Dataset, k: int, position: np.ndarray, location: float, stored: np.ndarray
) -> Dataset:
    ds = Dataset()
    ds.update(series)
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = _ds(position)
    ds.SliceLocation = format_number_as_ds(location)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def _ctlib_version() -> str:
    import ctlib

    return getattr(ctlib, "__version__", "unknown")
