"""The CT-RATE folder layout (Hamamci et al. 2024): volumes, metadata, reports and finding labels.

    <root>/dataset/{train,valid}/<split>_<patient>/<split>_<patient>_<scan>/<split>_<patient>_<scan>_<recon>.nii.gz
    <root>/dataset/metadata/{train,validation}_metadata.csv            VolumeName, RescaleSlope,
                                                                        RescaleIntercept, XYSpacing, ZSpacing
    <root>/dataset/radiology_text_reports/{train,validation}_reports.csv  VolumeName, Findings_EN,
                                                                        Impressions_EN (text may be empty)
    <root>/dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv  VolumeName + the 18 findings

Patients are the ``<split>_<patient>`` prefix of a volume name (several scans and reconstructions per
patient). Rescaling: the v1 NIfTI files store raw values and the metadata holds slope and intercept;
the v2 files are already in HU, and applying the metadata again shifts air to about -2000 HU (a fault
of the released CT-CLIP preprocessing). ``load_volume(..., rescale="auto")`` therefore applies the
metadata only when the stored values read as raw (``preprocess.rescale_check``) and refuses a volume
whose air level is already doubled.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ctlib.errors import CTInputError
from ctlib.io import nifti
from ctlib.io.volume import Volume
from ctlib.studies.clip3d import findings as findings_mod
from ctlib.studies.clip3d import h5store, preprocess

SPLITS = ("train", "valid")
_TABLES = {
    "metadata": (
        "metadata/{long}_metadata.csv",
        ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"),
    ),
    "reports": ("radiology_text_reports/{long}_reports.csv", ("VolumeName", "Findings_EN", "Impressions_EN")),
    "labels": ("multi_abnormality_labels/{short}_predicted_labels.csv", ("VolumeName",)),
}
_NAME = re.compile(r"^(?P<patient>(?:train|valid)_\d+)_(?P<scan>[a-z]+)_(?P<recon>\d+)\.nii(?:\.gz)?$")
Rescale = Literal["auto", "metadata", "none"]


@dataclasses.dataclass(frozen=True)
class CtRateStudy:
    """One CT-RATE volume with its metadata, report text and 0/1 labels (NaN when unlabelled)."""

    volume_name: str
    patient_id: str
    path: Path
    rescale_slope: float
    rescale_intercept: float
    spacing_mm: tuple[float, float, float]  # (z, y, x) from the metadata
    findings_text: str
    impressions_text: str
    labels: np.ndarray


def patient_of(volume_name: str) -> str:
    """``"train_12_a_1.nii.gz"`` -> ``"train_12"`` (the patient; scans ``a``, ``b``... are its studies)."""
    match = _NAME.match(Path(str(volume_name)).name)
    if match is None:
        raise ValueError(
            f"{volume_name!r} is not a CT-RATE volume name (<split>_<patient>_<scan>_<recon>.nii.gz)"
        )
    return match["patient"]


def volume_path(root: str | os.PathLike, volume_name: str) -> Path:
    """Where a CT-RATE volume lives under ``root``."""
    patient = patient_of(volume_name)
    scan = Path(volume_name).name.split(".nii")[0].rsplit("_", 1)[0]
    return Path(root) / "dataset" / patient.split("_")[0] / patient / scan / volume_name


def read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """Read a CT-RATE CSV; refuse a missing file, missing columns or duplicate volume names, by file."""
    if not path.is_file():
        raise CTInputError(path, "no such CT-RATE table")
    try:
        table = pd.read_csv(path, dtype={"VolumeName": str}, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise CTInputError(path, f"not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise CTInputError(path, f"column(s) {missing} missing; it has {list(table.columns)[:12]}")
    duplicated = table["VolumeName"][table["VolumeName"].duplicated()].tolist()
    if duplicated:
        raise CTInputError(path, f"VolumeName repeated: {duplicated[:3]}")
    return table.set_index("VolumeName", drop=False)


def table_path(root: str | os.PathLike, split: str, kind: str) -> Path:
    """The metadata / reports / labels CSV of ``split`` (``"train"`` or ``"valid"``)."""
    if split not in SPLITS:
        raise ValueError(f"CT-RATE split must be one of {SPLITS}, got {split!r}")
    pattern = _TABLES[kind][0]
    return (
        Path(root)
        / "dataset"
        / pattern.format(long="train" if split == "train" else "validation", short=split)
    )


def _spacing(row: pd.Series, source: Path) -> tuple[float, float, float]:
    try:
        xy = [float(v) for v in re.findall(r"[-+0-9.eE]+", str(row["XYSpacing"]))]
        z = float(row["ZSpacing"])
    except ValueError:
        xy, z = [], float("nan")
    if len(xy) != 2 or not all(np.isfinite([*xy, z])) or min(*xy, z) <= 0:
        raise CTInputError(
            source, f"{row['VolumeName']}: spacing {row['XYSpacing']!r} / {row['ZSpacing']!r} unusable"
        )
    return (z, xy[0], xy[1])  # XYSpacing is DICOM PixelSpacing: [row spacing (y), column spacing (x)]


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def read_split(root: str | os.PathLike, split: str, *, require_labels: bool = True) -> list[CtRateStudy]:
    """Every volume of ``split`` listed in its metadata, joined with its report and labels by name.

    A volume with no report row gets empty text; one with no label row gets NaN labels (and is refused
    when ``require_labels``). Volumes are not opened here (see ``load_volume``).
    """
    tables = {kind: read_table(table_path(root, split, kind), _TABLES[kind][1]) for kind in _TABLES}
    labels_path = table_path(root, split, "labels")
    label_values = findings_mod.label_matrix(tables["labels"], labels_path)
    label_row = {name: i for i, name in enumerate(tables["labels"]["VolumeName"])}
    metadata_path = table_path(root, split, "metadata")
    studies = []
    for name, row in tables["metadata"].iterrows():
        if name not in label_row and require_labels:
            raise CTInputError(labels_path, f"no label row for {name}")
        report = tables["reports"].loc[name] if name in tables["reports"].index else None
        slope, intercept = float(row["RescaleSlope"]), float(row["RescaleIntercept"])
        if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
            raise CTInputError(
                metadata_path, f"{name}: rescale slope {slope} / intercept {intercept} unusable"
            )
        studies.append(
            CtRateStudy(
                volume_name=str(name),
                patient_id=patient_of(str(name)),
                path=volume_path(root, str(name)),
                rescale_slope=slope,
                rescale_intercept=intercept,
                spacing_mm=_spacing(row, metadata_path),
                findings_text=_text(None if report is None else report["Findings_EN"]),
                impressions_text=_text(None if report is None else report["Impressions_EN"]),
                labels=label_values[label_row[name]]
                if name in label_row
                else np.full(len(findings_mod.FINDINGS), np.nan, np.float32),
            )
        )
    return studies


def load_volume(
    study: CtRateStudy, *, rescale: Rescale = "auto", spacing_from_metadata: bool = True
) -> Volume:
    """Read a study's NIfTI in HU.

    ``rescale``: ``"auto"`` applies the metadata slope/intercept only when the stored values read as raw
    and refuses a volume already rescaled twice; ``"metadata"`` always applies it (v1 files);
    ``"none"`` never does (v2 files). The metadata spacing replaces the header's unless told otherwise.
    """
    if rescale not in ("auto", "metadata", "none"):
        raise ValueError(f"rescale must be 'auto', 'metadata' or 'none', got {rescale!r}")
    volume = nifti.read_nifti(study.path)
    array = volume.array
    if rescale == "metadata" or (
        rescale == "auto" and preprocess.rescale_check(array).verdict == "missing_rescale"
    ):
        array = array * np.float32(study.rescale_slope) + np.float32(study.rescale_intercept)
    check = preprocess.rescale_check(array)
    if check.verdict != "ok":
        raise CTInputError(study.path, f"{check.describe()} (rescale={rescale!r})")
    changes = {"spacing": study.spacing_mm} if spacing_from_metadata else {}
    out = volume.with_array(array.astype(np.float32), **changes)
    out.meta["rescale"] = rescale
    return out


def h5_studies(studies: list[CtRateStudy], *, rescale: Rescale = "auto") -> list[h5store.Study]:
    """CT-RATE studies as ``h5store.Study`` rows (volumes loaded lazily by ``load_volume``)."""
    return [
        h5store.Study(
            volume_name=s.volume_name,
            patient_id=s.patient_id,
            load=functools.partial(load_volume, s, rescale=rescale),
            source=str(s.path),
            labels=s.labels,
            findings_text=s.findings_text,
            impressions_text=s.impressions_text,
        )
        for s in studies
    ]
