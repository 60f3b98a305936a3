"""DICOM-RT import of clinical exports: ``read_rt_folder`` on generated RT sets (identity checks, several
contours per slice, holes, odd contour types, local ROI names) and on the dicompyler-core example case
(one real CT slice, breast RTSTRUCT, RTPLAN, RTDOSE; ``make dicompyler-example``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from scipy.interpolate import RegularGridInterpolator
from skimage.draw import polygon2mask
from test_dicom_read import edit, write_slices
from test_dicom_rt import RTSTRUCT_STORAGE, _dataset, write_rtdose, write_rtstruct

from ctlib.data import body_mask
from ctlib.errors import CTInputError
from ctlib.io import dicom_read, dicom_rt
from ctlib.io.dicom_write import write_dicom_series
from ctlib.io.openkbp import ROI_NAMES
from ctlib.io.volume import Volume
from ctlib.studies.dose import dicom_rt_import, structure_names

RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
PATIENT = "RT-0042"


# --- a generated clinical case: CT in a sub-folder, RTSTRUCT, RTPLAN, RTDOSE, a README ----------------------


def _ct() -> Volume:
    ct = Volume(np.full((5, 16, 18), 30.0), (3.0, 2.0, 2.0), origin=(-18.0, -16.0, 40.0))
    ct.array[:, :2] = -1000.0
    return ct


def _same_patient(path: Path, ct_file: Path) -> None:
    ref = pydicom.dcmread(ct_file, stop_before_pixels=True)
    edit(path, PatientID=ref.PatientID, StudyInstanceUID=ref.StudyInstanceUID)


def _reference_ct(rtstruct: Path, ct_files: list[Path]) -> None:
    """The RTSTRUCT's RTReferencedStudySequence: the CT series and its images, as planning systems write."""
    ds = pydicom.dcmread(rtstruct)
    ref = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    images = []
    for path in ct_files:
        image = Dataset()
        image.ReferencedSOPClassUID = ref.SOPClassUID
        image.ReferencedSOPInstanceUID = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        images.append(image)
    series, study = Dataset(), Dataset()
    series.SeriesInstanceUID, series.ContourImageSequence = ref.SeriesInstanceUID, Sequence(images)
    study.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (as TPSs write it)
    ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence = Sequence([study])
    ds.save_as(rtstruct)


def write_rtplan(path: Path, frame_uid: str, rtstruct: Path) -> None:
    ds = _dataset("RTPLAN", RTPLAN_STORAGE, frame_uid)
    ds.RTPlanLabel = "H&N 70/63/56"
    ref = Dataset()
    ref.ReferencedSOPClassUID = RTSTRUCT_STORAGE
    ref.ReferencedSOPInstanceUID = pydicom.dcmread(rtstruct).SOPInstanceUID
    ds.ReferencedStructureSetSequence = Sequence([ref])
    ds.save_as(path, enforce_file_format=True)


def write_case(folder: Path, *, dose: bool = True, plan: bool = True) -> tuple[Volume, dict[str, np.ndarray]]:
    ct = _ct()
    write_dicom_series(ct, folder / "CT", patient_id=PATIENT, patient_name="Test^Case")
    ct_file = sorted((folder / "CT").glob("*.dcm"))[0]
    frame = dicom_rt.ct_frame_of_reference(ct_file)
    masks = {name: np.zeros(ct.shape, dtype=bool)
             for name in ("PAROTID_L", "Brain Stem", "PTV 7000", "SpinalCord_PRV", "CTV", "BODY")}
    masks["PAROTID_L"][1:3, 4:8, 3:7] = True
    masks["Brain Stem"][2:5, 9:13, 8:12] = True
    masks["Brain Stem"][3, 10:12, 9:11] = False   # a hole
    masks["PTV 7000"][2, 3:6, 10:15] = True
    masks["SpinalCord_PRV"][1:4, 9:14, 7:13] = True
    masks["CTV"][2, 4:6, 11:14] = True
    masks["BODY"][:, 2:, :] = True
    write_rtstruct(folder / "RS.dcm", ct, masks, frame)
    _same_patient(folder / "RS.dcm", ct_file)
    _reference_ct(folder / "RS.dcm", sorted((folder / "CT").glob("*.dcm")))
    if plan:
        write_rtplan(folder / "RP.dcm", frame, folder / "RS.dcm")
        _same_patient(folder / "RP.dcm", ct_file)
    if dose:
        write_rtdose(folder / "RD.dcm", np.full(ct.shape, 2.0), ct.origin, ct.spacing, frame)
        _same_patient(folder / "RD.dcm", ct_file)
    (folder / "README.txt").write_text("exported by a planning system")
    return ct, masks


def test_read_rt_folder_reads_a_clinical_case(tmp_path):
    ct, masks = write_case(tmp_path)
    case = dicom_rt_import.read_rt_folder(tmp_path)
    assert case.patient.patient_id == PATIENT and case.has_dose
    assert case.rtstruct_file.name == "RS.dcm" and case.rtplan_file.name == "RP.dcm"
    assert case.rtdose_file.name == "RD.dcm"
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in case.ct_files]
    assert len(z) == 5 and z == sorted(z)
    assert case.roi_names == {"LeftParotid": "PAROTID_L", "Brainstem": "Brain Stem", "PTV70": "PTV 7000"}
    assert case.unmatched_roi_names == ["SpinalCord_PRV", "CTV", "BODY"]
    assert case.missing_structures == [n for n in ROI_NAMES if n not in ("LeftParotid", "Brainstem", "PTV70")]
    for canonical, raw in case.roi_names.items():
        np.testing.assert_array_equal(case.patient.structures[canonical], masks[raw], err_msg=canonical)
    np.testing.assert_allclose(case.patient.dose_gy, 2.0, atol=1e-4)
    assert case.patient.ct.shape == ct.shape and not case.patient.possible_dose_mask[:, :2].any()
    assert case.warnings == []


def test_read_rt_folder_without_dose_gives_zeros(tmp_path):
    ct, _ = write_case(tmp_path, dose=False, plan=False)
    case = dicom_rt_import.read_rt_folder(tmp_path, patient_id="anon-1")
    assert not case.has_dose and case.rtdose_file is None and case.rtplan_file is None
    assert case.patient.patient_id == "anon-1"
    assert case.patient.dose_gy.shape == ct.shape and not case.patient.dose_gy.any()


@pytest.mark.parametrize("target", ["RD.dcm", "RP.dcm", "RS.dcm"])
@pytest.mark.parametrize(
    "change, problem",
    [
        ({"PatientID": "SOMEONE-ELSE"},
         "PatientID 'SOMEONE-ELSE' is not the CT's 'RT-0042': an RT object of a different patient"),
        ({"StudyInstanceUID": "1.2.3.4"}, "StudyInstanceUID 1.2.3.4 is not the CT's"),
    ],
)
def test_rt_object_of_another_patient_or_study_is_refused(tmp_path, target, change, problem):
    write_case(tmp_path)
    edit(tmp_path / target, **change)
    with pytest.raises(CTInputError, match=problem) as info:
        dicom_rt_import.read_rt_folder(tmp_path)
    assert str(info.value).startswith(str(tmp_path / target)) and "\n" not in str(info.value)
    if "StudyInstanceUID" in change:
        assert dicom_rt_import.read_rt_folder(tmp_path, same_study=False).has_dose


def test_plan_of_another_patient_in_a_sub_folder_is_refused(tmp_path):
    write_case(tmp_path)
    other = tmp_path / "old_plans"
    other.mkdir()
    write_rtplan(other / "RP_other.dcm", "1.2.826.0.1.3680043.8.498.99", tmp_path / "RS.dcm")
    edit(other / "RP_other.dcm", PatientID="RT-0043")
    with pytest.raises(CTInputError, match="RP_other.dcm: RTPLAN PatientID 'RT-0043'"):
        dicom_rt_import.read_rt_folder(tmp_path)
    edit(other / "RP_other.dcm", PatientID=PATIENT)  # same patient, other frame of reference: another scan
    with pytest.raises(CTInputError, match="RP_other.dcm: RTPLAN FrameOfReferenceUID .* is not the CT's"):
        dicom_rt_import.read_rt_folder(tmp_path)


def test_several_ct_series_or_structure_sets_are_listed(tmp_path):
    ct, _ = write_case(tmp_path)
    shutil.copy(tmp_path / "RS.dcm", tmp_path / "RS_copy.dcm")
    edit(tmp_path / "RS_copy.dcm", SOPInstanceUID="1.2.826.0.1.3680043.8.498.7", StructureSetLabel="v2")
    with pytest.raises(CTInputError, match=r"2 RTSTRUCT files found, pass structure_set_uid=.*RS.dcm.*"
                                           r"RS_copy.dcm \(v2, SOPInstanceUID 1.2.826.0.1.3680043.8.498.7\)"):
        dicom_rt_import.read_rt_folder(tmp_path)
    case = dicom_rt_import.read_rt_folder(tmp_path, structure_set_uid="1.2.826.0.1.3680043.8.498.7")
    assert case.rtstruct_file.name == "RS_copy.dcm"

    (tmp_path / "RS_copy.dcm").unlink()
    ref = pydicom.dcmread(sorted((tmp_path / "CT").glob("*.dcm"))[0])
    write_dicom_series(ct, tmp_path / "CT_bone", reference=ref, series_description="bone kernel")
    listing = r"2 CT series found, pass series_uid= one of: .*'bone kernel', 5 files"
    with pytest.raises(CTInputError, match=listing):
        dicom_rt_import.read_rt_folder(tmp_path)
    bone_uid = pydicom.dcmread(sorted((tmp_path / "CT_bone").glob("*.dcm"))[0]).SeriesInstanceUID
    case = dicom_rt_import.read_rt_folder(tmp_path, series_uid=bone_uid)
    assert all(p.parent.name == "CT_bone" for p in case.ct_files)
    assert any("was drawn on series" in w for w in case.warnings)


def test_the_plan_sum_is_taken_among_several_doses(tmp_path):
    ct, _ = write_case(tmp_path)
    shutil.copy(tmp_path / "RD.dcm", tmp_path / "RD_beam1.dcm")
    edit(tmp_path / "RD_beam1.dcm", SOPInstanceUID="1.2.826.0.1.3680043.8.498.8", DoseSummationType="BEAM")
    case = dicom_rt_import.read_rt_folder(tmp_path)
    assert case.rtdose_file.name == "RD.dcm"
    assert any("read the plan sum RD.dcm, ignored RD_beam1.dcm" in w for w in case.warnings)
    edit(tmp_path / "RD_beam1.dcm", DoseSummationType="PLAN")
    with pytest.raises(CTInputError, match="2 RTDOSE files found, pass dose_uid="):
        dicom_rt_import.read_rt_folder(tmp_path)


def test_the_plan_the_dose_refers_to_is_taken_among_several_plans(tmp_path):
    write_case(tmp_path)
    shutil.copy(tmp_path / "RP.dcm", tmp_path / "RP_old.dcm")
    edit(tmp_path / "RP_old.dcm", SOPInstanceUID="1.2.826.0.1.3680043.8.498.9", RTPlanLabel="old")
    with pytest.raises(CTInputError, match=r"2 RTPLAN files found, pass plan_uid=.*RP_old.dcm \(old, "):
        dicom_rt_import.read_rt_folder(tmp_path)
    ref = Dataset()
    ref.ReferencedSOPClassUID = RTPLAN_STORAGE
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.9"
    edit(tmp_path / "RD.dcm", ReferencedRTPlanSequence=Sequence([ref]))
    assert dicom_rt_import.read_rt_folder(tmp_path).rtplan_file.name == "RP_old.dcm"


# --- several contours per slice, holes, odd contour types ---------------------------------------------------


def _box(i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
    """A rectangle around voxels i0..i1 (columns), j0..j1 (rows): edges halfway between voxel centres."""
    return np.array([[i0 - 0.5, j0 - 0.5], [i1 + 0.5, j0 - 0.5], [i1 + 0.5, j1 + 0.5], [i0 - 0.5, j1 + 0.5]])


def write_polygons(path: Path, ct: Volume, rois: dict[str, list[tuple[int, np.ndarray, str]] | None]) -> None:
    """RTSTRUCT with explicit contours ``(slice k, polygon (n, 2) of (i, j) indices, ContourGeometricType)``
    per ROI; ``None`` writes a ROI without ContourSequence."""
    ds = _dataset("RTSTRUCT", RTSTRUCT_STORAGE, "1.2.3")
    affine = ct.index_to_lps()
    rois_seq, contours_seq = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        rois_seq.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        if contours is not None:
            items = []
            for k, polygon, kind in contours:
                lps = np.column_stack([polygon, np.full(len(polygon), k)]) @ affine[:3, :3].T + affine[:3, 3]
                contour = Dataset()
                contour.ContourGeometricType = kind
                contour.NumberOfContourPoints = len(lps)
                contour.ContourData = [f"{v:.4f}" for v in lps.ravel()]
                items.append(contour)
            item.ContourSequence = Sequence(items)
        contours_seq.append(item)
    ds.StructureSetROISequence = Sequence(rois_seq)
    ds.ROIContourSequence = Sequence(contours_seq)
    ds.save_as(path, enforce_file_format=True)


def test_several_contours_per_slice_islands_holes_and_odd_types(tmp_path):
    ct = Volume(np.zeros((3, 30, 30)), (2.0, 1.0, 1.0), origin=(5.0, -7.0, 11.0))
    point = np.array([[4.0, 4.0]])
    line = np.array([[1.0, 1.0], [8.0, 1.0], [8.0, 8.0]])
    rois = {
        "islands": [(1, _box(2, 6, 2, 6), "CLOSED_PLANAR"), (1, _box(10, 14, 3, 5), "CLOSED_PLANAR")],
        "ring": [(1, _box(9, 11, 9, 11), "CLOSED_PLANAR"), (1, _box(5, 20, 5, 20), "CLOSED_PLANAR")],
        "ring_with_island": [(0, _box(2, 25, 2, 25), "CLOSED_PLANAR"),
                             (0, _box(6, 20, 6, 20), "CLOSED_PLANAR"),
                             (0, _box(10, 12, 10, 12), "CLOSED_PLANAR")],
        "overlapping": [(2, _box(2, 10, 2, 10), "CLOSED_PLANAR"), (2, _box(8, 15, 4, 8), "CLOSED_PLANAR"),
                        (2, _box(8, 15, 4, 8), "CLOSED_PLANAR")],  # overlap and an exact duplicate
        "marker": [(1, point, "POINT"), (1, line, "OPEN_PLANAR"), (2, _box(3, 4, 3, 4), "CLOSED_PLANAR")],
        "empty": None,
        "off_ct": [(7, _box(2, 6, 2, 6), "CLOSED_PLANAR"), (1, _box(2, 3, 2, 3), "CLOSED_PLANAR")],
    }
    write_polygons(tmp_path / "rs.dcm", ct, rois)
    expected = {name: np.zeros(ct.shape, dtype=bool) for name in rois}
    expected["islands"][1, 2:7, 2:7] = expected["islands"][1, 3:6, 10:15] = True  # (k, j rows, i columns)
    expected["ring"][1, 5:21, 5:21] = True
    expected["ring"][1, 9:12, 9:12] = False
    expected["ring_with_island"][0, 2:26, 2:26] = True
    expected["ring_with_island"][0, 6:21, 6:21] = False
    expected["ring_with_island"][0, 10:13, 10:13] = True
    expected["overlapping"][2, 2:11, 2:11] = expected["overlapping"][2, 4:9, 8:16] = True
    expected["marker"][2, 3:5, 3:5] = True
    expected["off_ct"][1, 2:4, 2:4] = True

    with pytest.raises(CTInputError, match="'off_ct', contour 0 at slice index 7.00 matches no CT slice"):
        dicom_rt.read_rtstruct(tmp_path / "rs.dcm", ct)
    found = dicom_rt.read_rtstruct(tmp_path / "rs.dcm", ct, outside_ct="skip")
    assert sorted(found.masks) == sorted(set(rois) - {"empty"}) and found.empty == ["empty"]
    for name, mask in found.masks.items():
        np.testing.assert_array_equal(mask, expected[name], err_msg=name)
    assert found.warnings == [
        "ROI 'empty' has no contours (no ContourSequence): empty",
        "ROI 'overlapping': contours overlap without one inside the other on 1 slice(s): filled as their "
        "union",
        "ROI 'marker': 1 POINT contour(s) (they enclose no volume) skipped",
        "ROI 'marker': 1 OPEN_PLANAR contour(s) (they enclose no volume) skipped",
        "ROI 'off_ct': 1 contour(s) beyond the CT's first or last slice skipped",
    ]


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("Lt Parotid", "LeftParotid"), ("PAROTID_L", "LeftParotid"), ("Parotid L", "LeftParotid"),
        ("Parotid_R", "RightParotid"), ("Brain Stem", "Brainstem"), ("SpinalCord", "SpinalCord"),
        ("PTV_70", "PTV70"), ("PTV 7000", "PTV70"), ("PTV_5600", "PTV56"), ("Bone_Mandible", "Mandible"),
        ("SpinalCord_PRV", None), ("SpinalCord_PRV05", None), ("CTV", None), ("CTV_70", None), ("GTV", None),
        ("Lt Lung", None), ("Lung_L", None), ("Heart", None), ("BODY", None), ("External", None),
        ("Areola", None), ("Borders", None), ("Breast", None), ("Nodes", None), ("Scar", None),
        ("Tumor Bed", None), ("Tumor Bed Block", None), ("Parotids", None), ("z_Parotid_L_opt", None),
    ],
)
def test_local_roi_names(raw, canonical):
    assert structure_names.canonical_name(raw) == canonical


# --- a CT of one slice --------------------------------------------------------------------------------------


def test_single_slice_series_reads_with_its_thickness(tmp_path):
    _, stored = write_slices(tmp_path, 1)
    with pytest.raises(CTInputError, match="single-slice series: at least 2 slices.*allow_single_slice=True"):
        dicom_read.read_dicom_series(tmp_path)
    vol = dicom_read.read_dicom_series(tmp_path, allow_single_slice=True)
    assert vol.shape == (1, 6, 5) and vol.spacing == pytest.approx((2.5, 0.5, 0.75))
    np.testing.assert_array_equal(vol.array, stored.astype(np.float32))
    assert vol.origin == pytest.approx((-10.0, 20.0, 5.0))
    edit(tmp_path / "img000.dcm", SpacingBetweenSlices="4.0")
    assert dicom_read.read_dicom_series(tmp_path, allow_single_slice=True).spacing[0] == 4.0
    edit(tmp_path / "img000.dcm", SpacingBetweenSlices=None, SliceThickness=None)
    with pytest.raises(CTInputError, match="img000.dcm: single-slice series without a positive SliceThick"):
        dicom_read.read_dicom_series(tmp_path, allow_single_slice=True)


@pytest.mark.parametrize("excess_mm, expected_gy", [(4e-4, 2.0), (-4e-4, 2.0), (0.5, 0.0)])
def test_ct_slice_on_the_last_dose_frame_keeps_its_dose(tmp_path, excess_mm, expected_gy):
    # A single CT slice on the dose grid's last frame, off by a rounding error in mm (the dicompyler case).
    ct = Volume(np.zeros((1, 6, 6)), (3.0, 2.0, 2.0), origin=(0.0, 0.0, 10.0 + 3 * 2.5 + excess_mm))
    write_rtdose(tmp_path / "rd.dcm", np.full((4, 6, 6), 2.0), (0.0, 0.0, 10.0), (2.5, 2.0, 2.0), "1.2.3")
    dose = dicom_rt.read_rtdose(tmp_path / "rd.dcm", ct)
    np.testing.assert_allclose(dose, expected_gy, atol=1e-4)


# --- the dicompyler-core example: a real export with one CT slice -------------------------------------------


EXAMPLE_ROIS = ["BODY", "Areola", "Borders", "Breast", "Heart", "Lt Lung", "Nodes", "Scar", "Tumor Bed",
                "Tumor Bed Block"]


@pytest.fixture(scope="module")
def example() -> Path:
    folder = dicom_rt_import.dicompyler_example_folder()
    if not all((folder / name).is_file() for name in ("ct.0.dcm", "rtss.dcm", "rtplan.dcm", "rtdose.dcm")):
        message = (f"{folder}: the dicompyler-core example case is missing: run `make dicompyler-example` "
                   f"(or set ${dicom_rt_import.DICOMPYLER_EXAMPLE_ENV_VAR})")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="module")
def example_case(example) -> dicom_rt_import.RTCase:
    return dicom_rt_import.read_rt_folder(example)


def test_example_case_is_read(example, example_case):
    case = example_case
    ct = case.patient.ct
    assert ct.shape == (1, 512, 512) and ct.spacing == pytest.approx((3.0, 1.074219, 1.074219))
    assert ct.origin == pytest.approx((-275.0, -524.0, 168.5593))
    assert [p.name for p in case.ct_files] == ["ct.0.dcm"]
    assert (case.rtstruct_file.name, case.rtplan_file.name, case.rtdose_file.name) == \
        ("rtss.dcm", "rtplan.dcm", "rtdose.dcm")
    ids = {pydicom.dcmread(example / n, stop_before_pixels=True).PatientID
           for n in ("ct.0.dcm", "rtss.dcm", "rtplan.dcm", "rtdose.dcm")}
    assert ids == {"123456"} and case.patient.patient_id == "123456"
    # Breast-case names: none is a head-and-neck OpenKBP structure ("Lt Lung" is no parotid).
    assert case.unmatched_roi_names == EXAMPLE_ROIS and case.roi_names == {}
    assert case.missing_structures == list(ROI_NAMES) and case.patient.structures == {}
    assert case.empty_roi_names == ["Areola"]  # a ROI without ContourSequence
    assert any("refers to 98 CT images, the folder holds 1" in w for w in case.warnings)


def test_example_structures_are_rasterized_on_the_slice(example, example_case):
    ct = example_case.patient.ct
    with pytest.raises(CTInputError, match="rtss.dcm: ROI 'BODY', contour 0 at slice index -97.00 match"):
        dicom_rt.read_rtstruct(example / "rtss.dcm", ct)
    found = dicom_rt.read_rtstruct(example / "rtss.dcm", ct, outside_ct="skip")
    assert list(found.masks) == ["BODY"]  # the other ROIs lie below this slice
    assert found.empty == EXAMPLE_ROIS[1:]
    body = found.masks["BODY"][0]
    threshold_body = body_mask.body_mask(ct)[0]
    assert (body & threshold_body).sum() / threshold_body.sum() > 0.97  # measured 0.988
    assert (ct.array[0][body] > -500).mean() > 0.97                     # measured 0.988
    assert (ct.array[0][~body] > -500).mean() < 0.05                    # couch and noise: 0.023
    # Cross-check against skimage's polygon fill of the four BODY contours on this slice (XOR, as dicompyler).
    ds = pydicom.dcmread(example / "rtss.dcm")
    to_index = np.linalg.inv(ct.index_to_lps())
    reference = np.zeros(body.shape, dtype=bool)
    contours = next(c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == 1).ContourSequence
    on_slice = [np.asarray(c.ContourData, float).reshape(-1, 3) for c in contours
                if abs(float(c.ContourData[2]) - ct.origin[2]) < 0.5]
    assert len(on_slice) == 4
    for points in on_slice:
        index = points @ to_index[:3, :3].T + to_index[:3, 3]
        reference ^= polygon2mask(body.shape, index[:, [1, 0]])
    assert np.sum(body != reference) / reference.sum() < 0.01


def test_example_dose_is_sampled_on_the_ct_slice(example, example_case):
    ds = pydicom.dcmread(example / "rtdose.dcm")
    scaling = float(ds.DoseGridScaling)
    frames = np.asarray(ds.GridFrameOffsetVector, float) + float(ds.ImagePositionPatient[2])
    k = int(np.argmin(np.abs(frames - 168.5593)))
    assert k == int(ds.NumberOfFrames) - 1  # the CT slice lies on the dose grid's last frame
    plane = ds.pixel_array[k].astype(np.float64) * scaling
    dose = example_case.patient.dose_gy[0]
    assert example_case.has_dose and dose.max() == pytest.approx(plane.max(), rel=0.02)
    # Independent bilinear resampling of that frame at the CT pixel centres (0 outside the dose grid).
    x0, y0 = float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1])
    dy, dx = (float(v) for v in ds.PixelSpacing)
    grid = (y0 + dy * np.arange(plane.shape[0]), x0 + dx * np.arange(plane.shape[1]))
    sample = RegularGridInterpolator(grid, plane, bounds_error=False, fill_value=0.0)
    ct = example_case.patient.ct
    y = ct.origin[1] + ct.spacing[1] * np.arange(512)
    x = ct.origin[0] + ct.spacing[2] * np.arange(512)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    np.testing.assert_allclose(dose, sample((yy, xx)), atol=1e-6)
    assert 0.05 < (dose > 0).mean() < 0.5


def test_example_with_a_dose_of_another_patient_is_refused(example, tmp_path):
    copy = shutil.copytree(example, tmp_path / "case")
    edit(copy / "rtdose.dcm", PatientID="654321")
    with pytest.raises(CTInputError, match="rtdose.dcm: RTDOSE PatientID '654321' is not the CT's '123456': "
                                           "an RT object of a different patient in the same folder"):
        dicom_rt_import.read_rt_folder(copy)
