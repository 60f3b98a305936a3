"""Decoding through GDCM itself where pydicom's GDCM plugin declines: JPEG Extended (process 2 & 4) with
12-bit samples, which pydicom decodes only through pylibjpeg-libjpeg (GPL-3, so not a ctlib dependency).

GDCM (BSD) ships an IJG libjpeg built for 8, 12 and 16 bits; ``gdcm.ImageReader`` decodes the frame and
returns its bytes, which are laid out like native pixel data (PS3.5 8.2.1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ctlib.errors import CTInputError


def decode(path: Path, ds: Dataset) -> np.ndarray:
    """The single frame of ``path`` as a ``(Rows, Columns)`` array of its stored values."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise CTInputError(path, "GDCM cannot read this file's pixel data")
    image = reader.GetImage()
    raw = image.GetBuffer().encode("utf-8", "surrogateescape")  # GDCM hands bytes over as a str
    rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    dtype = np.dtype(f"{'i' if int(ds.PixelRepresentation) else 'u'}{bits // 8}").newbyteorder("<")
    expected = rows * cols * dtype.itemsize
    if len(raw) != expected:
        raise CTInputError(path, f"GDCM decoded {len(raw)} bytes, Rows x Columns need {expected}")
    stored = np.frombuffer(raw, dtype=dtype).reshape(rows, cols)
    bits_stored = int(ds.get("BitsStored", bits))
    if dtype.kind == "i" and bits_stored < bits:  # sign-extend from BitsStored
        shift = bits - bits_stored
        stored = (stored << shift) >> shift
    return stored.astype(dtype.newbyteorder("="))


def applies(ds: Dataset, error: Exception) -> bool:
    """Whether a pydicom decoding failure is one GDCM can take over: JPEG Extended with 12-bit samples."""
    import pydicom

    syntax = ds.file_meta.get("TransferSyntaxUID")
    return syntax == pydicom.uid.JPEGExtended12Bit and int(ds.get("BitsStored", 0) or 0) > 8
