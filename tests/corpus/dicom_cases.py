"""DICOM cases: small axial CT series (5 slices of 32 x 32) built with pydicom, then broken one way each.

Files are ``IM0000.dcm`` ... ``IM0004.dcm`` in slice order, so a refusal must name the file at fault.
HU = stored + RescaleIntercept (-1024). Compressed series are encoded by pydicom (RLE, JPEG-LS, JPEG
2000) or GDCM (JPEG Lossless, JPEG baseline) and must decode to the same voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from corpus.case import Case, Ctx, case, info, loads, refused

N, ROWS, COLS, DZ = 5, 32, 32, 2.0
SPACING = [DZ, 0.5, 0.75]  # (dz, dy, dx): PixelSpacing is (row spacing dy, column spacing dx)
ORIGIN = [-10.0, 20.0, 5.0]
INTERCEPT = -1024


def name(k: int) -> str:
    """File name of slice ``k``."""
    return f"IM{k:04d}.dcm"


def slice_dataset(
    k: int, stored: np.ndarray, series_uid: str, *, modality: str = "CT", position: list[float] | None = None
) -> Dataset:
    """One uncompressed explicit-VR little-endian CT slice holding ``stored`` (int16 or uint8)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesDescription = "corpus"
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = position or [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * DZ]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.75]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = stored.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(stored.dtype.kind == "i")
    ds.RescaleSlope, ds.RescaleIntercept = 1, INTERCEPT
    ds.PixelData = stored.tobytes()
    return ds


def write_series(
    folder: Path,
    n: int = N,
    *,
    seed: int = 0,
    modality: str = "CT",
    series_uid: str | None = None,
    first: int = 0,
    dtype: str = "int16",
) -> tuple[list[Path], np.ndarray]:
    """``n`` slices ``IM<first>.dcm`` ...; returns the files and the HU volume ``(z, y, x)``."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    high = 255 if dtype == "uint8" else 3000
    stored = rng.integers(0, high + 1, size=(n, ROWS, COLS)).astype(dtype)
    files = []
    for k in range(n):
        path = folder / name(first + k)
        slice_dataset(first + k, stored[k], series_uid, modality=modality).save_as(
            path, enforce_file_format=True
        )
        files.append(path)
    return files, stored.astype(np.float32) + INTERCEPT


def edit(path: Path, **changes: object) -> None:
    """Rewrite header elements of one file (``None`` deletes the element)."""
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


def facts(hu: np.ndarray, n: int | None = None) -> dict:
    """The ``ctlib info`` facts of a series written by ``write_series``."""
    return {
        "format": "dicom",
        "shape": [n or hu.shape[0], ROWS, COLS],
        "spacing_mm": SPACING,
        "origin_lps_mm": ORIGIN,
        "hu_min": float(hu.min()),
        "hu_max": float(hu.max()),
        "modality": "CT",
    }


def loads_exactly(c: Ctx, hu: np.ndarray, note: str, *extra: str, **kw: object) -> Case:
    """``ctlib info`` loads the case folder with the facts and voxels of ``hu``."""
    series = extra[1] if extra[:1] == ("--series",) else None
    return loads(
        info(c.rel(c.dir), *extra),
        facts(hu),
        note,
        array=c.expect_array(hu),
        array_read=[c.rel(c.dir), series],
        **kw,
    )


def refused_here(c: Ctx, names: list[str], keywords: list[str], note: str, **kw: object) -> Case:
    """``ctlib info`` on the case folder is refused naming ``names``."""
    return refused(info(c.rel(c.dir)), names, keywords, note, **kw)


# --- loads -----------------------------------------------------------------------------------------------


@case("dicom")
def case_valid(c: Ctx) -> Case:
    _, hu = write_series(c.dir)
    return loads_exactly(c, hu, "a clean uncompressed series", skipped=[])


@case("dicom")
def case_shuffled_names(c: Ctx) -> Case:
    files, hu = write_series(c.dir)
    for k, path in enumerate(files):  # names no longer follow the slice order
        path.rename(c.dir / f"x{(k * 3) % N}_{k}.dcm")
    return loads_exactly(c, hu, "file names in another order than the slices: sorted by position")


@case("dicom")
def case_nested_subfolder(c: Ctx) -> Case:
    _, hu = write_series(c.dir / "study" / "series")
    return loads_exactly(c, hu, "the series two folders down")


@case("dicom")
def case_files_without_suffix(c: Ctx) -> Case:
    files, hu = write_series(c.dir)
    for path in files:
        path.rename(path.with_suffix(""))
    return loads_exactly(c, hu, "slices named IM0000 ... without .dcm")


@case("dicom")
def case_junk_beside(c: Ctx) -> Case:
    _, hu = write_series(c.dir)
    junk = {
        "README": b"about this export\n",
        ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(64),
        "info.json": b'{"patient": "anon"}',
        "report.pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        "notes.txt": b"scanner notes",
        "thumbnail.png": b"\x89PNG\r\n\x1a\n" + bytes(32),
        "DICOMDIR": b"not really a DICOMDIR",
    }
    for file, content in junk.items():
        (c.dir / file).write_bytes(content)
    return loads_exactly(
        c, hu, "README, .DS_Store, JSON, PDF, text, PNG and DICOMDIR beside the slices", skipped=sorted(junk)
    )


@case("dicom")
def case_our_temporary_beside(c: Ctx) -> Case:
    _, hu = write_series(c.dir)
    (c.dir / f".{name(5)}.k3j2h1.tmp").write_bytes(b"half a slice")
    return loads_exactly(
        c,
        hu,
        "a complete series with the hidden temporary of a killed write beside it",
        skipped=[f".{name(5)}.k3j2h1.tmp"],
    )


def strip_preamble(path: Path) -> None:
    """Rewrite ``path`` as a pre-Part 10 file: no preamble, no 'DICM', no file meta, implicit VR LE."""
    ds = pydicom.dcmread(path)
    ds.preamble, ds.file_meta = None, FileMetaDataset()
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)


@case("dicom")
def case_legacy_no_preamble(c: Ctx) -> Case:
    files, hu = write_series(c.dir)
    for path in files:
        strip_preamble(path)
    return loads_exactly(c, hu, "every slice without the 128-byte preamble and DICM prefix")


@case("dicom")
def case_legacy_one_file(c: Ctx) -> Case:
    files, hu = write_series(c.dir)
    strip_preamble(files[2])
    return loads_exactly(c, hu, "one slice in the middle without the preamble")


@case("dicom")
def case_mixed_series_pick(c: Ctx) -> Case:
    uid = generate_uid()
    _, hu = write_series(c.dir, series_uid=uid)
    write_series(c.dir, 3, seed=1, first=10)
    return loads_exactly(c, hu, "two series in one folder, one picked with --series", "--series", uid)


def recode(files: list[Path], syntax: str) -> None:
    """Re-encode every file in ``syntax`` (pydicom's encoders, or GDCM for the JPEG processes)."""
    for path in files:
        ds = pydicom.dcmread(path)
        if syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
            if syntax == ExplicitVRBigEndian:
                ds.PixelData = ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder(">")).tobytes()
            fresh = Dataset(ds)  # a plain Dataset: no original encoding to keep
            fresh.file_meta = ds.file_meta
            fresh.file_meta.TransferSyntaxUID = syntax
            fresh.save_as(path, enforce_file_format=True)
        elif syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
            ds.compress(syntax)
            ds.save_as(path, enforce_file_format=True)
        else:
            gdcm_recode(path, syntax)


def gdcm_recode(path: Path, syntax: str) -> None:
    """Re-encode ``path`` in place with GDCM (JPEG Lossless and baseline, which pydicom cannot encode)."""
    import gdcm

    codes = {
        "1.2.840.10008.1.2.4.70": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
        "1.2.840.10008.1.2.4.57": gdcm.TransferSyntax.JPEGLosslessProcess14,
        "1.2.840.10008.1.2.4.50": gdcm.TransferSyntax.JPEGBaselineProcess1,
    }
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(codes[syntax]))
    change.SetInput(reader.GetImage())
    assert change.Change(), syntax
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), path
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax


def compressed(c: Ctx, syntax: str, note: str) -> Case:
    files, hu = write_series(c.dir)
    recode(files, syntax)
    return loads_exactly(c, hu, note, timeout_s=60.0)


@case("dicom")
def case_rle_lossless(c: Ctx) -> Case:
    return compressed(c, RLELossless, "RLE Lossless series")


@case("dicom")
def case_jpeg_ls_lossless(c: Ctx) -> Case:
    return compressed(c, JPEGLSLossless, "JPEG-LS lossless series")


@case("dicom")
def case_jpeg_lossless_sv1(c: Ctx) -> Case:
    return compressed(c, "1.2.840.10008.1.2.4.70", "JPEG Lossless process 14 selection value 1 (GDCM)")


@case("dicom")
def case_jpeg_lossless_p14(c: Ctx) -> Case:
    return compressed(c, "1.2.840.10008.1.2.4.57", "JPEG Lossless process 14 (GDCM)")


@case("dicom")
def case_jpeg2000_lossless(c: Ctx) -> Case:
    return compressed(c, JPEG2000Lossless, "JPEG 2000 lossless series")


@case("dicom")
def case_deflated(c: Ctx) -> Case:
    return compressed(c, DeflatedExplicitVRLittleEndian, "Deflated explicit VR little endian series")


@case("dicom")
def case_big_endian(c: Ctx) -> Case:
    return compressed(c, ExplicitVRBigEndian, "explicit VR big endian (retired syntax) series")


@case("dicom")
def case_jpeg_baseline_8bit(c: Ctx) -> Case:
    files, _ = write_series(c.dir, dtype="uint8")
    recode(files, "1.2.840.10008.1.2.4.50")
    # lossy: the exact voxels are what the decoder gives, read here once per file
    hu = np.stack([pydicom.dcmread(p).pixel_array.astype(np.float32) + INTERCEPT for p in files])
    return loads_exactly(c, hu, "JPEG baseline (lossy, 8-bit) series: the decoder's voxels", timeout_s=60.0)


# --- refused: unreadable files ----------------------------------------------------------------------------


@case("dicom")
def case_random_bytes_first(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    files[0].write_bytes(np.random.default_rng(1).bytes(2000))
    return refused_here(
        c, [name(0)], ["not a DICOM", "not DICOM", "unreadable", "corrupt"], "the FIRST slice is random bytes"
    )


@case("dicom")
def case_zero_bytes_first(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    files[0].write_bytes(b"")
    return refused_here(c, [name(0)], ["empty", "0 bytes"], "the FIRST slice is a zero-byte file")


@case("dicom")
def case_random_bytes_middle(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    files[2].write_bytes(np.random.default_rng(2).bytes(2000))
    return refused_here(
        c, [name(2)], ["not a DICOM", "not DICOM", "unreadable", "corrupt"], "a middle slice is random bytes"
    )


@case("dicom")
def case_zero_bytes_last(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    files[-1].write_bytes(b"")
    return refused_here(c, [name(N - 1)], ["empty", "0 bytes"], "the LAST slice is a zero-byte file")


@case("dicom")
def case_header_cut_last(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    files[-1].write_bytes(files[-1].read_bytes()[:300])
    return refused_here(
        c, [name(N - 1)], ["truncated", "incomplete"], "the LAST slice is cut inside its header"
    )


@case("dicom")
def case_text_without_suffix(c: Ctx) -> Case:
    write_series(c.dir)
    (c.dir / "IM0005").write_text("this is not a slice\n" * 20)
    return refused_here(c, ["IM0005"], ["not a DICOM", "not DICOM"], "a text file named like a slice")


@case("dicom")
def case_truncated_pixel_data(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    files[2].write_bytes(files[2].read_bytes()[:-700])
    return refused_here(c, [name(2)], ["truncated"], "a middle slice cut inside its pixel data")


@case("dicom")
def case_short_pixel_data(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    edit(files[1], PixelData=bytes(100))
    return refused_here(
        c, [name(1)], ["pixel data"], "complete file whose PixelData is 100 bytes for 32 x 32"
    )


@case("dicom")
def case_huge_rows_columns_claim(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    for path in files:
        edit(path, Rows=65535, Columns=65535)
    return refused_here(
        c,
        ["IM000"],
        ["pixel data", "Rows"],
        "every slice claims 65535 x 65535 but carries 32 x 32: refused before allocating",
    )


@case("dicom")
def case_size_claim_every_slice(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    for path in files:
        edit(path, Rows=1024, Columns=1024)
    return refused_here(
        c, ["IM000"], ["pixel data"], "every slice claims a plausible 1024 x 1024 but carries 32 x 32"
    )


@case("dicom")
def case_odd_size_first(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    ds = pydicom.dcmread(files[0])
    ds.Rows, ds.Columns, ds.PixelData = 16, 16, np.zeros((16, 16), np.int16).tobytes()
    ds.save_as(files[0])
    return refused_here(
        c,
        [name(0)],
        ["Rows", "size", "geometry"],
        "the FIRST slice is 16 x 16, the others 32 x 32: the odd one is named (majority)",
    )


@case("dicom")
def case_odd_claim_first(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    edit(files[0], Rows=4096, Columns=4096)
    return refused_here(
        c,
        [name(0)],
        ["pixel data", "Rows", "size"],
        "the FIRST slice claims 4096 x 4096 with 32 x 32 pixel data",
    )


@case("dicom")
def case_no_pixel_data(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    edit(files[3], PixelData=None)
    return refused_here(c, [name(3)], ["pixel data"], "a slice without PixelData")


@case("dicom")
def case_rle_corrupt_frame(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    recode(files, RLELossless)
    ds = pydicom.dcmread(files[2])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:74]])  # the RLE header kept, its segments cut to 10 bytes
    ds.save_as(files[2])
    return refused_here(
        c, [name(2)], ["decode", "pixel data", "corrupt"], "one RLE frame cut short inside a complete file"
    )


# --- refused: geometry and header values ------------------------------------------------------------------


@case("dicom")
def case_pixel_spacing_zero(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    for path in files:
        edit(path, PixelSpacing=[0, 0])
    return refused_here(c, ["IM000"], ["PixelSpacing"], "PixelSpacing 0\\0 in every slice")


@case("dicom")
def case_pixel_spacing_negative(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    for path in files:
        edit(path, PixelSpacing=[-0.5, 0.75])
    return refused_here(c, ["IM000"], ["PixelSpacing"], "negative PixelSpacing in every slice")


@case("dicom")
def case_pixel_spacing_missing(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    edit(files[2], PixelSpacing=None)
    return refused_here(c, [name(2)], ["PixelSpacing"], "one slice without PixelSpacing")


@case("dicom")
def case_orientation_not_orthogonal(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    for path in files:
        edit(path, ImageOrientationPatient=[1, 0, 0, 1, 0, 0])
    return refused_here(c, ["IM000"], ["ImageOrientationPatient"], "row and column cosines equal")


@case("dicom")
def case_mixed_series(c: Ctx) -> Case:
    write_series(c.dir)
    write_series(c.dir, 3, seed=1, first=10)
    return refused_here(c, [c.dir.name], ["series"], "two series in one folder, none picked")


@case("dicom")
def case_duplicate_position(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    edit(files[3], ImagePositionPatient=[ORIGIN[0], ORIGIN[1], ORIGIN[2] + 2 * DZ])
    return refused_here(c, ["IM000"], ["duplicate"], "two slices at the same position")


@case("dicom")
def case_gantry_tilt(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    for k, path in enumerate(files):
        edit(path, ImagePositionPatient=[ORIGIN[0], ORIGIN[1] + 0.5 * k, ORIGIN[2] + k * DZ])
    return refused_here(c, ["IM000"], ["tilt"], "positions drift 0.5 mm in y per slice (14 deg tilt)")


@case("dicom")
def case_missing_slice(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    files[2].unlink()
    return refused_here(c, ["IM000"], ["missing"], "the middle slice is absent: a 4 mm gap")


@case("dicom")
def case_nonuniform_spacing(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    for k, path in enumerate(files):
        edit(path, ImagePositionPatient=[ORIGIN[0], ORIGIN[1], ORIGIN[2] + [0, 2, 4, 7, 9][k]])
    return refused_here(c, ["IM000"], ["spacing"], "steps of 2, 2, 3, 2 mm")


@case("dicom")
def case_non_ct_modality(c: Ctx) -> Case:
    write_series(c.dir, modality="MR")
    return refused_here(c, ["IM000"], ["modality"], "an MR series")


@case("dicom")
def case_rescale_slope_zero(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    edit(files[1], RescaleSlope=0)
    return refused_here(c, [name(1)], ["rescale"], "RescaleSlope 0 in one slice")


@case("dicom")
def case_multiframe(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    ds = pydicom.dcmread(files[1])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(files[1])
    return refused_here(c, [name(1)], ["multi-frame", "frames"], "a two-frame file among single slices")


@case("dicom")
def case_single_slice(c: Ctx) -> Case:
    write_series(c.dir, 1)
    return refused_here(c, ["IM000"], ["single", "2 slices", "one slice"], "a series of one slice")


@case("dicom")
def case_empty_folder(c: Ctx) -> Case:
    return refused_here(c, [c.dir.name], ["empty", "no DICOM"], "an empty folder")


@case("dicom")
def case_only_junk(c: Ctx) -> Case:
    (c.dir / "README.txt").write_text("nothing here")
    (c.dir / ".DS_Store").write_bytes(bytes(16))
    return refused_here(c, [c.dir.name], ["no DICOM"], "a folder with a README and a .DS_Store only")


@case("dicom")
def case_one_file_given(c: Ctx) -> Case:
    files, _ = write_series(c.dir)
    for path in files[1:]:
        path.unlink()
    return refused(
        info(c.rel(files[0])),
        [name(0)],
        ["format", "single", "folder"],
        "a single .dcm file instead of the series folder",
    )
