"""Series checks before decoding (issue 11): the odd file is named wherever it sits, pixel data sizes are
checked before the volume is allocated, PixelSpacing must be positive, and a missing decoder is named."""

from __future__ import annotations

import subprocess
import sys

import pydicom
import pytest
from test_dicom_read import edit, refused, write_slices

from ctlib.io import dicom_checks, dicom_read


@pytest.mark.parametrize("odd", [0, 2, 4])
def test_odd_rows_are_named_in_any_position(tmp_path, odd):
    """Before: the first file was the reference, so an odd FIRST file blamed its neighbour."""
    files, _ = write_slices(tmp_path, 5)
    ds = pydicom.dcmread(files[odd])
    ds.Rows = 7
    ds.PixelData = bytes(7 * 5 * 2)
    ds.save_as(files[odd])
    message = refused(tmp_path, files[odd].name, "Rows/Columns (7, 5) differ from (6, 5) of 4 other slice(s)")
    assert message.startswith(str(files[odd]))


@pytest.mark.parametrize("odd", [0, 3])
def test_short_pixel_data_is_named_before_allocating(tmp_path, odd):
    files, _ = write_slices(tmp_path, 4)
    ds = pydicom.dcmread(files[odd])
    ds.PixelData = ds.PixelData[:20]
    ds.save_as(files[odd])
    message = refused(tmp_path, "pixel data holds 20 bytes", "need 60")
    assert message.startswith(str(files[odd]))


def test_a_huge_rows_columns_claim_costs_no_memory(tmp_path):
    """Every slice claims 12000 x 12000 pixels but holds 60 bytes: refused without allocating 1.7 GB."""
    files, _ = write_slices(tmp_path, 3)
    for file in files:
        edit(file, Rows=12000, Columns=12000)
    code = (
        "import resource; from ctlib.io import dicom_read\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        f"    dicom_read.read_dicom_series({str(tmp_path)!r})\n"
        "except Exception as err:\n"
        "    print(err)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    message, grown_mb = out.strip().splitlines()
    assert files[0].name in message and "pixel data holds 60 bytes" in message
    assert int(grown_mb) < 100


@pytest.mark.parametrize("spacing", [["0", "0.75"], ["-0.5", "0.75"], ["0.5", "nan"]])
def test_pixel_spacing_must_be_positive_and_names_the_file(tmp_path, spacing):
    """Before: PixelSpacing 0 failed later, in Volume, with a message that named no file."""
    files, _ = write_slices(tmp_path, 3)
    for file in files:
        edit(file, PixelSpacing=spacing)
    message = refused(tmp_path, "PixelSpacing")
    assert message.startswith(str(tmp_path))


def test_missing_decoder_is_named_with_the_transfer_syntax(tmp_path, monkeypatch):
    files, _ = write_slices(tmp_path, 3, rows=16, cols=16)
    for file in files:
        ds = pydicom.dcmread(file)
        ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
        ds.save_as(file)
    assert dicom_read.read_dicom_series(tmp_path).shape == (3, 16, 16)

    class Unavailable:
        is_available = False

    monkeypatch.setattr(dicom_checks.pydicom.pixels, "get_decoder", lambda syntax: Unavailable())
    refused(tmp_path, files[0].name, "no decoder installed for transfer syntax RLE Lossless")
