"""One entry point that reads a CT volume from a DICOM folder, a NIfTI file or an OpenKBP patient."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ctlib.errors import CTInputError
from ctlib.io import dicom_read, nifti, openkbp
from ctlib.io.volume import Volume

Format = Literal["dicom", "nifti", "openkbp"]
NIFTI_SUFFIXES = nifti.NIFTI_SUFFIXES


def detect_format(path: str | os.PathLike) -> Format:
    """Name the format of ``path`` from its layout; raise ``CTInputError`` when it is none of ours."""
    path = Path(path)
    if not path.exists():
        raise CTInputError(path, "no such file or folder")
    if path.is_dir():
        if openkbp.is_openkbp_folder(path):
            return "openkbp"
        return "dicom"
    if path.name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if path.suffix == ".npz":
        return "openkbp"
    raise CTInputError(
        path, "unknown format: expected a DICOM folder, a .nii/.nii.gz file, or an OpenKBP .npz or CSV folder"
    )


def read_volume(path: str | os.PathLike, *, series_uid: str | None = None) -> Volume:
    """Read the CT volume at ``path`` (format detected by ``detect_format``) in HU."""
    kind = detect_format(path)
    if kind == "dicom":
        return dicom_read.read_dicom_series(path, series_uid=series_uid)
    if kind == "nifti":
        return nifti.read_nifti(path)
    return openkbp.read_openkbp(path).ct
