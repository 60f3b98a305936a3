"""One folder of a clinical DICOM-RT export -> its CT series and RT objects, checked to be one patient.

A treatment planning system exports a case as one folder (often with sub-folders): the CT slices, an
RTSTRUCT, and often RTPLAN and RTDOSE objects. ``scan_rt_folder`` reads the headers only
(``dicom_read.list_series``: non-image files such as README or DICOMDIR are skipped, any other file
that is not DICOM is refused by name), then:

- picks the CT series (several: refused with a listing, or chosen by ``series_uid``); files of other
  modalities (MR, REG, RTIMAGE, ...) are ignored with a warning;
- checks every RTSTRUCT / RTPLAN / RTDOSE in the folder against the CT: PatientID (when both have
  one), FrameOfReferenceUID (the RTSTRUCT's referenced frames) and StudyInstanceUID (where present;
  ``same_study=False`` relaxes it for systems that write RT objects into a new study). A mismatch is
  an RT object of another patient or another scan in the same folder: ``CTInputError`` naming it;
- picks one RTSTRUCT (several: refused, or ``structure_set_uid``), one RTDOSE (several: the single
  one summed over the plan, ``DoseSummationType`` PLAN, or ``dose_uid``) and one RTPLAN (several: the
  one the dose refers to, or ``plan_uid``);
- warns about broken references (a dose computed for another plan, a structure set drawn on another
  series, or on more CT images than the folder holds).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ctlib.errors import CTInputError
from ctlib.io import dicom_checks, dicom_read

RT_MODALITIES = ("RTSTRUCT", "RTPLAN", "RTDOSE")


@dataclass(frozen=True)
class RTObject:
    """Header facts of one RT file."""

    path: Path
    modality: str
    sop_instance_uid: str
    patient_id: str
    study_uid: str
    frame_uids: tuple[str, ...]        # FrameOfReferenceUID, or the RTSTRUCT's referenced frames
    label: str                         # StructureSetLabel / RTPlanLabel / DoseSummationType
    references: tuple[str, ...] = ()   # SOP instances it refers to (dose -> plan, plan -> structure set)
    series_references: tuple[str, ...] = ()  # RTSTRUCT: the image series its contours were drawn on
    n_contour_images: int = 0          # RTSTRUCT: images listed in ContourImageSequence

    def describe(self) -> str:
        return f"{self.path.name} ({self.label or '-'}, SOPInstanceUID {self.sop_instance_uid})"


@dataclass
class RTFolder:
    """The CT series and the chosen RT objects of one folder."""

    folder: Path
    ct_files: list[Path]               # sorted along the slice normal (the Volume's slice order)
    ct_series_uid: str
    patient_id: str
    study_uid: str
    frame_of_reference_uid: str
    rtstruct: RTObject
    rtplan: RTObject | None
    rtdose: RTObject | None
    warnings: list[str] = field(default_factory=list)


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _rt_object(path: Path, ds: Dataset) -> RTObject:
    modality = _text(ds, "Modality")
    frames, series, images, refs = [], [], 0, []
    if modality == "RTSTRUCT":
        for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
            frames.append(_text(frame, "FrameOfReferenceUID"))
            for study in frame.get("RTReferencedStudySequence", []):
                for item in study.get("RTReferencedSeriesSequence", []):
                    series.append(_text(item, "SeriesInstanceUID"))
                    images += len(item.get("ContourImageSequence", []))
        label = _text(ds, "StructureSetLabel")
    else:
        frames.append(_text(ds, "FrameOfReferenceUID"))
        label = _text(ds, "RTPlanLabel" if modality == "RTPLAN" else "DoseSummationType")
        sequence = "ReferencedStructureSetSequence" if modality == "RTPLAN" else "ReferencedRTPlanSequence"
        refs = [_text(item, "ReferencedSOPInstanceUID") for item in ds.get(sequence, [])]
    return RTObject(
        path=path, modality=modality, sop_instance_uid=_text(ds, "SOPInstanceUID"),
        patient_id=_text(ds, "PatientID"), study_uid=_text(ds, "StudyInstanceUID"),
        frame_uids=tuple(f for f in frames if f), label=label, references=tuple(r for r in refs if r),
        series_references=tuple(s for s in series if s), n_contour_images=images,
    )


def _sorted_ct_files(headers: list[tuple[Path, Dataset]]) -> list[Path]:
    """CT files in the order of their ImagePositionPatient along the slice normal."""
    _, _, normal = dicom_checks.orientation(*headers[0])
    along = [dicom_checks.floats(p, ds, "ImagePositionPatient", 3) @ normal for p, ds in headers]
    return [headers[i][0] for i in np.argsort(along, kind="stable")]


def _check_identity(rt: RTObject, ct: dict[str, str], same_study: bool, warnings: list[str]) -> None:
    name = rt.path.name
    if rt.patient_id and ct["patient_id"] and rt.patient_id != ct["patient_id"]:
        raise CTInputError(rt.path, f"{rt.modality} PatientID {rt.patient_id!r} is not the CT's "
                                    f"{ct['patient_id']!r}: an RT object of a different patient in the same "
                                    "folder")
    if bool(rt.patient_id) != bool(ct["patient_id"]):
        warnings.append(f"{name}: PatientID {rt.patient_id!r} vs the CT's {ct['patient_id']!r} "
                        "(one is empty): identity not checked")
    for frame in rt.frame_uids:
        if ct["frame_uid"] and frame != ct["frame_uid"]:
            raise CTInputError(rt.path, f"{rt.modality} FrameOfReferenceUID {frame} is not the CT's "
                                        f"{ct['frame_uid']}: registered to another scan (or another patient)")
    if same_study and rt.study_uid and ct["study_uid"] and rt.study_uid != ct["study_uid"]:
        raise CTInputError(rt.path, f"{rt.modality} StudyInstanceUID {rt.study_uid} is not the CT's "
                                    f"{ct['study_uid']}: from another study (same_study=False accepts RT "
                                    "objects a planning system wrote into a new study)")


def _pick(objects: list[RTObject], uid: str | None, what: str, keyword: str, folder: Path) -> RTObject | None:
    listing = "; ".join(o.describe() for o in objects)
    if uid is not None:
        chosen = [o for o in objects if o.sop_instance_uid == uid]
        if not chosen:
            raise CTInputError(folder, f"{keyword} {uid!r} is not an {what} here; found: {listing or 'none'}")
        return chosen[0]
    if len(objects) > 1:
        raise CTInputError(folder, f"{len(objects)} {what} files found, pass {keyword}= one SOPInstanceUID "
                                   f"of: {listing}")
    return objects[0] if objects else None


def scan_rt_folder(
    folder: str | os.PathLike,
    *,
    series_uid: str | None = None,
    structure_set_uid: str | None = None,
    plan_uid: str | None = None,
    dose_uid: str | None = None,
    same_study: bool = True,
) -> RTFolder:
    """Find and check the CT series and RT objects of one case folder (searched recursively)."""
    folder = Path(folder)
    files = [p for s in dicom_read.list_series(folder) for p in s.files]
    headers = [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in files]  # one modality per file
    warnings: list[str] = []
    cts: dict[str, list[tuple[Path, Dataset]]] = {}
    rt_items, other = [], Counter()
    for path, ds in headers:
        modality = _text(ds, "Modality")
        if modality == "CT":
            cts.setdefault(_text(ds, "SeriesInstanceUID"), []).append((path, ds))
        elif modality in RT_MODALITIES:
            rt_items.append((path, ds))
        else:
            other[modality or "no-modality"] += 1
    if other:
        warnings.append("ignored: " + ", ".join(f"{n} {m} file(s)" for m, n in sorted(other.items())))
    listing = "; ".join(f"{uid!r} ({_text(items[0][1], 'SeriesDescription')!r}, {len(items)} files)"
                        for uid, items in cts.items())
    if series_uid is not None:
        if series_uid not in cts:
            raise CTInputError(folder, f"series_uid {series_uid!r} is not a CT series here; CT series: "
                                       f"{listing or 'none'}")
        cts = {series_uid: cts[series_uid]}
    if not cts:
        found = ", ".join(sorted({_text(ds, "Modality") or "?" for _, ds in headers}))
        raise CTInputError(folder, f"no CT series in the folder (found modalities: {found})")
    if len(cts) > 1:
        raise CTInputError(folder, f"{len(cts)} CT series found, pass series_uid= one of: {listing}")
    ct_uid, ct_items = next(iter(cts.items()))
    ct_files = _sorted_ct_files(ct_items)
    first = ct_items[0][1]
    ct = {"patient_id": _text(first, "PatientID"), "study_uid": _text(first, "StudyInstanceUID"),
          "frame_uid": _text(first, "FrameOfReferenceUID")}
    if not ct["frame_uid"]:
        raise CTInputError(ct_files[0], "the CT has no FrameOfReferenceUID: RT objects cannot be matched "
                                        "to it")

    objects = [_rt_object(p, ds) for p, ds in rt_items]
    for rt in objects:
        _check_identity(rt, ct, same_study, warnings)
    by_kind = {kind: [o for o in objects if o.modality == kind] for kind in RT_MODALITIES}
    rtstruct = _pick(by_kind["RTSTRUCT"], structure_set_uid, "RTSTRUCT", "structure_set_uid", folder)
    if rtstruct is None:
        raise CTInputError(folder, "no RTSTRUCT in the folder: the structures cannot be read")
    doses = by_kind["RTDOSE"]
    if dose_uid is None and len(doses) > 1:
        summed = [d for d in doses if d.label == "PLAN"]
        if len(summed) == 1:
            warnings.append("several RTDOSE files: read the plan sum " + summed[0].path.name + ", ignored "
                            + ", ".join(d.path.name for d in doses if d is not summed[0]))
            doses = summed
    rtdose = _pick(doses, dose_uid, "RTDOSE", "dose_uid", folder)
    plans = by_kind["RTPLAN"]
    if plan_uid is None and len(plans) > 1 and rtdose is not None:
        plans = [p for p in plans if p.sop_instance_uid in rtdose.references] or plans
    rtplan = _pick(plans, plan_uid, "RTPLAN", "plan_uid", folder)
    warnings += _reference_warnings(ct_uid, len(ct_files), rtstruct, rtplan, rtdose)
    return RTFolder(folder=folder, ct_files=ct_files, ct_series_uid=ct_uid, patient_id=ct["patient_id"],
                    study_uid=ct["study_uid"], frame_of_reference_uid=ct["frame_uid"],
                    rtstruct=rtstruct, rtplan=rtplan, rtdose=rtdose, warnings=warnings)


def _reference_warnings(
    series_uid: str, n_ct: int, rtstruct: RTObject, rtplan: RTObject | None, rtdose: RTObject | None
) -> list[str]:
    out = []
    if rtstruct.series_references and series_uid not in rtstruct.series_references:
        drawn_on = ", ".join(rtstruct.series_references)
        out.append(f"{rtstruct.path.name} was drawn on series {drawn_on}, not on the CT series {series_uid} "
                   "(same frame of reference: geometry still holds)")
    if rtstruct.n_contour_images > n_ct:
        out.append(f"{rtstruct.path.name} refers to {rtstruct.n_contour_images} CT images, the folder holds "
                   f"{n_ct}: contours beyond the CT are skipped")
    if rtdose is not None and rtdose.label and rtdose.label != "PLAN":
        out.append(f"{rtdose.path.name}: DoseSummationType {rtdose.label} (not PLAN: the dose of a part "
                   "of the plan, or of one fraction)")
    if rtdose is not None and rtplan is not None and rtdose.references \
            and rtplan.sop_instance_uid not in rtdose.references:
        out.append(f"{rtdose.path.name} refers to another plan than {rtplan.path.name}")
    if rtplan is not None and rtplan.references and rtstruct.sop_instance_uid not in rtplan.references:
        out.append(f"{rtplan.path.name} refers to another structure set than {rtstruct.path.name}")
    return out
