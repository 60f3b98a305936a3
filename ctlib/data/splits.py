"""Patient-wise, seeded train/validation/test splits and the manifest CSV that records them.

Every volume of a patient lands in the same split (no patient leaks across splits). Assignment:
patients are ordered by ``sha256(f"{seed}:{patient}")`` -- a seeded shuffle that does not depend on
the input order -- and cut into consecutive runs whose sizes are the fractions of the patient count,
rounded by the largest-remainder method. Patients with a forced split (``fixed``) are placed first
and the fractions apply to the remaining patients.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from ctlib.atomic import atomic_path

PatientOf = Callable[[str], str] | Mapping[str, str]


def _patient_key(patient_of: PatientOf | None) -> Callable[[str], str]:
    if patient_of is None:
        return lambda volume_id: volume_id
    if isinstance(patient_of, Mapping):

        def lookup(volume_id: str) -> str:
            if volume_id not in patient_of:
                raise ValueError(f"patient_of has no patient for volume id {volume_id!r}")
            return str(patient_of[volume_id])

        return lookup
    return lambda volume_id: str(patient_of(volume_id))


def split_counts(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of ``n * fraction`` per split; the counts sum to ``n``."""
    # Rounded so that float fuzz (0.29 * 100 = 28.999...) does not cost a whole patient.
    exact = {name: round(n * float(f), 9) for name, f in fractions.items()}
    counts = {name: math.floor(v) for name, v in exact.items()}
    leftover = n - sum(counts.values())
    order = sorted(exact, key=lambda name: -(exact[name] - counts[name]))  # stable: ties keep dict order
    for name in order[:leftover]:
        counts[name] += 1
    return counts


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions:
        raise ValueError("fractions is empty: expected e.g. {'train': 0.7, 'validation': 0.15, 'test': 0.15}")
    bad = {k: v for k, v in fractions.items() if not (isinstance(k, str) and k) or not 0.0 <= float(v) <= 1.0}
    if bad:
        raise ValueError(f"fractions must map split names to numbers in [0, 1], got {bad}")
    total = sum(float(v) for v in fractions.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {total} from {dict(fractions)}")


def make_splits(
    patient_ids: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    fixed: Mapping[str, str] | None = None,
    patient_of: PatientOf | None = None,
) -> dict[str, str]:
    """Seeded patient-wise split (hash-ordered, largest-remainder counts): ``{volume id: split}``.

    ``patient_ids`` are volume ids (one per patient unless ``patient_of`` groups them: a function or
    mapping from volume id to patient id). ``fixed`` forces the split of some volume ids (and so of
    their whole patient), e.g. held-out volumes; its split names need not appear in ``fractions``.
    Fractions are of patients, not volumes, and apply to the patients not fixed.
    """
    _check_fractions(fractions)
    ids = [str(i) for i in patient_ids]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate volume ids: {duplicates}")
    fixed = {str(k): str(v) for k, v in (fixed or {}).items()}
    unknown = sorted(set(fixed) - set(ids))
    if unknown:
        raise ValueError(f"fixed names volume ids that are not in patient_ids: {unknown}")

    key = _patient_key(patient_of)
    patient_of_volume = {i: key(i) for i in ids}
    forced: dict[str, str] = {}
    for volume_id, split in sorted(fixed.items()):
        patient = patient_of_volume[volume_id]
        if forced.setdefault(patient, split) != split:
            raise ValueError(
                f"patient {patient!r} is fixed to two splits: {forced[patient]!r} and {split!r} "
                f"(volume {volume_id!r})"
            )

    free = sorted(set(patient_of_volume.values()) - set(forced))
    free.sort(key=lambda p: hashlib.sha256(f"{int(seed)}:{p}".encode()).hexdigest())
    split_of_patient = dict(forced)
    start = 0
    for name, count in split_counts(len(free), fractions).items():
        for patient in free[start : start + count]:
            split_of_patient[patient] = name
        start += count
    return {i: split_of_patient[patient_of_volume[i]] for i in ids}


def save_manifest(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write manifest rows (one dict per volume) as CSV, atomically; columns in first-seen order."""
    if not rows:
        raise ValueError(f"{os.fspath(path)}: no manifest rows to write")
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    frame = pd.DataFrame(rows, columns=columns)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _is_text_column(name: str) -> bool:
    return name in ("id", "split", "path") or name.endswith("_id") or name.endswith("_path")


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV; id, split and path columns stay strings (``"007"`` is not 7)."""
    header = pd.read_csv(path, nrows=0).columns
    return pd.read_csv(path, dtype={c: str for c in header if _is_text_column(c)})


def check_no_leak(manifest: pd.DataFrame, patient_col: str = "patient_id", split_col: str = "split") -> None:
    """Raise ``ValueError`` naming every patient whose volumes are in more than one split."""
    missing = [c for c in (patient_col, split_col) if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks column(s) {missing}; it has {list(manifest.columns)}")
    splits_per_patient = manifest.groupby(patient_col)[split_col].agg(lambda s: sorted(set(s)))
    leaks = {p: s for p, s in splits_per_patient.items() if len(s) > 1}
    if leaks:
        detail = "; ".join(f"patient {p!r} in {s}" for p, s in sorted(leaks.items()))
        raise ValueError(f"patient leak across splits: {detail}")
