"""Patient-wise seeded splits, the manifest CSV, and the leak check."""

from __future__ import annotations

import pandas as pd
import pytest

from ctlib.data import splits

FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}
IDS = [f"pt{i:03d}" for i in range(40)]


def test_deterministic_and_independent_of_input_order():
    a = splits.make_splits(IDS, FRACTIONS, seed=3)
    b = splits.make_splits(list(reversed(IDS)), FRACTIONS, seed=3)
    assert a == b and list(a) == IDS
    assert splits.make_splits(IDS, FRACTIONS, seed=4) != a


@pytest.mark.parametrize("n", [1, 7, 20, 40, 101])
def test_fractions_respected_within_rounding(n):
    result = splits.make_splits([f"p{i}" for i in range(n)], FRACTIONS, seed=0)
    counts = pd.Series(result).value_counts()
    for name, fraction in FRACTIONS.items():
        assert abs(counts.get(name, 0) - fraction * n) < 1.0
    assert counts.sum() == n


def test_split_counts_largest_remainder():
    assert splits.split_counts(10, FRACTIONS) == {"train": 7, "validation": 2, "test": 1}
    assert splits.split_counts(3, {"a": 0.5, "b": 0.5}) == {"a": 2, "b": 1}
    assert sum(splits.split_counts(17, FRACTIONS).values()) == 17
    assert splits.split_counts(100, {"a": 0.29, "b": 0.71}) == {"a": 29, "b": 71}


@pytest.mark.parametrize("seed", range(8))
def test_grouped_volumes_share_a_split_and_no_patient_leaks(seed):
    volumes = [f"pt{p:02d}_scan{s}" for p in range(25) for s in range(1 + p % 3)]
    patient = {v: v.split("_")[0] for v in volumes}
    by_function = splits.make_splits(volumes, FRACTIONS, seed, patient_of=lambda v: v.split("_")[0])
    assert by_function == splits.make_splits(volumes, FRACTIONS, seed, patient_of=patient)
    manifest = pd.DataFrame({"volume_id": volumes, "patient_id": [patient[v] for v in volumes],
                             "split": [by_function[v] for v in volumes]})
    splits.check_no_leak(manifest)
    per_patient = manifest.drop_duplicates("patient_id")["split"].value_counts()
    assert per_patient.to_dict() == splits.split_counts(25, FRACTIONS)  # patients, not volumes


def test_fixed_ids_are_honoured_for_their_whole_patient():
    volumes = ["a_1", "a_2", "b_1", "c_1", "d_1"] + IDS
    patient_of = {v: v.split("_")[0] for v in volumes}
    fixed = {"a_2": "external", "c_1": "test"}
    result = splits.make_splits(volumes, FRACTIONS, seed=1, fixed=fixed, patient_of=patient_of)
    assert result["a_1"] == result["a_2"] == "external" and result["c_1"] == "test"
    free = [v for v in volumes if patient_of[v] not in ("a", "c")]
    counts = pd.Series([result[v] for v in free]).value_counts()
    assert counts["train"] == splits.split_counts(len(free), FRACTIONS)["train"]
    with pytest.raises(ValueError, match="fixed to two splits"):
        splits.make_splits(
            volumes, FRACTIONS, 1, fixed={"a_1": "test", "a_2": "train"}, patient_of=patient_of
        )
    with pytest.raises(ValueError, match="not in patient_ids"):
        splits.make_splits(IDS, FRACTIONS, 1, fixed={"nobody": "test"})


def test_bad_inputs():
    with pytest.raises(ValueError, match="sum to 1"):
        splits.make_splits(IDS, {"train": 0.7, "test": 0.2}, 0)
    with pytest.raises(ValueError, match="duplicate"):
        splits.make_splits(["a", "b", "a"], FRACTIONS, 0)
    with pytest.raises(ValueError, match="no patient for volume id 'b'"):
        splits.make_splits(["a", "b"], FRACTIONS, 0, patient_of={"a": "p"})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        splits.make_splits(IDS, {"train": 1.2, "test": -0.2}, 0)


def test_check_no_leak_names_the_patient():
    manifest = pd.DataFrame({"patient_id": ["p1", "p1", "p2", "p3", "p3"],
                             "split": ["train", "test", "train", "validation", "validation"]})
    with pytest.raises(ValueError, match="patient 'p1' in \\['test', 'train'\\]"):
        splits.check_no_leak(manifest)
    splits.check_no_leak(manifest.iloc[2:])
    with pytest.raises(ValueError, match="lacks column"):
        splits.check_no_leak(manifest, patient_col="subject")


def test_manifest_round_trip(tmp_path):
    rows = [
        {"volume_id": "007", "patient_id": "007", "split": "train", "n_slices": 48, "spacing_mm": 2.5},
        {"volume_id": "010_b", "patient_id": "010", "split": "test", "n_slices": 60, "spacing_mm": 1.25,
         "note": "held out"},
    ]
    path = tmp_path / "sub" / "manifest.csv"
    splits.save_manifest(path, rows)
    frame = splits.load_manifest(path)
    assert list(frame.columns) == ["volume_id", "patient_id", "split", "n_slices", "spacing_mm", "note"]
    assert frame["patient_id"].tolist() == ["007", "010"]  # ids stay strings
    assert frame["n_slices"].tolist() == [48, 60] and frame["spacing_mm"].tolist() == [2.5, 1.25]
    assert pd.isna(frame.loc[0, "note"]) and frame.loc[1, "note"] == "held out"
    assert [p.name for p in path.parent.iterdir()] == ["manifest.csv"]  # no temporary left behind
    with pytest.raises(ValueError, match="no manifest rows"):
        splits.save_manifest(path, [])
