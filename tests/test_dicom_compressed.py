"""Compressed DICOM series (issue 11): every transfer syntax pydicom decodes with the installed plugins
loads, exactly for the lossless ones.

The tests write small CT series in each syntax: RLE, JPEG-LS and JPEG 2000 through pydicom's encoders
(pydicom, pyjpegls, pylibjpeg-openjpeg), JPEG Lossless (process 14, with and without selection value
1), baseline (8 bit) and extended (12 bit) through GDCM. Before issue 11 only JPEG 2000 decoded: a JPEG
Lossless series, the most common compressed syntax of clinical exports, failed with "all plugins are
missing dependencies".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ctlib.io import dicom_read

gdcm = pytest.importorskip("gdcm")  # a dependency of ctlib: installed everywhere the tests run

SHAPE = (3, 64, 48)  # JPEG 2000 wants 32 pixels or more per side at its default 6 levels


def _series(folder: Path, *, bits: int, stored_bits: int, signed: bool, seed: int = 0) -> np.ndarray:
    """Three uncompressed CT slices with stored values spanning ``stored_bits``; returns the stored values."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    low, high = (-(2 ** (stored_bits - 1)), 2 ** (stored_bits - 1) - 1) if signed else (0, 2**stored_bits - 1)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(bits, signed)]
    smooth = np.linspace(low, high, SHAPE[1] * SHAPE[2]).reshape(SHAPE[1:])  # compressible, like CT
    noise = rng.integers(-20, 21, SHAPE)
    stored = np.clip(smooth[None] + noise, low, high).astype(dtype)
    series = generate_uid()
    for k in range(SHAPE[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, k + 1
        ds.ImagePositionPatient = [0, 0, 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.Rows, ds.Columns = SHAPE[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored_bits, stored_bits - 1
        ds.PixelRepresentation = int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = (1, 0) if signed else (1, -1024)
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"s{k}.dcm", enforce_file_format=True)
    return stored


def _pydicom_encode(folder: Path, syntax: str, **options) -> None:
    for file in sorted(folder.iterdir()):
        ds = pydicom.dcmread(file)
        ds.compress(pydicom.uid.UID(syntax), **options)
        ds.save_as(file)


def _gdcm_encode(folder: Path, syntax: str) -> None:
    code = {
        pydicom.uid.JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
        pydicom.uid.JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14,
        pydicom.uid.JPEGBaseline8Bit: gdcm.TransferSyntax.JPEGBaselineProcess1,
        pydicom.uid.JPEGExtended12Bit: gdcm.TransferSyntax.JPEGExtendedProcess2_4,
    }[syntax]
    for file in sorted(folder.iterdir()):
        reader = gdcm.ImageReader()
        reader.SetFileName(str(file))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(code))
        change.SetInput(reader.GetImage())
        assert change.Change(), f"GDCM could not encode {syntax}"
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(file))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()


# (transfer syntax, encoder, options, bits allocated, bits stored, signed, lossless)
CASES = [
    (pydicom.uid.RLELossless, "pydicom", {"encoding_plugin": "pydicom"}, 16, 16, True, True),
    (pydicom.uid.JPEGLSLossless, "pydicom", {}, 16, 16, True, True),
    (pydicom.uid.JPEGLSNearLossless, "pydicom", {"jls_error": 3}, 16, 12, False, False),
    (pydicom.uid.JPEG2000Lossless, "pydicom", {}, 16, 16, True, True),
    (pydicom.uid.JPEG2000, "pydicom", {"j2k_cr": [10]}, 16, 12, False, False),
    (pydicom.uid.JPEGLosslessSV1, "gdcm", {}, 16, 16, True, True),
    (pydicom.uid.JPEGLossless, "gdcm", {}, 16, 12, False, True),
    (pydicom.uid.JPEGBaseline8Bit, "gdcm", {}, 8, 8, False, False),
    (pydicom.uid.JPEGExtended12Bit, "gdcm", {}, 16, 12, False, False),
]


@pytest.mark.parametrize(
    ("syntax", "encoder", "options", "bits", "stored_bits", "signed", "lossless"),
    CASES,
    ids=[pydicom.uid.UID(c[0]).keyword for c in CASES],
)
def test_compressed_series_loads(tmp_path, syntax, encoder, options, bits, stored_bits, signed, lossless):
    folder = tmp_path / "series"
    stored = _series(folder, bits=bits, stored_bits=stored_bits, signed=signed)
    if encoder == "gdcm":
        _gdcm_encode(folder, syntax)
    else:
        _pydicom_encode(folder, syntax, **options)
    files = sorted(folder.iterdir())
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == syntax
    volume = dicom_read.read_dicom_series(folder, workers=1)
    assert volume.meta["transfer_syntax"] == syntax and volume.shape == SHAPE
    intercept = 0.0 if signed else -1024.0
    expected = stored.astype(np.float32) + intercept
    if syntax != pydicom.uid.JPEGExtended12Bit:  # pydicom decodes 12-bit JPEG only with GPL-3 libjpeg
        decoded = np.stack([pydicom.dcmread(f).pixel_array for f in files]).astype(np.float32) + intercept
        np.testing.assert_array_equal(volume.array, decoded)  # HU = what the decoder gives, rescaled
    if lossless:
        np.testing.assert_array_equal(volume.array, expected)
    else:  # lossy: close to the original, within 1% of the stored range on average
        assert np.abs(volume.array - expected).mean() < 0.01 * 2**stored_bits
    parallel = dicom_read.read_dicom_series(folder, workers=2)  # the forked decoders agree
    np.testing.assert_array_equal(parallel.array, volume.array)
