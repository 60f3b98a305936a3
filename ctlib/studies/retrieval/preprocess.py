"""Cases -> one split file per split: read, window to uint8 at the input shape, label vectors, manifest.

The label vocabulary is fitted on the training split only (``labels.vocabulary``): a label is kept when it
appears in at least ``min_count`` training cases and in at most ``max_fraction`` of them (a label every
volume carries makes every pair relevant and says nothing). Labels outside the vocabulary are dropped from
every split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ctlib.data import splits as splits_mod
from ctlib.studies.retrieval import dataset
from ctlib.studies.retrieval import labels as labels_mod
from ctlib.studies.retrieval.sources import SPLITS, Case


def write_splits(
    cases: Sequence[Case],
    split_of_patient: Mapping[str, str],
    out_dir: str | os.PathLike,
    *,
    input_shape: Sequence[int],
    window_hu: tuple[float, float],
    min_count: int = 2,
    max_fraction: float = 0.95,
    progress: Callable[[int, Case], None] | None = None,
) -> tuple[list[dict], list[str]]:
    """Write ``<out_dir>/<split>.npz`` for every split and ``manifest.csv``; returns ``(rows, label names)``.

    Every case is read once (``case.read()``) and stored at ``input_shape``; a case whose volume cannot be
    read stops the run with its id in the message (nothing is half-written: files are replaced atomically).
    """
    out_dir = Path(out_dir)
    missing = sorted({c.patient_id for c in cases} - set(split_of_patient))
    if missing:
        raise ValueError(f"patients without a split: {missing[:5]}")
    train_sets = [c.labels for c in cases if split_of_patient[c.patient_id] == "train"]
    names = labels_mod.vocabulary(train_sets, min_count=min_count, max_fraction=max_fraction)
    if not names:
        raise ValueError(
            "no label survives the vocabulary filter (min_count / max_fraction): nothing to retrieve"
        )
    rows, stored = [], {name: [] for name in SPLITS}
    for i, case in enumerate(cases):
        if progress is not None:
            progress(i, case)
        try:
            volume = dataset.to_uint8(case.read(), input_shape, window_hu)
        except Exception as err:  # noqa: BLE001  (any reader error: name the case)
            raise RuntimeError(f"case {case.case_id} ({case.source}): {type(err).__name__}: {err}") from err
        split = split_of_patient[case.patient_id]
        stored[split].append((case, volume))
        kept = sorted(case.labels & set(names))
        rows.append({"case_id": case.case_id, "patient_id": case.patient_id, "source": case.source,
                     "split": split, "labels": ";".join(kept),
                     "labels_dropped": ";".join(sorted(case.labels - set(names)))})  # fmt: skip
    for split, items in stored.items():
        if not items:
            continue
        chosen = [c for c, _ in items]
        dataset.write_split(
            out_dir / f"{split}.npz", np.stack([v for _, v in items]),
            labels_mod.label_matrix([c.labels for c in chosen], names), names, [c.case_id for c in chosen],
            [c.patient_id for c in chosen], [c.source for c in chosen], window_hu,
        )  # fmt: skip
    splits_mod.save_manifest(out_dir / "manifest.csv", rows)
    splits_mod.check_no_leak(splits_mod.load_manifest(out_dir / "manifest.csv"))
    return rows, names
