"""``ctlib dose predict`` / ``predict.predict_case``: the model grid and its resampling, the RTDOSE writer, an
OpenKBP patient and generated DICOM-RT sets (one a single slice) through a tiny released model, the outputs'
grids, identifiers and DVH table, one-line refusals, and the default release on a real test patient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from test_cli_refusals import PROBE
from test_dicom_read import edit
from test_dicom_rt import write_rtstruct
from test_dose_release import export_tiny, tiny_bundle

from ctlib import cli
from ctlib.data import body_mask
from ctlib.errors import CTInputError
from ctlib.io import dicom_read, dicom_rt, dicom_rt_write, nifti, openkbp
from ctlib.io.dicom_write import write_dicom_series
from ctlib.io.volume import Volume
from ctlib.studies.dose import dicom_rt_import, model_grid, predict, release_model
from ctlib.studies.dose import phantom as dose_phantom

PATIENT_ID, PATIENT_NAME = "RT-0042", "Test^Case"


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory, one_torch_thread):
    """A float32 release of a random-weight U-Net with one whole-grid window (fast on 128^3)."""
    return export_tiny(tmp_path_factory.mktemp("weights"), bundle=tiny_bundle(roi_size=(64, 64, 64)),
                       precision="float32")


def write_rt_case(folder: Path, *, slices: int = 24, plan_dose: bool = True) -> tuple[Volume, dict, Any]:
    """The synthetic head dose phantom as a clinical export: CT series, RTSTRUCT (Brainstem, PTV70 under local
    names, BODY), and an RTDOSE of its analytic dose; one patient, one study, one frame of reference."""
    ct, masks, dose = dose_phantom.dose_phantom(shape=(slices, 64, 64), spacing_mm=(3.0, 3.0, 3.0))
    ct = ct.with_array(np.rint(ct.array))
    write_dicom_series(ct, folder / "CT", patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    ct_file = sorted((folder / "CT").glob("*.dcm"))[0]
    reference = pydicom.dcmread(ct_file, stop_before_pixels=True)
    frame = str(reference.FrameOfReferenceUID)
    rois = {"Brain Stem": masks["Brainstem"], "PTV 7000": masks["PTV70"], "BODY": body_mask.body_mask(ct)}
    write_rtstruct(folder / "RS.dcm", ct, {k: v for k, v in rois.items() if v.any()}, frame)
    edit(folder / "RS.dcm", PatientID=PATIENT_ID, StudyInstanceUID=reference.StudyInstanceUID)
    if plan_dose:
        dicom_rt_write.write_rtdose(dose, ct, folder / "RD.dcm", reference=ct_file, keep_identifiers=True)
    return ct, masks, dose


# --------------------------------------------------------------------------------------- the model grid
def test_covering_grid_and_resampling_reproduce_a_linear_field():
    ct = Volume(np.zeros((10, 30, 40)), (2.0, 1.2, 0.9), origin=(-20.0, -15.0, 30.0))
    grid = model_grid.covering_grid(ct, (2.5, 3.9, 3.9), multiple=8, min_shape=(16, 8, 8))
    assert grid.shape == (16, 16, 16) and np.allclose(grid.direction, openkbp.OPENKBP_DIRECTION)
    assert grid.spacing == (2.5, 3.9, 3.9)

    def field(volume: Volume) -> np.ndarray:
        k, j, i = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
        lps = np.stack([i, j, k, np.ones_like(i)], -1) @ volume.index_to_lps()[:3].T
        return (10 + 0.3 * lps[..., 0] - 0.2 * lps[..., 1] + 0.5 * lps[..., 2]).astype(np.float32)

    on_grid = model_grid.resample(field(ct), ct, grid, order=1, fill=-1.0)
    inside = on_grid != -1.0
    assert 0.05 < inside.mean() < 0.8  # the grid covers the CT and more (padding)
    np.testing.assert_allclose(on_grid[inside], field(grid)[inside], atol=0.3)  # edges: <= 1/2 voxel
    back = model_grid.resample(field(grid), grid, ct, order=1)
    np.testing.assert_allclose(back, field(ct), atol=1e-3)  # every CT voxel lies inside the grid


def test_the_grid_can_cover_the_body_box_only():
    """A wide field of view with a small body: the grid covers the body's box (one voxel wider), and every
    body voxel still lies inside it."""
    ct = Volume(np.zeros((4, 100, 120)), (2.5, 1.0, 1.0))
    body = np.zeros(ct.shape, bool)
    body[1:3, 40:60, 30:50] = True
    whole = model_grid.covering_grid(ct, (2.5, 2.0, 2.0))
    boxed = model_grid.covering_grid(ct, (2.5, 2.0, 2.0), within=body)
    assert whole.shape == (4, 50, 60) and boxed.shape == (4, 11, 11)  # z: 0..3 (box 1..2, one wider)
    assert model_grid.covering_grid(ct, (2.5, 2.0, 2.0), within=np.zeros_like(body)).shape == whole.shape
    ones = model_grid.resample(np.ones(boxed.shape, np.float32), boxed, ct, order=1, fill=0.0)
    assert (ones[body] == 1.0).all() and ones.sum() < ones.size / 10


def test_a_single_slice_covers_its_thickness_only():
    ct = Volume(np.full((1, 8, 8), 100.0), (3.0, 4.0, 4.0))
    grid = model_grid.covering_grid(ct, (1.0, 4.0, 4.0), min_shape=(9, 8, 8))
    sampled = model_grid.resample(ct.array, ct, grid, order=1, fill=-1024.0)
    assert grid.shape == (9, 8, 8)
    assert [float(s.max()) for s in sampled] == [-1024.0] * 3 + [100.0] * 3 + [-1024.0] * 3  # +-1.5 mm
    masks = model_grid.resample(np.ones((2, 1, 8, 8), bool), ct, grid, order=0, fill=False)
    assert masks.dtype == bool and masks.shape == (2, 9, 8, 8) and masks.sum() == 2 * 3 * 64


def test_padding_keeps_every_voxel_in_place():
    ct = Volume(np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4), (2.0, 3.0, 4.0),
                origin=(1.0, 2.0, 3.0), direction=openkbp.OPENKBP_DIRECTION)
    padded, window = model_grid.padded_volume(ct, (4, 8, 8), -1024.0)
    assert padded.shape == (4, 8, 8) and np.array_equal(padded.array[window], ct.array)
    corner = [window[2].start, window[1].start, window[0].start, 1.0]
    np.testing.assert_allclose(padded.index_to_lps() @ corner, [*ct.origin, 1.0])
    assert model_grid.padded_shape((128, 1, 100), 16, (64, 64, 64)) == (128, 64, 112)


# ------------------------------------------------------------------------------------ the RTDOSE writer
@pytest.mark.parametrize("direction", [np.eye(3), openkbp.OPENKBP_DIRECTION])
def test_rtdose_reads_back_onto_the_grid_within_its_quantization(tmp_path, direction):
    ct = Volume(np.zeros((5, 6, 7)), (2.5, 3.0, 3.5), origin=(-10.0, 4.0, 20.0), direction=direction)
    dose = np.random.default_rng(0).uniform(0, 70, ct.shape).astype(np.float32)
    path = dicom_rt_write.write_rtdose(dose, ct, tmp_path / "rd.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.Modality, ds.DoseUnits, ds.DoseType) == ("RTDOSE", "GY", "PHYSICAL")
    assert ds.DoseSummationType == "PLAN"
    assert ds.PatientName == "" and ds.PatientID == "" and int(ds.NumberOfFrames) == 5
    assert [float(v) for v in ds.GridFrameOffsetVector] == [0.0, 2.5, 5.0, 7.5, 10.0]
    back = dicom_rt.read_rtdose(path, ct)
    assert np.abs(back - dose).max() <= float(ds.DoseGridScaling) / 2 * 1.001
    assert dicom_rt_write.rtdose_dataset(dose, ct).SOPInstanceUID != ds.SOPInstanceUID
    with pytest.raises(CTInputError, match="rd2.dcm: cannot write RTDOSE: .*NaN"):
        dicom_rt_write.write_rtdose(dose * np.nan, ct, tmp_path / "rd2.dcm")
    assert not (tmp_path / "rd2.dcm").exists()


# ----------------------------------------------------------------------------------------- predictions
def _nifti_on(path: Path, ct: Volume) -> np.ndarray:
    dose = nifti.read_nifti(path)
    assert dose.shape == ct.shape
    np.testing.assert_allclose(dose.index_to_lps(), ct.index_to_lps(), atol=1e-4)  # the CT grid
    return dose.array


def _check_rtdose(path: Path, ct: Volume, expected: np.ndarray) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    back = dicom_rt.read_rtdose(path, ct)
    # stored integers x DoseGridScaling, read back as float32 (its rounding at the largest dose on top)
    tolerance = float(ds.DoseGridScaling) / 2 * 1.001 + np.spacing(np.float32(expected.max()))
    assert np.abs(back - expected).max() <= tolerance
    return ds


@pytest.mark.realdata
def test_an_openkbp_patient(data_root, tiny_release, tmp_path):
    source = data_root / "openkbp" / "test" / "pt_242.npz"
    summary = predict.predict_case(source, tmp_path, model=tiny_release, device="cpu")
    patient = openkbp.read_openkbp(source)
    outputs = predict.output_paths(tmp_path, "pt_242")
    assert all(p.is_file() for p in outputs.values()) and len(list(tmp_path.iterdir())) == 4
    pred = _nifti_on(outputs["nifti"], patient.ct)
    assert pred.max() > 0 and not pred[~patient.possible_dose_mask].any()
    loaded = release_model.open_dose_release(tiny_release)
    from ctlib.studies.dose import features

    expected = loaded.model.predict(features.dose_patient_from_openkbp(patient, "test"))
    np.testing.assert_array_equal(pred, expected)  # the native grid: no resampling
    ds = _check_rtdose(outputs["rtdose"], patient.ct, pred)
    assert ds.PatientName == "" and ds.PatientID == "" and ds.FrameOfReferenceUID
    dvh = pd.read_csv(outputs["dvh"])
    present = sorted(patient.structures)
    assert sorted(set(dvh["structure"])) == present and dvh["planned_gy"].notna().all()
    ptv = dvh[(dvh["structure"] == "PTV70") & (dvh["metric"] == "D_95")].iloc[0]
    assert ptv["difference_gy"] == pytest.approx(ptv["predicted_gy"] - ptv["planned_gy"], abs=2e-4)
    saved = json.loads(outputs["json"].read_text())
    assert saved["model"]["sha256"] == loaded.sha256 and saved["input"]["kind"] == "openkbp"
    assert saved["warnings"] == [] and saved["plan_comparison"]["dose_score_gy"] > 0
    assert saved == {**summary, "seconds": saved["seconds"]}


def test_a_dicom_rt_folder_is_resampled_and_returned_on_the_ct_grid(tiny_release, tmp_path):
    write_rt_case(tmp_path / "case")
    summary = predict.predict_case(tmp_path / "case", tmp_path / "out", model=tiny_release, device="cpu")
    ct = dicom_read.read_dicom_series(tmp_path / "case" / "CT")
    outputs = predict.output_paths(tmp_path / "out", "case")
    pred = _nifti_on(outputs["nifti"], ct)
    body = body_mask.body_mask(ct)
    assert pred[body].mean() > 0 and not pred[~body].any()
    assert summary["model_grid"]["spacing_mm"] == [2.5, 3.906, 3.906] and summary["model_grid"]["resampled"]
    assert summary["model_grid"]["shape"] == [64, 64, 64]  # 72 x 192 x 192 mm, at least one 64^3 window
    ds = _check_rtdose(outputs["rtdose"], ct, pred)
    reference = pydicom.dcmread(sorted((tmp_path / "case" / "CT").glob("*.dcm"))[0])
    assert ds.FrameOfReferenceUID == reference.FrameOfReferenceUID
    assert ds.StudyInstanceUID == reference.StudyInstanceUID
    assert ds.SeriesInstanceUID != reference.SeriesInstanceUID
    assert ds.PatientName == "" and ds.PatientID == ""  # no identifiers unless asked
    dvh = pd.read_csv(outputs["dvh"])
    assert sorted(set(dvh["structure"])) == ["Brainstem", "PTV70"] and dvh["planned_gy"].notna().all()
    assert summary["input"]["unmatched_roi_names"] == ["BODY"] and summary["warnings"] == []
    assert summary["model"]["name"] == "dose_tiny" and summary["input"]["rtdose"] == "RD.dcm"

    summary = predict.predict_case(tmp_path / "case", tmp_path / "kept", model=tiny_release, device="cpu",
                                   keep_identifiers=True, patient_id="named case")
    ds = pydicom.dcmread(tmp_path / "kept" / "named_case_dose_pred_rtdose.dcm")
    assert (ds.PatientID, str(ds.PatientName)) == (PATIENT_ID, PATIENT_NAME)


@pytest.mark.realdata
def test_a_dicom_export_of_an_openkbp_patient_predicts_as_the_patient(data_root, tiny_release, tmp_path):
    """pt_242 written as DICOM-RT (slices ascending along +z, the reverse of OpenKBP's order) and predicted
    at its own spacing: the model grid is the patient's grid again, so the dose equals the direct prediction
    (with the body mask as possible-dose mask, as DICOM-RT has no other), flipped back onto the DICOM CT."""
    patient = openkbp.read_openkbp(data_root / "openkbp" / "test" / "pt_242.npz")
    case = tmp_path / "case"
    write_dicom_series(patient.ct, case / "CT")
    reference = pydicom.dcmread(next((case / "CT").glob("*.dcm")), stop_before_pixels=True)
    write_rtstruct(case / "RS.dcm", patient.ct, patient.structures, reference.FrameOfReferenceUID)
    edit(case / "RS.dcm", StudyInstanceUID=reference.StudyInstanceUID)
    model = release_model.load_dose_release(tiny_release)
    summary = predict.predict_case(case, tmp_path / "out", model=model, device="cpu",
                                   training_spacing_mm=patient.ct.spacing, crop_to_body=False)
    assert summary["model_grid"]["shape"] == [128, 128, 128] and summary["warnings"] == []
    from ctlib.studies.dose import features

    body = body_mask.body_mask(patient.ct)
    direct = model.predict(features.dose_patient_from_openkbp(
        openkbp.OpenKBPPatient("pt_242", patient.ct, patient.dose_gy, body, patient.structures), "test"))
    ct = dicom_read.read_dicom_series(case / "CT")
    assert np.allclose(ct.direction, np.eye(3))  # read back with z ascending: the array is flipped
    pred = _nifti_on(tmp_path / "out" / "case_dose_pred.nii.gz", ct)
    np.testing.assert_allclose(pred, direct[::-1], atol=1e-3)


def test_a_single_slice_without_a_plan_runs_and_warns(tiny_release, tmp_path):
    ct, _, _ = write_rt_case(tmp_path / "case", slices=1, plan_dose=False)
    with pytest.warns(predict.DosePredictionWarning, match="out of its domain"):
        summary = predict.predict_case(tmp_path / "case", tmp_path / "out", model=tiny_release, device="cpu")
    outputs = predict.output_paths(tmp_path / "out", "case")
    single = dicom_read.read_dicom_series(tmp_path / "case" / "CT", allow_single_slice=True)
    pred = _nifti_on(outputs["nifti"], single)
    assert pred.shape == (1, 64, 64) and int(pydicom.dcmread(outputs["rtdose"]).NumberOfFrames) == 1
    _check_rtdose(outputs["rtdose"], single, pred)
    assert summary["input"]["has_plan_dose"] is False and summary["plan_comparison"] is None
    assert pd.read_csv(outputs["dvh"])["planned_gy"].isna().all()
    assert any("covers 3 mm along z" in w for w in summary["warnings"])


def test_the_dicompyler_example_runs_out_of_domain(tiny_release, tmp_path):
    folder = dicom_rt_import.dicompyler_example_folder()
    if not all((folder / n).is_file() for n in ("ct.0.dcm", "rtss.dcm", "rtplan.dcm", "rtdose.dcm")):
        message = f"{folder}: the dicompyler-core example case is missing: run `make dicompyler-example`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with pytest.warns(predict.DosePredictionWarning):
        summary = predict.predict_case(folder, tmp_path, model=tiny_release, device="cpu",
                                       patient_id="example")
    assert summary["input"]["shape"] == [1, 512, 512] and summary["input"]["structures"] == []
    assert any("no head-and-neck target" in w and "out of its domain" in w for w in summary["warnings"])
    assert nifti.read_nifti(tmp_path / "example_dose_pred.nii.gz").shape == (1, 512, 512)
    rtdose = pydicom.dcmread(tmp_path / "example_dose_pred_rtdose.dcm")
    plan = pydicom.dcmread(folder / "rtplan.dcm", stop_before_pixels=True)
    assert rtdose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID


@pytest.mark.filterwarnings("ignore::ctlib.studies.dose.predict.DosePredictionWarning")
def test_a_failure_while_writing_leaves_no_outputs(tiny_release, tmp_path, monkeypatch):
    write_rt_case(tmp_path / "case", slices=8)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(dicom_rt_write, "write_rtdose", disk_full)
    with pytest.raises(OSError, match="No space left"):
        predict.predict_case(tmp_path / "case", tmp_path / "out", model=tiny_release, device="cpu")
    assert list((tmp_path / "out").iterdir()) == []  # the NIfTI written before was removed


# ----------------------------------------------------------------------------------------- command line
def _refused(capsys, argv: list[str], fragment: str) -> str:
    assert cli.main(["dose", "predict", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("ctlib dose predict: ") and fragment in lines[0], lines[0]
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, tiny_release):
    _refused(capsys, [str(tmp_path / "absent.npz")], f"{tmp_path / 'absent.npz'}: no such file or folder")
    (tmp_path / "scan.nii.gz").write_bytes(b"not a patient")
    model = ["--model", str(tiny_release), "--out", str(tmp_path / "o")]
    _refused(capsys, [str(tmp_path / "scan.nii.gz"), *model], "expected an OpenKBP patient")
    (tmp_path / "broken.npz").write_bytes(b"not an npz")
    _refused(capsys, [str(tmp_path / "broken.npz"), *model], f"{tmp_path / 'broken.npz'}: not a readable")
    (tmp_path / "empty").mkdir()
    _refused(capsys, [str(tmp_path / "empty"), *model], f"{tmp_path / 'empty'}: empty folder")
    _refused(capsys, [str(tmp_path / "broken.npz"), "--model", str(tmp_path / "nope")], "no such folder")
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_cheap_refusals_import_no_torch(tmp_path):
    (tmp_path / "pt_1.npz").write_bytes(b"never read")
    env = {**os.environ, "CTLIB_WEIGHTS_DIR": str(tmp_path / "w"), "CTLIB_RUNS_DIR": str(tmp_path / "runs")}
    for argv, fragment in (([str(tmp_path / "pt_1.npz")], "the released dose model is missing"),
                           ([str(tmp_path / "nope.npz")], "no such file or folder"),
                           ([str(tmp_path / "pt_1.npz"), "--device", "gpu"], "--device must be")):
        done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(["dose", "predict", *argv])],
                              capture_output=True, text=True, env=env, timeout=120,
                              cwd=str(Path(__file__).resolve().parents[1]))
        result, lines = json.loads(done.stdout.strip().splitlines()[-1]), done.stderr.strip().splitlines()
        assert result["rc"] == 2 and len(lines) == 1 and fragment in lines[0], done.stderr
        assert result["heavy"] == [], f"imported {result['heavy']} before refusing"


def test_the_command_writes_the_outputs_and_refuses_to_overwrite(tiny_release, tmp_path, capsys):
    write_rt_case(tmp_path / "case", slices=8)  # 24 mm along z: a warning line on stderr
    argv = [str(tmp_path / "case"), "--out", str(tmp_path / "out"), "--model", str(tiny_release),
            "--device", "cpu", "--tta"]
    assert cli.main(["dose", "predict", *argv]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert captured.err.startswith("ctlib dose predict: warning: the CT covers 24 mm along z")
    assert summary["model"]["tta"] == [True] and summary["outputs"]["nifti"] == "case_dose_pred.nii.gz"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(summary["outputs"].values())
    _refused(capsys, argv, "case_dose_pred.nii.gz: exists; pass --overwrite")
    assert cli.main(["dose", "predict", *argv, "--overwrite"]) == 0


def test_the_challenge_csv_layout_through_the_command(tiny_release, tmp_path, capsys):
    from test_openkbp import _fake_patient

    folder, _, pdm, _ = _fake_patient(tmp_path)  # pt_7: a Brainstem, no target: out of domain
    argv = ["dose", "predict", str(folder), "--out", str(tmp_path / "out"), "--model", str(tiny_release)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["input"]["layout"] == "csv" and summary["input"]["structures"] == ["Brainstem"]
    assert "ctlib dose predict: warning: no head-and-neck target" in captured.err
    pred = nifti.read_nifti(tmp_path / "out" / "pt_7_dose_pred.nii.gz").array
    assert pred.shape == openkbp.GRID and not pred[~np.moveaxis(pdm, 2, 0)].any()
    assert list(pd.read_csv(tmp_path / "out" / "pt_7_dvh.csv")["structure"]) == ["Brainstem"] * 2


@pytest.mark.realdata
@pytest.mark.slow
def test_the_default_release_predicts_an_openkbp_test_patient(data_root, tmp_path, capsys):
    """The committed release on a held-out OpenKBP patient: the GPU campaign's bench/dose_openkbp.py scored
    pt_242 at 2.59 Gy (mirror TTA, float32 weights on the H200, bench/results/dose_openkbp_gpu_h200.json); the
    float16 release on the CPU and the command's own path must land there."""
    source = data_root / "openkbp" / "test" / "pt_242.npz"
    assert cli.main(["dose", "predict", str(source), "--out", str(tmp_path), "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"]["name"] == release_model.DEFAULT_NAME and len(summary["model"]["sha256"]) == 64
    assert summary["warnings"] == []
    assert summary["plan_comparison"]["dose_score_gy"] == pytest.approx(2.59, abs=0.05)
    assert nifti.read_nifti(tmp_path / "pt_242_dose_pred.nii.gz").shape == (128, 128, 128)


@pytest.mark.realdata
def test_the_default_release_runs_the_dicompyler_example_from_the_command_line(tmp_path, capsys):
    """The issue's acceptance case: `ctlib dose predict` with the committed release on the real RT export of
    dicompyler-core 0.5.6 (one breast CT slice): it runs, warns that the case is out of its domain, and writes
    the dose on the CT grid as NIfTI and as an RTDOSE that reads back to the same dose."""
    folder = dicom_rt_import.dicompyler_example_folder()
    if not (folder / "rtss.dcm").is_file():
        message = f"{folder}: the dicompyler-core example case is missing: run `make dicompyler-example`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert cli.main(["dose", "predict", str(folder), "--out", str(tmp_path), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["model"]["name"] == release_model.DEFAULT_NAME
    assert "out of its domain" in captured.err and summary["input"]["has_plan_dose"]
    pred = nifti.read_nifti(tmp_path / "dicompyler_example_dose_pred.nii.gz")
    assert pred.shape == (1, 512, 512)
    assert summary["model_grid"]["shape"] == [128, 128, 128]  # the body's box fits one window
    ct = dicom_read.read_dicom_series([folder / "ct.0.dcm"], allow_single_slice=True)
    back = dicom_rt.read_rtdose(tmp_path / "dicompyler_example_dose_pred_rtdose.dcm", ct)
    scaling = float(pydicom.dcmread(tmp_path / "dicompyler_example_dose_pred_rtdose.dcm").DoseGridScaling)
    assert float(np.abs(back - pred.array).max()) <= scaling  # quantization of the stored dose
    assert pydicom.dcmread(tmp_path / "dicompyler_example_dose_pred_rtdose.dcm").PatientID in ("", None)
