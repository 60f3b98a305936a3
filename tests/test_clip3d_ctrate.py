"""The CT-RATE reader on a small layout-faithful fixture generated here: names, tables joined by
VolumeName, labels by column name, NaN report text, v1 (raw) and v2 (HU) volumes, the double-rescale
refusal, refusals naming the file, and a patient-wise split with its manifest and leak test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctlib.data import phantom, splits
from ctlib.errors import CTInputError
from ctlib.io import nifti
from ctlib.studies.clip3d import ctrate, findings, h5store, preprocess

# patient -> {scan: reconstructions}; v2 (already HU) volumes are marked
LAYOUT = {
    "train": {"train_1": {"a": 2, "b": 1}, "train_2": {"a": 1}, "train_3": {"a": 1}},
    "valid": {"valid_1": {"a": 1}, "valid_2": {"a": 1}},
}
V2 = {"train_1_b_1.nii.gz", "valid_2_a_1.nii.gz"}


def make_ctrate(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny CT-RATE tree under ``root``; return each volume's label vector."""
    rng = np.random.default_rng(seed)
    labels_of = {}
    for split, patients in LAYOUT.items():
        meta, reports, labels = [], [], []
        for patient, scans in patients.items():
            for scan, n_recon in scans.items():
                for recon in range(1, n_recon + 1):
                    name = f"{patient}_{scan}_{recon}.nii.gz"
                    volume = phantom.ct_phantom((12, 24, 24), (1.0, 1.0, 1.0), seed=len(labels_of))
                    stored = volume.array if name in V2 else volume.array + 1024.0  # v1: raw values
                    path = ctrate.volume_path(root, name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    nifti.write_nifti(volume.with_array(np.rint(stored)), path, dtype="int16")
                    meta.append(
                        {
                            "VolumeName": name,
                            "Manufacturer": "X",
                            "RescaleSlope": 1.0,
                            "RescaleIntercept": -1024.0,
                            "XYSpacing": "[0.75, 0.7]",
                            "ZSpacing": 1.5,
                        }
                    )
                    if name != "train_3_a_1.nii.gz":  # one volume without a report row
                        reports.append(
                            {
                                "VolumeName": name,
                                "ClinicalInformation_EN": "Cough.",
                                "Technique_EN": "CT.",
                                "Findings_EN": np.nan
                                if name == "train_2_a_1.nii.gz"
                                else f"Findings of {name}.",
                                "Impressions_EN": f"Impression of {name}.",
                            }
                        )
                    labels_of[name] = rng.integers(0, 2, size=18).astype(np.float32)
                    labels.append(
                        {"VolumeName": name, **dict(zip(findings.FINDINGS, labels_of[name], strict=True))}
                    )
        label_table = pd.DataFrame(labels)
        label_table = label_table[["VolumeName", *reversed(findings.FINDINGS)]]  # columns out of order
        for kind, table in (("metadata", meta), ("reports", reports), ("labels", label_table)):
            path = ctrate.table_path(root, split, kind)
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(table).to_csv(path, index=False)
    return labels_of


@pytest.fixture
def ctrate_root(tmp_path):
    labels = make_ctrate(tmp_path)
    return tmp_path, labels


def test_layout_paths_follow_the_release():
    path = ctrate.volume_path("/r", "train_12_a_2.nii.gz")
    assert path == Path("/r/dataset/train/train_12/train_12_a/train_12_a_2.nii.gz")
    assert ctrate.table_path("/r", "valid", "labels").name == "valid_predicted_labels.csv"
    assert ctrate.table_path("/r", "valid", "metadata").name == "validation_metadata.csv"
    assert ctrate.patient_of("valid_7_c_1.nii.gz") == "valid_7"
    with pytest.raises(ValueError, match="not a CT-RATE volume name"):
        ctrate.patient_of("chest.nii.gz")


def test_read_split_joins_tables_by_name(ctrate_root):
    root, labels = ctrate_root
    studies = {s.volume_name: s for s in ctrate.read_split(root, "train")}
    assert sorted(studies) == sorted(n for n in labels if n.startswith("train"))
    for name, study in studies.items():
        np.testing.assert_array_equal(study.labels, labels[name])
    assert studies["train_1_a_2.nii.gz"].patient_id == "train_1"
    assert studies["train_1_a_1.nii.gz"].findings_text == "Findings of train_1_a_1.nii.gz."
    assert studies["train_2_a_1.nii.gz"].findings_text == ""  # NaN text
    assert studies["train_3_a_1.nii.gz"].impressions_text == ""  # no report row
    assert studies["train_1_a_1.nii.gz"].spacing_mm == (1.5, 0.75, 0.7)


def test_auto_rescale_applies_the_metadata_only_to_raw_volumes(ctrate_root):
    root, _ = ctrate_root
    studies = {s.volume_name: s for s in ctrate.read_split(root, "train")}
    expected = phantom.ct_phantom((12, 24, 24), (1.0, 1.0, 1.0), seed=0).array
    v1 = ctrate.load_volume(studies["train_1_a_1.nii.gz"])
    np.testing.assert_allclose(v1.array, np.rint(expected), atol=0.5)
    assert v1.spacing == (1.5, 0.75, 0.7)
    v2 = ctrate.load_volume(studies["train_1_b_1.nii.gz"])
    np.testing.assert_allclose(v2.array, np.rint(phantom.ct_phantom((12, 24, 24), (1, 1, 1), seed=2).array))
    with pytest.raises(CTInputError, match=r"train_1_b_1\.nii\.gz: air at -(19|20)\d\d HU: .*applied twice"):
        ctrate.load_volume(studies["train_1_b_1.nii.gz"], rescale="metadata")
    with pytest.raises(CTInputError, match=r"train_1_a_1\.nii\.gz: air at \d+ HU: stored values look raw"):
        ctrate.load_volume(studies["train_1_a_1.nii.gz"], rescale="none")


def test_missing_report_column_is_named(ctrate_root):
    root, _ = ctrate_root
    path = ctrate.table_path(root, "valid", "reports")
    pd.read_csv(path).drop(columns=["Impressions_EN"]).to_csv(path, index=False)
    with pytest.raises(
        CTInputError, match=r"validation_reports\.csv: column\(s\) \['Impressions_EN'\] missing"
    ):
        ctrate.read_split(root, "valid")


def test_misnamed_label_column_is_named(ctrate_root):
    root, _ = ctrate_root
    path = ctrate.table_path(root, "valid", "labels")
    pd.read_csv(path).rename(columns={"Lung nodule": "Lung nodul"}).to_csv(path, index=False)
    with pytest.raises(
        CTInputError, match=r"valid_predicted_labels\.csv: .*'Lung nodule' \(found 'Lung nodul'\)"
    ):
        ctrate.read_split(root, "valid")


def test_unlabelled_volume_is_refused_or_kept_as_nan(ctrate_root):
    root, _ = ctrate_root
    path = ctrate.table_path(root, "valid", "labels")
    table = pd.read_csv(path)
    table[table.VolumeName != "valid_1_a_1.nii.gz"].to_csv(path, index=False)
    with pytest.raises(CTInputError, match="no label row for valid_1_a_1.nii.gz"):
        ctrate.read_split(root, "valid")
    kept = {s.volume_name: s for s in ctrate.read_split(root, "valid", require_labels=False)}
    assert np.isnan(kept["valid_1_a_1.nii.gz"].labels).all()


def test_patient_wise_split_to_h5_with_manifest(ctrate_root, tmp_path):
    root, labels = ctrate_root
    studies = ctrate.read_split(root, "train")
    names = [s.volume_name for s in studies]
    assignment = splits.make_splits(
        names, {"train": 0.67, "validation": 0.33}, seed=3, patient_of=ctrate.patient_of
    )
    rows = [{"volume_id": n, "patient_id": ctrate.patient_of(n), "split": assignment[n]} for n in names]
    manifest_path = tmp_path / "manifest.csv"
    splits.save_manifest(manifest_path, rows)
    manifest = splits.load_manifest(manifest_path)
    splits.check_no_leak(manifest)
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    leaked = manifest.copy()
    leaked.loc[leaked.volume_id == "train_1_a_2.nii.gz", "split"] = (
        "validation" if assignment["train_1_a_1.nii.gz"] == "train" else "train"
    )
    with pytest.raises(ValueError, match="patient 'train_1'"):
        splits.check_no_leak(leaked)
    for split in sorted(set(assignment.values())):
        chosen = [s for s in studies if assignment[s.volume_name] == split]
        counts = h5store.write_split(tmp_path / f"{split}.h5", ctrate.h5_studies(chosen), (8, 16, 16))
        assert counts["ok"] == len(chosen)
        with h5store.SplitFile(tmp_path / f"{split}.h5") as stored:
            for i, name in enumerate(stored.volume_names):
                np.testing.assert_array_equal(stored.labels[i], labels[name])
            assert preprocess.rescale_check(stored.volume_hu(0)).verdict == "ok"


def test_a_volume_of_the_wrong_dimensionality_is_refused_naming_it(ctrate_root):
    import nibabel as nib

    root, _ = ctrate_root
    study = next(s for s in ctrate.read_split(root, "valid") if s.volume_name == "valid_1_a_1.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), study.path)
    with pytest.raises(CTInputError, match=r"valid_1_a_1\.nii\.gz: .*(dimension|3-D|3D)"):
        ctrate.load_volume(study)
