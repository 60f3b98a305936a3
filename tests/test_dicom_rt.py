"""DICOM-RT import: RTSTRUCT -> masks and RTDOSE -> dose on the CT grid,
on RT sets written here with pydicom."""

from __future__ import annotations

import contourpy
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage
from test_dicom_read import edit

from ctlib.errors import CTInputError
from ctlib.io import dicom_rt, openkbp
from ctlib.io.dicom_write import write_dicom_series
from ctlib.io.volume import Volume
from ctlib.studies.dose import dicom_rt_import, features

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
DOSE_SCALING_GY = 1e-5


# --- writers: a minimal RT set, written the way treatment planning systems write them ----------------------


def _dataset(modality: str, sop_class: str, frame_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.FrameOfReferenceUID = modality, frame_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    return ds


def _slice_polygons(mask_2d: np.ndarray) -> list[np.ndarray]:
    """Closed polygons ``(n, 2)`` of (column, row) indices around a 2-D mask (marching squares at 0.5)."""
    padded = np.pad(mask_2d.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    return [line - 1.0 for line in lines if len(line) >= 4]


def write_rtstruct(path, ct: Volume, masks: dict[str, np.ndarray], frame_uid: str) -> None:
    ds = _dataset("RTSTRUCT", RTSTRUCT_STORAGE, frame_uid)
    ref = Dataset()
    ref.FrameOfReferenceUID = frame_uid
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    affine = ct.index_to_lps()
    rois, roi_contours = [], []
    for number, (name, mask) in enumerate(masks.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame_uid
        rois.append(roi)
        contours = []
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            for polygon in _slice_polygons(mask[k]):
                index = np.column_stack([polygon, np.full(len(polygon), k)])
                lps = index @ affine[:3, :3].T + affine[:3, 3]
                contour = Dataset()
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(lps)
                contour.ContourData = [f"{v:.4f}" for v in lps.ravel()]
                contours.append(contour)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = Sequence(contours)
        roi_contours.append(item)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(roi_contours)
    ds.save_as(path, enforce_file_format=True)


def write_rtdose(
    path, dose_gy: np.ndarray, position, spacing_mm, frame_uid: str, *, absolute: bool = False
) -> None:
    """``dose_gy (frames, rows, cols)`` on an axial grid at ``position``
    (LPS mm) with ``(dz, dy, dx)`` spacing."""
    ds = _dataset("RTDOSE", RTDOSE_STORAGE, frame_uid)
    frames, rows, cols = dose_gy.shape
    dz, dy, dx = spacing_mm
    ds.ImagePositionPatient = [f"{v:g}" for v in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [dy, dx]
    offsets = np.arange(frames) * dz + (position[2] if absolute else 0.0)
    ds.GridFrameOffsetVector = [f"{v:g}" for v in offsets]
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, rows, cols
    ds.FrameIncrementPointer = 0x3004000C
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = f"{DOSE_SCALING_GY:g}"
    ds.PixelData = np.rint(dose_gy / DOSE_SCALING_GY).astype("<u4").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_ct(ct: Volume, folder) -> str:
    write_dicom_series(ct, folder)
    return dicom_rt.ct_frame_of_reference(sorted(folder.glob("*.dcm"))[0])


# --- synthetic geometry: exact answers ------------------------------------------------------------------


@pytest.fixture
def synthetic(tmp_path):
    ct = Volume(np.full((6, 20, 24), 40.0), (2.5, 2.0, 1.5), origin=(-20.0, -15.0, 30.0))
    ct.array[:, :2] = -1000.0  # air in front of the body
    frame = _write_ct(ct, tmp_path / "ct")
    masks = {name: np.zeros(ct.shape, dtype=bool) for name in ("Parotid_L", "Cord", "BODY", "PTV 70Gy")}
    masks["Parotid_L"][1:4, 3:8, 2:9] = True
    masks["Cord"][2:5, 10:17, 12:20] = True
    masks["Cord"][3, 12:15, 14:17] = False  # a hole: an inner contour, combined by XOR
    masks["BODY"][:, 2:, :] = True
    masks["PTV 70Gy"][2, 5, 5] = True  # one voxel
    write_rtstruct(tmp_path / "rs.dcm", ct, masks, frame)
    return tmp_path, ct, frame, masks


def test_rtstruct_masks_are_exact(synthetic):
    folder, ct, frame, masks = synthetic
    ct.meta["frame_of_reference_uid"] = frame
    found = dicom_rt_import.read_structures(folder / "rs.dcm", ct)
    assert found.raw_names == {"LeftParotid": "Parotid_L", "SpinalCord": "Cord", "PTV70": "PTV 70Gy"}
    assert found.unmatched == ["BODY"]
    for canonical, raw in found.raw_names.items():
        np.testing.assert_array_equal(found.masks[canonical], masks[raw], err_msg=canonical)
    assert not found.masks["SpinalCord"][3, 13, 15]


def test_rtstruct_without_a_name_map_keeps_every_roi_under_its_own_name(synthetic):
    folder, ct, frame, masks = synthetic
    found = dicom_rt.read_rtstruct(folder / "rs.dcm", ct, frame_of_reference_uid=frame)
    assert sorted(found.masks) == sorted(masks)
    assert found.unmatched == []
    for name, mask in masks.items():
        np.testing.assert_array_equal(found.masks[name], mask, err_msg=name)


def _linear_dose(lps: np.ndarray) -> np.ndarray:
    return 20.0 + 0.3 * lps[..., 0] - 0.2 * lps[..., 1] + 0.5 * lps[..., 2]


@pytest.mark.parametrize("absolute", [False, True])
def test_rtdose_trilinear_is_exact_for_a_linear_field(synthetic, absolute):
    folder, ct, frame, _ = synthetic
    position, spacing = np.array([-17.3, -12.1, 31.0]), (3.0, 2.7, 2.2)
    frames, rows, cols = 4, 10, 12
    f, r, c = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(cols), indexing="ij")
    grid_lps = np.stack(
        [position[0] + c * spacing[2], position[1] + r * spacing[1], position[2] + f * spacing[0]], -1
    )
    write_rtdose(folder / "rd.dcm", _linear_dose(grid_lps), position, spacing, frame, absolute=absolute)
    dose = dicom_rt.read_rtdose(folder / "rd.dcm", ct, frame_of_reference_uid=frame)
    assert dose.shape == ct.shape and dose.dtype == np.float32
    k, j, i = np.meshgrid(*[np.arange(n) for n in ct.shape], indexing="ij")
    ct_lps = np.stack([i, j, k], -1) @ ct.index_to_lps()[:3, :3].T + ct.index_to_lps()[:3, 3]
    upper = position + np.array([cols - 1, rows - 1, frames - 1]) * np.array(spacing[::-1])
    inside = np.all((ct_lps >= position - 1e-6) & (ct_lps <= upper + 1e-6), axis=-1)
    assert 0.2 < inside.mean() < 0.9  # the dose grid covers part of the CT
    np.testing.assert_allclose(dose[inside], _linear_dose(ct_lps[inside]), atol=1e-3)
    assert np.all(dose[~inside] == 0)


def test_read_rt_patient_feeds_the_dose_features(synthetic):
    folder, ct, frame, _ = synthetic
    write_rtdose(folder / "rd.dcm", np.full((6, 20, 24), 30.0), ct.origin, ct.spacing, frame)
    patient = dicom_rt_import.read_rt_patient(
        folder / "ct", folder / "rs.dcm", folder / "rd.dcm", "rt_1", "test"
    )
    assert sorted(patient.structures) == ["LeftParotid", "PTV70", "SpinalCord"]
    assert patient.ct.meta["unmatched_roi_names"] == ["BODY"]
    np.testing.assert_allclose(patient.dose_gy, 30.0, atol=1e-4)
    dose_patient = features.dose_patient_from_openkbp(patient)
    assert dose_patient.present.sum() == 3 and dose_patient.possible_dose_mask[:, 3:-1, 1:-1].all()
    assert not dose_patient.possible_dose_mask[:, :2].any() and dose_patient.dose_gy[:, :2].max() == 0




@pytest.mark.parametrize(
    "target, changes, problem",
    [
        ("rs.dcm", {"Modality": "RTPLAN"}, "modality is 'RTPLAN', expected 'RTSTRUCT'"),
        ("rd.dcm", {"Modality": "CT"}, "modality is 'CT', expected 'RTDOSE'"),
        ("rd.dcm", {"FrameOfReferenceUID": "1.2.3"}, "Frame of Reference UID 1.2.3 is not the CT's"),
        ("rd.dcm", {"DoseGridScaling": None}, "DoseGridScaling is missing"),
        ("rd.dcm", {"DoseUnits": "RELATIVE"}, "DoseUnits is 'RELATIVE'"),
        (
            "rd.dcm",
            {"GridFrameOffsetVector": ["0", "5", "2.5", "7.5", "10", "12.5"]},
            "not strictly monotonic",
        ),
        ("rd.dcm", {"PixelSpacing": None}, "PixelSpacing is missing"),
    ],
)
def test_bad_rt_objects_are_refused(synthetic, target, changes, problem):
    folder, ct, frame, _ = synthetic
    write_rtdose(folder / "rd.dcm", np.ones((6, 20, 24)), ct.origin, ct.spacing, frame)
    edit(folder / target, **changes)
    read = dicom_rt_import.read_structures if target == "rs.dcm" else dicom_rt.read_rtdose
    with pytest.raises(CTInputError, match=problem) as info:
        read(folder / target, ct, frame_of_reference_uid=frame)
    assert target in str(info.value)


def test_contour_off_the_ct_slices_is_refused(tmp_path):
    ct = Volume(np.zeros((4, 10, 10)), (3.0, 1.0, 1.0))
    moved = Volume(np.zeros((4, 10, 10)), (3.0, 1.0, 1.0), origin=(0.0, 0.0, 1.5))  # half a slice up
    mask = np.zeros(ct.shape, dtype=bool)
    mask[1, 2:5, 2:5] = True
    write_rtstruct(tmp_path / "rs.dcm", moved, {"Brainstem": mask}, "1.2.3")
    with pytest.raises(CTInputError, match="Brainstem.*slice index 1.50 matches no CT slice"):
        dicom_rt_import.read_structures(tmp_path / "rs.dcm", ct)
    write_rtstruct(tmp_path / "rs.dcm", ct, {"Brainstem": mask, "BrainStem": mask}, "1.2.3")
    with pytest.raises(CTInputError, match="both map to Brainstem"):
        dicom_rt_import.read_structures(tmp_path / "rs.dcm", ct)


# --- a real OpenKBP patient, cropped -------------------------------------------------------------------


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1)


@pytest.mark.realdata
def test_openkbp_patient_round_trip_through_dicom_rt(data_root, tmp_path):
    source = openkbp.read_openkbp_npz(data_root / "openkbp" / "validation" / "pt_201.npz")
    ptv = np.argwhere(np.any([m for n, m in source.structures.items() if n.startswith("PTV")], axis=0))
    kc, jc, ic = ptv.mean(axis=0).astype(int)
    crop = (slice(kc - 16, kc + 16), slice(jc - 32, jc + 33), slice(ic - 32, ic + 33))
    # An axial CT with identity direction (OpenKBP's k runs inferior: flip it) and a non-zero origin.
    flip = lambda a: np.ascontiguousarray(a[crop][::-1])  # noqa: E731
    ct = Volume(flip(source.ct.array), source.ct.spacing, origin=(-120.0, -95.0, -40.0))
    frame = _write_ct(ct, tmp_path / "ct")
    masks = {name: flip(mask) for name, mask in source.structures.items() if flip(mask).sum() >= 20}
    clinical = {"PTV70": "PTV_7000", "PTV63": "PTV 63Gy", "PTV56": "ptv56", "LeftParotid": "PAROTID LT",
                "RightParotid": "Parotid_R", "SpinalCord": "Cord", "Brainstem": "Brain Stem",
                "Esophagus": "Oesophagus", "Larynx": "LARYNX", "Mandible": "Bone_Mandible"}
    write_rtstruct(tmp_path / "rs.dcm", ct, {clinical[n]: m for n, m in masks.items()}, frame)
    dose = flip(source.dose_gy)
    # Dose on an offset grid that covers part of the CT (starts 2 slices, 3 rows and 4 columns in).
    dz, dy, dx = ct.spacing
    start = np.array(ct.origin) + np.array([4 * dx, 3 * dy, 2 * dz])
    write_rtdose(tmp_path / "rd.dcm", dose[2:, 3:, 4:], start, ct.spacing, frame)

    patient = dicom_rt_import.read_rt_patient(
        tmp_path / "ct", tmp_path / "rs.dcm", tmp_path / "rd.dcm", "pt_201"
    )
    np.testing.assert_allclose(patient.ct.array, np.rint(ct.array), atol=0.5)
    assert set(patient.structures) == set(masks) and len(masks) >= 4
    for name, mask in masks.items():
        assert _dice(patient.structures[name], mask) > 0.9, name
    body = flip(source.possible_dose_mask)
    covered = np.zeros(ct.shape, dtype=bool)
    covered[2:, 3:, 4:] = True
    assert np.abs(patient.dose_gy - dose)[body & covered].mean() < 1e-4
    assert np.all(patient.dose_gy[~covered] == 0) and dose[body & ~covered].max() > 1.0

    # Dose on a 2x coarser in-plane grid (10.8 mm here): trilinear resampling equals the index-space
    # reference; its error against the full-resolution dose is the price of the coarse grid.
    write_rtdose(tmp_path / "rd2.dcm", dose[:, ::2, ::2], ct.origin, (dz, 2 * dy, 2 * dx), frame)
    coarse = dicom_rt.read_rtdose(tmp_path / "rd2.dcm", patient.ct)
    k, j, i = np.meshgrid(
        *[np.arange(n) / s for n, s in zip(ct.shape, (1, 2, 2), strict=True)], indexing="ij"
    )
    reference = ndimage.map_coordinates(dose[:, ::2, ::2], [k, j, i], order=1, mode="nearest")
    np.testing.assert_allclose(coarse, reference, atol=1e-3)
    assert 0.5 < np.abs(coarse - dose)[body].mean() < 4.0  # measured 2.47 Gy on pt_201
