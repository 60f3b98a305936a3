"""ctlib.io.dicom_write: round trips through ctlib, pydicom and SimpleITK; anonymity; atomic writes."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # dev dependency: the reference reader, never skipped
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from ctlib.errors import CTInputError
from ctlib.io import dicom_read, dicom_write
from ctlib.io.volume import Volume


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Proper rotation (det +1) from three angles in radians: an oblique orthonormal direction."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


CORONAL = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # x = L, y (rows) = down = -S, z = P

DIRECTIONS = {"axial": np.eye(3), "coronal": CORONAL, "oblique": rotation(0.3, -0.2, 0.5)}


def make_volume(direction: np.ndarray | None = None, seed: int = 0, **fields) -> Volume:
    """A (z=5, y=6, x=7) volume of random HU with anisotropic spacing and an off-centre origin."""
    rng = np.random.default_rng(seed)
    array = rng.uniform(-1024, 3071, size=(5, 6, 7)).astype(np.float32)
    direction = np.eye(3) if direction is None else direction
    return Volume(array, (2.5, 0.7, 0.8), (-120.5, 33.25, -401.0), direction, **fields)


def sitk_read(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    return sitk.GetArrayFromImage(image), image


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_round_trip_through_ctlib(tmp_path, name):
    vol = make_volume(DIRECTIONS[name], slice_thickness_mm=3.0)
    back = dicom_read.read_dicom_series(dicom_write.write_dicom_series(vol, tmp_path / "s"))
    assert np.abs(back.array - vol.array).max() <= 0.5  # HU are rounded to integers
    np.testing.assert_array_equal(back.array, np.rint(vol.array))
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-9)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-9)
    assert back.slice_thickness_mm == 3.0


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_simpleitk_reads_the_same_volume(tmp_path, name):
    vol = make_volume(DIRECTIONS[name])
    folder = dicom_write.write_dicom_series(vol, tmp_path / "s")
    array, image = sitk_read(folder)
    np.testing.assert_array_equal(array.astype(np.float32), np.rint(vol.array))
    np.testing.assert_allclose(image.GetSpacing(), vol.spacing[::-1], atol=1e-6)  # SimpleITK: (dx, dy, dz)
    np.testing.assert_allclose(image.GetOrigin(), vol.origin, atol=1e-6)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), vol.direction, atol=1e-6)


def test_pydicom_reads_values_and_header(tmp_path):
    vol = make_volume(slice_thickness_mm=None)
    folder = dicom_write.write_dicom_series(vol, tmp_path / "s", series_description="test run")
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"slice_{k:04d}.dcm" for k in range(5)]
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, np.rint(vol.array[k]))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
        assert ds.pixel_array.dtype == np.int16 and float(ds.RescaleSlope) == 1.0
        assert int(ds.InstanceNumber) == k + 1
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], vol.slice_positions()[k], atol=1e-9
        )
        assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.8]
        assert (
            float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 2.5
        )  # dz when no thickness is known
        assert (int(ds.Rows), int(ds.Columns)) == (6, 7)
        assert ds.SeriesDescription == "test run"


def test_new_uids_for_every_series_and_instance(tmp_path):
    vol = make_volume()
    a = [pydicom.dcmread(f) for f in sorted(dicom_write.write_dicom_series(vol, tmp_path / "a").iterdir())]
    b = pydicom.dcmread(next(iter(sorted(dicom_write.write_dicom_series(vol, tmp_path / "b").iterdir()))))
    assert len({ds.SOPInstanceUID for ds in a}) == 5
    assert len({ds.SeriesInstanceUID for ds in a}) == 1 and a[0].SeriesInstanceUID != b.SeriesInstanceUID
    assert a[0].StudyInstanceUID != b.StudyInstanceUID and a[0].FrameOfReferenceUID != b.FrameOfReferenceUID


def test_study_uid_and_reference(tmp_path):
    vol = make_volume()
    first = dicom_write.write_dicom_series(vol, tmp_path / "a", patient_name="Doe^Jane")
    ref = pydicom.dcmread(first / "slice_0000.dcm")
    ds = pydicom.dcmread(
        dicom_write.write_dicom_series(vol, tmp_path / "b", reference=first / "slice_0000.dcm")
        / "slice_0000.dcm"
    )
    assert ds.StudyInstanceUID == ref.StudyInstanceUID and ds.FrameOfReferenceUID == ref.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != ref.SeriesInstanceUID
    # issue 11: joining the reference's study means belonging to its patient (was: a blank patient module)
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientPosition == ""
    apart = pydicom.dcmread(
        dicom_write.write_dicom_series(
            vol, tmp_path / "apart", reference=first / "slice_0000.dcm", join_reference_study=False
        )
        / "slice_0000.dcm"
    )
    assert (
        apart.StudyInstanceUID != ref.StudyInstanceUID
        and apart.FrameOfReferenceUID == ref.FrameOfReferenceUID
    )
    assert str(apart.PatientName) == ""  # a new study: no identity
    ds = pydicom.dcmread(
        dicom_write.write_dicom_series(vol, tmp_path / "c", study_uid="1.2.3.4") / "slice_0001.dcm"
    )
    assert ds.StudyInstanceUID == "1.2.3.4"


def test_left_handed_direction_reads_back_reversed(tmp_path):
    # slices step along -(row x column): DICOM readers sort along the normal, so the stack flips
    vol = make_volume(np.diag([1.0, 1.0, -1.0]))
    back = dicom_read.read_dicom_series(dicom_write.write_dicom_series(vol, tmp_path / "s"))
    np.testing.assert_array_equal(back.array, np.rint(vol.array[::-1]))
    np.testing.assert_allclose(back.origin, vol.slice_positions()[-1], atol=1e-9)
    np.testing.assert_allclose(back.direction, np.eye(3), atol=1e-12)
    corner = np.array([2, 3, 4, 1.0])  # voxel (x=2, y=3, z=4) of vol is voxel z=0 of back
    np.testing.assert_allclose(vol.index_to_lps() @ corner, back.index_to_lps() @ [2, 3, 0, 1.0], atol=1e-9)


def test_intercept_keeps_a_wide_range_and_clips_beyond_int16(tmp_path):
    vol = make_volume()
    wide = vol.with_array(np.linspace(-1000.0, 60000.0, vol.array.size).reshape(vol.shape))
    back = dicom_read.read_dicom_series(dicom_write.write_dicom_series(wide, tmp_path / "w"))
    np.testing.assert_array_equal(back.array, np.rint(wide.array))
    huge = vol.with_array(np.linspace(-70000.0, 70000.0, vol.array.size).reshape(vol.shape))
    back = dicom_read.read_dicom_series(dicom_write.write_dicom_series(huge, tmp_path / "h"))
    assert back.array.max() - back.array.min() == 65535  # clipped to the int16 range around the centre


def test_refuses_non_finite_values(tmp_path):
    vol = make_volume()
    vol.array[0, 0, 0] = np.nan
    with pytest.raises(CTInputError, match="NaN"):
        dicom_write.write_dicom_series(vol, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_no_patient_identifiers_by_default(tmp_path):
    vol = make_volume(meta={"PatientName": "Secret^Name", "PatientID": "MRN-123", "source": "/secret/path"})
    folder = dicom_write.write_dicom_series(vol, tmp_path / "s")
    for path in folder.iterdir():
        raw = path.read_bytes()
        assert b"Secret" not in raw and b"MRN-123" not in raw and b"/secret/path" not in raw
        ds = pydicom.dcmread(path)
        assert str(ds.get("PatientName", "")) == "" and ds.get("PatientID", "") == ""
        assert ds.get("PatientBirthDate", "") == ""


def test_patient_identifiers_written_when_passed(tmp_path):
    folder = dicom_write.write_dicom_series(
        make_volume(), tmp_path / "s", patient_name="Doe^John", patient_id="P42"
    )
    ds = pydicom.dcmread(folder / "slice_0002.dcm")
    assert str(ds.PatientName) == "Doe^John" and ds.PatientID == "P42"


def test_overwrite_replaces_the_whole_folder(tmp_path):
    folder = tmp_path / "s"
    dicom_write.write_dicom_series(make_volume(), folder)
    (folder / "stale.txt").write_text("from before")
    dicom_write.write_dicom_series(make_volume(seed=1), folder)
    assert sorted(p.name for p in folder.iterdir()) == [f"slice_{k:04d}.dcm" for k in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_crash_mid_write_leaves_the_old_series(tmp_path, monkeypatch):
    folder = tmp_path / "s"
    old = make_volume(seed=0)
    dicom_write.write_dicom_series(old, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_save = pydicom.dataset.Dataset.save_as
    calls = []

    def save_then_crash(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", save_then_crash)
    with pytest.raises(OSError, match="simulated"):
        dicom_write.write_dicom_series(make_volume(seed=1), folder)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary folder left behind
    np.testing.assert_array_equal(dicom_read.read_dicom_series(folder).array, np.rint(old.array))


def test_patient_position_and_patient_module_follow_the_reference(tmp_path):
    """Issue 11: exports lacked PatientPosition (0018,5100), and a series joining a reference study had a
    blank patient module."""
    vol = make_volume()
    plain = pydicom.dcmread(dicom_write.write_dicom_series(vol, tmp_path / "plain") / "slice_0000.dcm")
    assert "PatientPosition" in plain and plain.PatientPosition == ""  # type 2: present, unknown
    ref = pydicom.dcmread(plain.filename)
    ref.PatientName, ref.PatientID, ref.PatientBirthDate, ref.PatientSex = "Roe^Ann", "P7", "19700101", "F"
    ref.StudyDate, ref.AccessionNumber, ref.PatientPosition = "20260101", "ACC1", "FFS"
    joined = pydicom.dcmread(
        dicom_write.write_dicom_series(vol, tmp_path / "joined", reference=ref) / "slice_0000.dcm"
    )
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "AccessionNumber",
        "StudyInstanceUID",
        "PatientPosition",
    ):
        assert joined.get(keyword) == ref.get(keyword), keyword
    read = dicom_read.read_dicom_series(tmp_path / "joined")
    assert read.meta["patient_position"] == "FFS"
    again = pydicom.dcmread(dicom_write.write_dicom_series(read, tmp_path / "again") / "slice_0000.dcm")
    assert again.PatientPosition == "FFS" and str(again.PatientName) == ""  # position kept, identity not
