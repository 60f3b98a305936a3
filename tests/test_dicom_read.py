"""ctlib.io.dicom_read: sorting, geometry, decoding, and every refusal (one-line CTInputError)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # dev dependency: the reference reader, never skipped
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ctlib.errors import CTInputError
from ctlib.io import dicom_read

REAL_SERIES = "totalseg_example/example_ct_dicom"


def write_slices(
    folder: Path,
    n: int = 4,
    *,
    dz: float = 2.0,
    rows: int = 6,
    cols: int = 5,
    names: list[str] | None = None,
    positions: list[list[float]] | None = None,
    instance_numbers: list[int] | None = None,
    series_uid: str | None = None,
    modality: str = "CT",
    seed: int = 0,
) -> tuple[list[Path], np.ndarray]:
    """Tiny uncompressed axial series, hand-built with pydicom; returns (files, stored values)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    stored = np.random.default_rng(seed).integers(-1000, 2000, size=(n, rows, cols)).astype(np.int16)
    positions = positions or [[-10.0, 20.0, 5.0 + k * dz] for k in range(n)]
    names = names or [f"img{k:03d}.dcm" for k in range(n)]
    instance_numbers = instance_numbers or list(range(1, n + 1))
    files = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = f"series {modality}"
        ds.InstanceNumber = instance_numbers[k]
        ds.ImagePositionPatient = [str(v) for v in positions[k]]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.5", "0.75"]
        ds.SliceThickness = "2.5"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        ds.PixelData = stored[k].tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files, stored


def edit(path: Path, **changes) -> None:
    """Rewrite one header element (or delete it with None)."""
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


def refused(source, *names: str, **kwargs) -> str:
    """Read, expect a CTInputError, return its one-line message after checking it names ``names``."""
    with pytest.raises(CTInputError) as info:
        dicom_read.read_dicom_series(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message
    return message


# --- reading -----------------------------------------------------------------------------------


def test_reads_values_and_geometry(tmp_path):
    _, stored = write_slices(tmp_path, 4)
    vol = dicom_read.read_dicom_series(tmp_path)
    assert vol.shape == (4, 6, 5) and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, stored.astype(np.float32))
    assert vol.spacing == pytest.approx(
        (2.0, 0.5, 0.75)
    )  # PixelSpacing = (row spacing dy, column spacing dx)
    assert vol.origin == pytest.approx((-10.0, 20.0, 5.0))
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.slice_thickness_mm == 2.5
    assert vol.meta["format"] == "dicom" and vol.meta["n_files"] == 4
    assert vol.meta["transfer_syntax"] == ExplicitVRLittleEndian


def test_rescale_slope_and_intercept_applied_per_slice(tmp_path):
    files, stored = write_slices(tmp_path, 3)
    edit(files[1], RescaleSlope="0.5", RescaleIntercept="-1024.25")
    vol = dicom_read.read_dicom_series(tmp_path)
    np.testing.assert_allclose(vol.array[1], stored[1] * 0.5 - 1024.25, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(vol.array[0], stored[0])


def test_sorts_by_position_not_by_name_or_instance_number(tmp_path):
    order = [2, 0, 3, 1, 4]
    names = [f"{random.Random(k).getrandbits(40):x}.dcm" for k in range(5)]
    positions = [[-10.0, 20.0, 5.0 + 2.0 * k] for k in order]
    _, stored = write_slices(tmp_path, 5, names=names, positions=positions, instance_numbers=[9, 3, 7, 1, 5])
    vol = dicom_read.read_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.array, stored[np.argsort(order)])
    assert vol.origin[2] == pytest.approx(5.0) and vol.spacing[0] == pytest.approx(2.0)


def test_reversed_slice_order_is_sorted_along_the_normal(tmp_path):
    positions = [[-10.0, 20.0, 30.0 - 2.0 * k] for k in range(4)]  # instance 1 is the top slice
    _, stored = write_slices(tmp_path, 4, positions=positions)
    vol = dicom_read.read_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.array, stored[::-1])
    assert vol.origin == pytest.approx((-10.0, 20.0, 24.0))
    np.testing.assert_allclose(vol.slice_normal, [0, 0, 1])
    assert np.linalg.det(vol.direction) == pytest.approx(1.0)


def test_worker_processes_give_the_same_volume(tmp_path):
    _, stored = write_slices(tmp_path, 6)
    vol = dicom_read.read_dicom_series(tmp_path, workers=2)
    np.testing.assert_array_equal(vol.array, stored)


def test_list_series_and_pick_one(tmp_path):
    write_slices(tmp_path / "a", 3, series_uid="1.2.3.1")
    write_slices(tmp_path / "b", 5, series_uid="1.2.3.2", modality="MR")
    (tmp_path / "README.txt").write_text("not dicom")
    series = {s.series_instance_uid: s for s in dicom_read.list_series(tmp_path)}
    assert set(series) == {"1.2.3.1", "1.2.3.2"}
    assert (series["1.2.3.2"].n_files, series["1.2.3.2"].modality) == (5, "MR")
    assert len(series["1.2.3.1"].files) == 3
    assert dicom_read.read_dicom_series(tmp_path, series_uid="1.2.3.1").shape == (3, 6, 5)


def test_explicit_file_list_and_allow_non_ct(tmp_path):
    files, _ = write_slices(tmp_path, 3, modality="MR")
    vol = dicom_read.read_dicom_series([str(f) for f in files], allow_non_ct=True)
    assert vol.modality == "MR" and vol.shape[0] == 3


# --- refusals ----------------------------------------------------------------------------------


def test_refuses_empty_folder(tmp_path):
    refused(tmp_path, str(tmp_path), "empty folder")


def test_refuses_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    refused(tmp_path, "no DICOM files")


def test_refuses_non_dicom_file_in_explicit_list(tmp_path):
    files, _ = write_slices(tmp_path, 3)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    refused([*files, other], "notes.txt", "not a DICOM file")


def test_refuses_truncated_uncompressed_file(tmp_path):
    files, _ = write_slices(tmp_path, 3, rows=32, cols=32)
    raw = files[1].read_bytes()
    files[1].write_bytes(raw[: len(raw) - 700])
    refused(tmp_path, files[1].name, "truncated")


def test_refuses_file_truncated_in_header(tmp_path):
    files, _ = write_slices(tmp_path, 3)
    files[2].write_bytes(files[2].read_bytes()[:300])
    refused(tmp_path, files[2].name)


def test_refuses_file_without_pixel_data(tmp_path):
    files, _ = write_slices(tmp_path, 3)
    edit(files[0], PixelData=None)
    refused(tmp_path, files[0].name, "no pixel data")


def test_refuses_non_ct_modality(tmp_path):
    write_slices(tmp_path, 3, modality="MR")
    refused(tmp_path, "'MR'", "allow_non_ct")


def test_refuses_several_series_and_lists_them(tmp_path):
    write_slices(tmp_path / "a", 3, series_uid="1.2.3.1")
    write_slices(tmp_path / "b", 4, series_uid="1.2.3.2")
    message = refused(tmp_path, "2 series", "1.2.3.1", "1.2.3.2", "3 files", "4 files", "series CT")
    assert "series_uid" in message


def test_refuses_unknown_series_uid(tmp_path):
    write_slices(tmp_path, 3, series_uid="1.2.3.1")
    refused(tmp_path, "9.9.9", "not found", "1.2.3.1", series_uid="9.9.9")


def test_refuses_duplicate_positions(tmp_path):
    positions = [[0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [0.0, 0.0, 4.0]]
    files, _ = write_slices(tmp_path, 4, positions=positions)
    refused(tmp_path, "duplicate", files[1].name, files[2].name)


def test_refuses_missing_slice(tmp_path):
    positions = [[0.0, 0.0, z] for z in (0.0, 2.0, 4.0, 8.0, 10.0)]
    files, _ = write_slices(tmp_path, 5, positions=positions)
    refused(tmp_path, "missing slice", files[2].name, files[3].name, "4 mm", "1 slice")


def test_refuses_non_uniform_spacing(tmp_path):
    positions = [[0.0, 0.0, z] for z in (0.0, 2.0, 4.0, 5.0, 7.0)]
    files, _ = write_slices(tmp_path, 5, positions=positions)
    refused(tmp_path, "non-uniform", files[2].name, files[3].name)


def test_spacing_tolerance_is_relative(tmp_path):
    positions = [[0.0, 0.0, z] for z in (0.0, 2.0, 4.0, 6.03, 8.0)]
    write_slices(tmp_path, 5, positions=positions)
    assert dicom_read.read_dicom_series(tmp_path, spacing_tolerance=0.05).spacing[0] == pytest.approx(2.0)
    refused(tmp_path, "non-uniform", spacing_tolerance=0.01)


def test_refuses_gantry_tilt(tmp_path):
    shear = np.tan(np.radians(15.0)) * 2.0  # positions drift along y as z grows: a 15 degree tilt
    positions = [[0.0, round(k * shear, 6), 2.0 * k] for k in range(4)]
    write_slices(tmp_path, 4, positions=positions)
    refused(tmp_path, "gantry tilt", "15.00 deg")


def test_refuses_different_rows(tmp_path):
    files, _ = write_slices(tmp_path, 3)
    write_slices(
        tmp_path / "x",
        1,
        rows=7,
        positions=[[-10.0, 20.0, 11.0]],
        series_uid=str(pydicom.dcmread(files[0]).SeriesInstanceUID),
    )
    refused(tmp_path, "Rows/Columns", "(7, 5)", "(6, 5)")


def test_refuses_different_pixel_spacing(tmp_path):
    files, _ = write_slices(tmp_path, 3)
    edit(files[2], PixelSpacing=["0.6", "0.75"])
    refused(tmp_path, files[2].name, "PixelSpacing")


def test_refuses_different_orientation(tmp_path):
    files, _ = write_slices(tmp_path, 3)
    edit(files[1], ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])
    refused(tmp_path, files[1].name, "ImageOrientationPatient")


def test_refuses_zero_slope(tmp_path):
    files, _ = write_slices(tmp_path, 3)
    edit(files[1], RescaleSlope="0")
    refused(tmp_path, files[1].name, "RescaleSlope")


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_refuses_non_finite_intercept(tmp_path):
    files, _ = write_slices(tmp_path, 3)
    edit(files[0], RescaleIntercept="NaN")
    refused(tmp_path, files[0].name, "RescaleIntercept")


def test_refuses_single_slice(tmp_path):
    write_slices(tmp_path, 1)
    refused(tmp_path, "at least 2 slices")


def test_refuses_missing_position(tmp_path):
    files, _ = write_slices(tmp_path, 3)
    edit(files[1], ImagePositionPatient=None)
    refused(tmp_path, files[1].name, "ImagePositionPatient")


# --- real data: JPEG 2000 lossless, 20 slices ------------------------------------------------------


def _sitk_read(folder: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.realdata
def test_real_series_matches_simpleitk(data_root):
    folder = data_root / REAL_SERIES
    vol = dicom_read.read_dicom_series(folder)
    assert vol.shape == (20, 512, 512)
    assert vol.spacing == pytest.approx((2.0, 0.977, 0.977), abs=1e-3)
    assert vol.slice_thickness_mm == pytest.approx(3.0)
    assert "JPEG 2000" in vol.meta["transfer_syntax_name"]
    image = _sitk_read(folder)
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(image).astype(np.float32))
    np.testing.assert_allclose(vol.origin, image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction, np.reshape(image.GetDirection(), (3, 3)), atol=1e-4)
    np.testing.assert_allclose(vol.spacing[::-1], image.GetSpacing(), atol=1e-4)


@pytest.mark.realdata
def test_real_series_under_shuffled_names(data_root, tmp_path):
    folder = data_root / REAL_SERIES
    files = sorted(folder.iterdir())
    rng = random.Random(7)
    names = [f"{rng.getrandbits(48):012x}" for _ in files]
    rng.shuffle(files)
    for src, name in zip(files, names, strict=True):
        shutil.copy(src, tmp_path / name)
    expected = dicom_read.read_dicom_series(folder, workers=1)  # in-process decode: the reference
    got = dicom_read.read_dicom_series(tmp_path)
    assert np.array_equal(got.array, expected.array)
    assert got.origin == expected.origin and got.spacing == expected.spacing
    np.testing.assert_array_equal(got.direction, expected.direction)


@pytest.mark.realdata
def test_real_corrupt_codestream_is_named(data_root, tmp_path):
    files = sorted((data_root / REAL_SERIES).iterdir())[:4]
    for src in files:
        shutil.copy(src, tmp_path / src.name)
    bad = tmp_path / files[2].name
    ds = pydicom.dcmread(bad)
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData)))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    ds.save_as(bad)
    for workers in (1, 2):
        refused(tmp_path, bad.name, "cannot decode", workers=workers)


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_real_truncated_compressed_file(data_root, tmp_path):
    files = sorted((data_root / REAL_SERIES).iterdir())[:3]
    for src in files:
        shutil.copy(src, tmp_path / src.name)
    bad = tmp_path / files[0].name
    bad.write_bytes(bad.read_bytes()[:-5000])
    refused(tmp_path, bad.name, "truncated")


# --- files beside a series: skipped by name, or refused by name (issue 11) ------------------------


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize(
    "content", [b"", b"\x00" * 300, bytes(np.random.default_rng(1).integers(0, 256, 500, np.uint8))]
)
def test_a_corrupt_slice_file_is_refused_by_name_wherever_it_sits(tmp_path, where, content):
    files, _ = write_slices(tmp_path, 5)
    victim = {"first": files[0], "middle": files[2], "last": files[-1]}[where]
    victim.write_bytes(content)
    message = refused(tmp_path, victim.name)
    assert ("empty file" in message) == (content == b"")


def test_clearly_non_image_files_are_skipped_and_listed(tmp_path):
    _, stored = write_slices(tmp_path, 4)
    for name in ("README", "notes.txt", "scan.json", "preview.png", ".DS_Store", ".img000.dcm.x1y2.tmp"):
        (tmp_path / name).write_bytes(b"not an image")
    vol = dicom_read.read_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.array, stored.astype(np.float32))
    skipped = {entry["file"] for entry in vol.meta["skipped_files"]}
    assert skipped == {"README", "notes.txt", "scan.json", "preview.png", ".DS_Store", ".img000.dcm.x1y2.tmp"}


def test_an_unknown_file_beside_the_series_is_refused_by_name(tmp_path):
    write_slices(tmp_path, 4)
    (tmp_path / "IM0007").write_bytes(b"garbage that is not dicom" * 10)
    refused(tmp_path, "IM0007", "not a DICOM file")


def test_legacy_files_without_the_preamble_are_read(tmp_path):
    files, stored = write_slices(tmp_path, 3)
    for path in files:  # rewrite each slice without the 128-byte preamble, 'DICM' prefix and file meta
        ds = pydicom.dcmread(path)
        ds.preamble, ds.file_meta = None, FileMetaDataset()
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert b"DICM" not in path.read_bytes()[:200]
    vol = dicom_read.read_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.array, stored.astype(np.float32))
    assert vol.meta["skipped_files"] == []


def test_info_names_a_corrupt_first_slice_and_exits_2(tmp_path, capsys):
    from ctlib import cli

    files, _ = write_slices(tmp_path, 4)
    files[0].write_bytes(b"\x00" * 64)
    assert cli.main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and files[0].name in err


def test_info_lists_the_files_it_skipped(tmp_path, capsys):
    from ctlib import cli

    write_slices(tmp_path, 3)
    (tmp_path / "README.txt").write_text("about this series")
    assert cli.main(["info", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"][0] == 3
    assert info["skipped_files"] == [{"file": "README.txt", "reason": "not an image (by name)"}]
