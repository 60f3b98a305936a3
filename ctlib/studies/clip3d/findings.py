"""The 18 CT-RATE findings and their label matrix, always mapped by column name, never by position."""

from __future__ import annotations

import difflib
import os

import numpy as np
import pandas as pd

from ctlib.errors import CTInputError

FINDINGS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)


def _key(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def label_matrix(
    table: pd.DataFrame,
    source: str | os.PathLike,
    findings: tuple[str, ...] = FINDINGS,
) -> np.ndarray:
    """``(N, len(findings))`` float32 0/1 labels taken from ``table``'s columns by name.

    Names match ignoring case, underscores and repeated spaces (``"lung_nodule"`` is ``"Lung nodule"``);
    a finding with no column, a name matched twice or a value other than 0/1 is refused naming ``source``
    (and the nearest column names, for a misspelt one).
    """
    by_key: dict[str, str] = {}
    for column in table.columns:
        if _key(column) in by_key:
            raise CTInputError(
                source, f"columns {by_key[_key(column)]!r} and {column!r} name the same finding"
            )
        by_key[_key(column)] = str(column)
    missing = [f for f in findings if _key(f) not in by_key]
    if missing:
        hints = []
        for name in missing:
            near = difflib.get_close_matches(_key(name), list(by_key), n=1, cutoff=0.75)
            hints.append(f"{name!r}" + (f" (found {by_key[near[0]]!r})" if near else ""))
        raise CTInputError(source, f"label column(s) missing: {', '.join(hints)}")
    values = table[[by_key[_key(f)] for f in findings]].apply(pd.to_numeric, errors="coerce")
    bad = ~values.isin([0, 1])
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        found = str(table[values.columns[col]].iloc[row])
        raise CTInputError(
            source, f"label {values.columns[col]!r} of row {row + 1} is {found!r}, expected 0 or 1"
        )
    return values.to_numpy(dtype=np.float32)
