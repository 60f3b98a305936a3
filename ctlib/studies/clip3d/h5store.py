"""One HDF5 file per split of preprocessed CT-CLIP studies (volumes, labels, reports, provenance).

Layout (``h5py``): ``volumes`` uint8 ``(N, D, H, W)``, one gzip chunk per volume; ``volume_names``,
``patient_ids``, ``findings_text``, ``impressions_text``, ``rescale_verdict`` (UTF-8 strings, ``(N,)``);
``labels`` float32 ``(N, 18)`` (NaN where a study has no label row) with the finding names in its
``findings`` attribute; ``spacing_mm`` ``(N,)``; ``source_shape`` and ``source_spacing_mm`` ``(N, 3)``;
``air_hu`` ``(N,)``. File attributes record the uint8 mapping, the orientation, the target shape and
the format version. The file is written to a temporary sibling and renamed: a failed or killed
preprocessing leaves no half-written split.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import h5py
import numpy as np

from ctlib.atomic import atomic_path
from ctlib.errors import CTInputError
from ctlib.io.volume import Volume
from ctlib.studies.clip3d import findings as findings_mod
from ctlib.studies.clip3d import preprocess

FORMAT = "ctlib.clip3d.h5/1"
TEXT_FIELDS = ("volume_names", "patient_ids", "findings_text", "impressions_text", "rescale_verdict")
_STR = h5py.string_dtype(encoding="utf-8")


@dataclasses.dataclass
class Study:
    """One study to store: how to load its volume, its ids, report text and 0/1 labels (or NaN)."""

    volume_name: str
    patient_id: str
    load: Callable[[], Volume]
    source: str
    labels: np.ndarray
    findings_text: str = ""
    impressions_text: str = ""


def write_split(
    path: str | os.PathLike,
    studies: Iterable[Study],
    target_shape: tuple[int, int, int],
    *,
    findings: tuple[str, ...] = findings_mod.FINDINGS,
    on_double_rescale: str = "refuse",
    progress: Callable[[int, Study, preprocess.PreparedVolume], None] | None = None,
) -> dict[str, int]:
    """Preprocess every study (``preprocess.prepare_volume``) into one HDF5 file, atomically.

    ``on_double_rescale``: ``"refuse"`` raises naming the volume, ``"flag"`` stores it with its verdict.
    Returns the count of each rescale verdict.
    """
    if on_double_rescale not in ("refuse", "flag"):
        raise ValueError(f"on_double_rescale must be 'refuse' or 'flag', got {on_double_rescale!r}")
    studies = list(studies)
    if not studies:
        raise ValueError(f"{os.fspath(path)}: no studies to write")
    names = [s.volume_name for s in studies]
    if len(set(names)) != len(names):
        raise ValueError(f"{os.fspath(path)}: duplicate volume names")
    n, target = len(studies), tuple(int(t) for t in target_shape)
    counts = {"ok": 0, "double_rescale": 0, "missing_rescale": 0}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(
            format=FORMAT,
            uint8_mapping=preprocess.UINT8_MAPPING,
            hu_clip=[preprocess.HU_MIN, preprocess.HU_MAX],
            orientation=f"{preprocess.ORIENTATION} (array axes z, y, x)",
            target_shape=list(target),
        )
        volumes = f.create_dataset(
            "volumes",
            (n, *target),
            dtype=np.uint8,
            chunks=(1, *target),
            compression="gzip",
            compression_opts=4,
        )
        labels = f.create_dataset("labels", (n, len(findings)), dtype=np.float32)
        labels.attrs["findings"] = json.dumps(list(findings))
        spacing = f.create_dataset("spacing_mm", (n,), dtype=np.float32)
        air = f.create_dataset("air_hu", (n,), dtype=np.float32)
        source_shape = f.create_dataset("source_shape", (n, 3), dtype=np.int32)
        source_spacing = f.create_dataset("source_spacing_mm", (n, 3), dtype=np.float32)
        verdicts = []
        for i, study in enumerate(studies):
            prepared = preprocess.prepare_volume(study.load(), target, study.source)
            if prepared.rescale.verdict == "double_rescale" and on_double_rescale == "refuse":
                raise CTInputError(study.source, prepared.rescale.describe())
            row = np.asarray(study.labels, dtype=np.float32).reshape(-1)
            if row.shape != (len(findings),):
                raise ValueError(f"{study.source}: {row.size} labels, expected {len(findings)}")
            volumes[i] = prepared.values
            labels[i] = row
            spacing[i] = prepared.spacing_mm
            air[i] = prepared.rescale.air_hu
            source_shape[i] = prepared.source_shape
            source_spacing[i] = prepared.source_spacing_mm
            verdicts.append(prepared.rescale.verdict)
            counts[prepared.rescale.verdict] += 1
            if progress is not None:
                progress(i, study, prepared)
        text = {
            "volume_names": names,
            "patient_ids": [s.patient_id for s in studies],
            "findings_text": [s.findings_text for s in studies],
            "impressions_text": [s.impressions_text for s in studies],
            "rescale_verdict": verdicts,
        }
        for key, values in text.items():
            f.create_dataset(key, data=np.array(values, dtype=object), dtype=_STR)
    return counts


class SplitFile:
    """Read access to a split written by ``write_split`` (volumes read lazily, one at a time)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise CTInputError(self.path, f"not a readable HDF5 file ({err})") from None
        if self._file.attrs.get("format") != FORMAT:
            self._file.close()
            raise CTInputError(self.path, f"not a clip3d split (format {self._file.attrs.get('format')!r})")
        self.findings = tuple(json.loads(self._file["labels"].attrs["findings"]))
        self.labels = self._file["labels"][...]
        self.spacing_mm = self._file["spacing_mm"][...]
        for key in TEXT_FIELDS:
            setattr(self, key, [v.decode() if isinstance(v, bytes) else str(v) for v in self._file[key][...]])

    def __len__(self) -> int:
        return int(self._file["volumes"].shape[0])

    def volume_uint8(self, index: int) -> np.ndarray:
        """The stored uint8 ``(D, H, W)`` volume ``index``."""
        return self._file["volumes"][index]

    def volumes_uint8(self) -> np.ndarray:
        """Every stored volume, ``(N, D, H, W)`` uint8, in one read."""
        return self._file["volumes"][...]

    def volume_hu(self, index: int) -> np.ndarray:
        """Volume ``index`` back in HU (float32, ``preprocess.uint8_to_hu``)."""
        return preprocess.uint8_to_hu(self.volume_uint8(index))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SplitFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
