"""Find the CT volumes in a data folder: DICOM series folders, NIfTI files and OpenKBP patients.

Also the embedded demo set: synthetic phantoms plus the real chest CT that an installed package
ships (no download at run time).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctlib import paths
from ctlib.io import dicom_read, openkbp, reader
from ctlib.io.volume import Volume

# Label maps sit beside CT in the shared data; they are not CT volumes.
LABEL_MAP_PATTERNS = ("*seg*", "*mask*", "*label*")
OPENKBP_SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class VolumeSource:
    """Where one CT volume comes from; ``load()`` reads it."""

    volume_id: str
    patient_id: str
    format: str  # dicom | nifti | openkbp | phantom
    location: str  # path, or "phantom:<kind>:<seed>"
    fixed_split: str | None = None  # a split imposed by the source (OpenKBP's own)

    def load(self) -> Volume:
        """Read the volume (HU, with geometry)."""
        if self.format == "phantom":
            from ctlib.data import phantom

            _, kind, seed = self.location.split(":")
            return phantom.ct_phantom(seed=int(seed), kind=kind)
        return reader.read_volume(self.location)


def _volume_id(path: Path, root: Path) -> str:
    relative = path.relative_to(root).as_posix() if path != root else path.name
    relative = re.sub(r"(\.nii\.gz|\.nii|\.npz)$", "", relative)
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", relative)


def _is_label_map(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name.lower(), p) for p in patterns)


def _openkbp_split(path: Path) -> str | None:
    return path.parent.name if path.parent.name in OPENKBP_SPLITS else None


def discover(
    root: str | os.PathLike,
    *,
    formats: Sequence[str] = ("dicom", "nifti", "openkbp"),
    exclude: Sequence[str] = LABEL_MAP_PATTERNS,
) -> list[VolumeSource]:
    """All CT volumes below ``root``, sorted by id.

    A folder whose files are DICOM counts once per series it holds; ``*.nii(.gz)`` files are NIfTI
    (names matching ``exclude`` are label maps and skipped); ``*.npz`` files and challenge CSV folders
    are OpenKBP patients, which keep the challenge's own split.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    found: list[VolumeSource] = []
    for folder, subfolders, files in os.walk(root):
        folder_path = Path(folder)
        subfolders.sort()
        if "openkbp" in formats and openkbp.is_openkbp_folder(folder_path):
            found.append(_openkbp_source(folder_path, root))
            subfolders.clear()
            continue
        if "dicom" in formats and any(_looks_like_dicom(folder_path / f) for f in files):
            for series in dicom_read.list_series(folder_path):
                if series.modality != "CT":
                    continue
                vid = _volume_id(folder_path, root)
                found.append(VolumeSource(vid, vid, "dicom", str(folder_path)))
                break  # one series per folder is the layout of every source here
        for name in sorted(files):
            path = folder_path / name
            if (
                "nifti" in formats
                and name.endswith(reader.NIFTI_SUFFIXES)
                and not _is_label_map(name, exclude)
            ):
                vid = _volume_id(path, root)
                found.append(VolumeSource(vid, vid, "nifti", str(path)))
            elif "openkbp" in formats and name.endswith(".npz"):
                found.append(_openkbp_source(path, root))
    return sorted(found, key=lambda s: s.volume_id)


def _looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble."""
    if path.name.endswith((".nii", ".nii.gz", ".npz", ".csv", ".md", ".py", ".json")):
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _openkbp_source(path: Path, root: Path) -> VolumeSource:
    patient = path.name.removesuffix(".npz")
    return VolumeSource(
        _volume_id(path, root), f"openkbp_{patient}", "openkbp", str(path), _openkbp_split(path)
    )


def embedded(
    n_phantoms: int, phantom_kind: str = "chest", include_chest_ct: bool = True
) -> list[VolumeSource]:
    """The demo set: ``n_phantoms`` seeded phantoms and the real chest CT shipped by a package."""
    sources = [
        VolumeSource(
            f"phantom_{phantom_kind}_{seed}", f"phantom_{seed}", "phantom", f"phantom:{phantom_kind}:{seed}"
        )
        for seed in range(n_phantoms)
    ]
    if include_chest_ct:
        path = paths.embedded_path("chest_ct")
        sources.append(VolumeSource("embedded_chest_ct", "embedded_chest_ct", "nifti", str(path)))
    return sources


def select(
    sources: Sequence[VolumeSource],
    *,
    max_per_group: int = 0,
    group_of: Callable[[VolumeSource], str] | None = None,
    exclude: Sequence[str] = (),
) -> list[VolumeSource]:
    """Keep at most ``max_per_group`` sources per group (default group: format + fixed split); 0 keeps all.

    Sources whose volume id matches an ``exclude`` glob are dropped first (e.g. a series acquired thick,
    with no thin ground truth, that only inference uses).
    """
    sources = [s for s in sources if not any(fnmatch.fnmatch(s.volume_id, p) for p in exclude)]
    if max_per_group <= 0:
        return list(sources)
    group_of = group_of or (lambda s: f"{s.format}/{s.fixed_split}")
    counts: dict[str, int] = {}
    kept = []
    for source in sources:
        group = group_of(source)
        if counts.get(group, 0) < max_per_group:
            kept.append(source)
            counts[group] = counts.get(group, 0) + 1
    return kept
