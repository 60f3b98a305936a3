"""Write a dose on a CT ``Volume``'s grid as a DICOM RT Dose object (PS3.3 A.18, one multi-frame file).

Geometry (PS3.3 C.8.8.3.2): frames are the CT's slices, ordered by increasing position along the normal
``n = row x column`` of ImageOrientationPatient, so GridFrameOffsetVector is relative (starts at 0) and
increasing: ``offset[f] = (slice position - ImagePositionPatient) . n``. ImageOrientationPatient and
PixelSpacing are the CT's; ``ctlib.io.dicom_rt.read_rtdose`` reads the file back onto the CT exactly, up
to the quantization of the stored integers: dose = stored x DoseGridScaling, |error| <= scaling / 2.

Identifiers: none unless asked. With a ``reference`` (a CT file or dataset of the source series) the dose
joins that series' FrameOfReferenceUID and StudyInstanceUID, so viewers overlay it on the CT; its Patient
and General Study modules are copied only with ``keep_identifiers=True``. SOP and Series UIDs are new.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from ctlib.atomic import atomic_path
from ctlib.errors import CTInputError
from ctlib.io.dicom_write import PATIENT_AND_STUDY
from ctlib.io.volume import Volume

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
GRID_FRAME_OFFSET_TAG = 0x3004000C  # FrameIncrementPointer -> GridFrameOffsetVector
_MAX_STORED = {16: 2**16 - 1, 32: 2**32 - 1}


def dose_scaling(max_dose_gy: float, bits: int = 32) -> float:
    """DoseGridScaling (Gy per stored unit) as it is written: the DS string of ``max / (2**bits - 1)``, read
    back, rounded up so the maximum still fits. 1.0 for an all-zero dose."""
    if bits not in _MAX_STORED:
        raise ValueError(f"bits must be 16 or 32, got {bits}")
    if not max_dose_gy > 0:
        return 1.0
    scaling = float(format_number_as_ds(max_dose_gy / _MAX_STORED[bits]))
    while max_dose_gy / scaling > _MAX_STORED[bits]:  # the DS string rounded down: one step up
        scaling = float(format_number_as_ds(scaling * (1 + 1e-6)))
    return scaling


def _ds(values: Sequence[float] | np.ndarray) -> list[str]:
    return [format_number_as_ds(float(v)) for v in values]


def _reference(reference: Dataset | str | os.PathLike | None) -> Dataset | None:
    if reference is None or isinstance(reference, Dataset):
        return reference
    return pydicom.dcmread(reference, stop_before_pixels=True)


def rtdose_dataset(
    dose_gy: np.ndarray,
    grid: Volume,
    *,
    reference: Dataset | str | os.PathLike | None = None,
    keep_identifiers: bool = False,
    rtplan: Dataset | str | os.PathLike | None = None,
    bits: int = 32,
    series_description: str = "ctlib predicted dose",
    dose_summation_type: str = "PLAN",
) -> Dataset:
    """The RT Dose dataset of ``dose_gy`` ``(z, y, x)`` Gy on ``grid`` (a CT ``Volume``'s geometry).

    ``reference``: a CT file or dataset whose FrameOfReferenceUID and StudyInstanceUID the dose joins
    (else new ones), and whose Patient and General Study modules are copied with ``keep_identifiers``.
    ``rtplan``: the plan the dose belongs to (ReferencedRTPlanSequence), when there is one.
    """
    dose = np.asarray(dose_gy, dtype=np.float64)
    if dose.shape != grid.shape:
        raise ValueError(f"rtdose_dataset: dose shape {dose.shape} is not the grid's {grid.shape}")
    if not np.all(np.isfinite(dose)) or dose.min() < 0:
        raise ValueError("rtdose_dataset: the dose holds NaN, infinite or negative values")
    row, col, slice_dir = grid.direction[:, 0], grid.direction[:, 1], grid.direction[:, 2]
    normal = np.cross(row, col)
    along = float(slice_dir @ normal)
    if abs(abs(along) - 1.0) > 1e-4:
        raise ValueError(f"rtdose_dataset: slices are not perpendicular to the image plane ({along:.4f})")
    positions = grid.slice_positions()
    if along < 0:  # frames must run along the normal: write the slices in reverse order
        positions, dose = positions[::-1], dose[::-1]
    offsets = (positions - positions[0]) @ normal
    scaling = dose_scaling(float(dose.max()), bits)
    stored = np.rint(dose / scaling).astype(f"<u{bits // 8}")

    ref = _reference(reference)
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_DOSE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RT_DOSE_STORAGE, sop_uid
    now = dt.datetime.now(dt.timezone.utc)
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, keyword, "")  # type 2: present, empty unless identifiers are kept
    if ref is not None and keep_identifiers:
        for keyword in PATIENT_AND_STUDY:
            if keyword in ref:
                setattr(ds, keyword, ref.data_element(keyword).value)
    ds.StudyInstanceUID = (ref.get("StudyInstanceUID") if ref is not None else None) or generate_uid()
    ds.FrameOfReferenceUID = (ref.get("FrameOfReferenceUID") if ref is not None else None) or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.Modality = "RTDOSE"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = series_description
    ds.Manufacturer = ""
    ds.SoftwareVersions = f"ctlib {_ctlib_version()}"
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = _ds(positions[0])
    ds.ImageOrientationPatient = _ds(np.concatenate([row, col]))
    dz, dy, dx = grid.spacing
    ds.PixelSpacing = _ds([dy, dx])  # row spacing (y) first
    ds.SliceThickness = format_number_as_ds(float(dz))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = int(dose.shape[0])
    ds.FrameIncrementPointer = GRID_FRAME_OFFSET_TAG
    ds.Rows, ds.Columns = int(dose.shape[1]), int(dose.shape[2])
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0  # unsigned
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", dose_summation_type
    ds.GridFrameOffsetVector = _ds(offsets)
    ds.DoseGridScaling = format_number_as_ds(scaling)
    plan = _reference(rtplan)
    if plan is not None and plan.get("SOPInstanceUID"):
        item = Dataset()
        item.ReferencedSOPClassUID = plan.get("SOPClassUID", RT_PLAN_STORAGE)
        item.ReferencedSOPInstanceUID = plan.SOPInstanceUID
        ds.ReferencedRTPlanSequence = DicomSequence([item])
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def write_rtdose(
    dose_gy: np.ndarray, grid: Volume, path: str | os.PathLike, **options: object
) -> Path:
    """Write ``rtdose_dataset(dose_gy, grid, **options)`` to ``path`` atomically; returns the path."""
    path = Path(path)
    try:
        ds = rtdose_dataset(dose_gy, grid, **options)  # type: ignore[arg-type]
    except ValueError as err:
        raise CTInputError(path, f"cannot write RTDOSE: {err}") from None
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _ctlib_version() -> str:
    import ctlib

    return getattr(ctlib, "__version__", "unknown")
