"""``ctlib interpolate``: NIfTI and DICOM out with the thin geometry, and one-line refusals (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from test_cli_refusals import PROBE
from test_interp_pipeline import make_diffusion_run

from ctlib import cli
from ctlib.data import phantom
from ctlib.io import dicom_write, nifti, reader
from ctlib.studies.interp import cli as interp_cli

FAST = ["--steps", "2", "--quiet"]


def _thick_volume(n_thick: int = 5, spacing_z: float = 6.0):
    volume = phantom.ct_phantom(shape=(n_thick, 24, 32), spacing_mm=(spacing_z, 1.5, 1.5), seed=0)
    return volume.with_array(np.rint(volume.array))


def _refused(capsys, args: list[str], fragment: str) -> str:
    assert cli.main(["interpolate", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("ctlib interpolate: ") and fragment in lines[0], lines[0]
    return lines[0]


def test_list_samplers(capsys):
    assert cli.main(["interpolate", "--list-samplers"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"ddim", "ddpm"} <= set(names)


def test_writes_nifti_with_the_thin_geometry_and_a_std_map(tmp_path, capsys):
    run_id = make_diffusion_run(factor=4)
    thick = _thick_volume()
    nifti.write_nifti(thick, tmp_path / "thick.nii.gz")
    out, std = tmp_path / "thin.nii.gz", tmp_path / "std.nii"
    assert (
        cli.main(
            [
                "interpolate",
                str(tmp_path / "thick.nii.gz"),
                str(out),
                "--run",
                run_id,
                "--factor",
                "4",
                "--samples",
                "2",
                "--std",
                str(std),
                *FAST,
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == [20, 24, 32] and summary["residual_after_hu"] < 1.0
    thin = reader.read_volume(out)
    assert thin.shape == (20, 24, 32) and thin.spacing == pytest.approx((1.5, 1.5, 1.5))
    blocks = thin.slice_positions().reshape(5, 4, 3).mean(axis=1)  # thin slices centred in each slab
    np.testing.assert_allclose(blocks, thick.slice_positions(), atol=1e-3)
    uncertainty = nifti.read_nifti(std, fill_below_air=False)
    assert uncertainty.shape == thin.shape and uncertainty.array.min() >= 0
    np.testing.assert_allclose(uncertainty.index_to_lps(), thin.index_to_lps(), atol=1e-4)


def test_writes_a_dicom_series_in_the_input_study(tmp_path, capsys):
    run_id = make_diffusion_run(factor=4)
    thick = _thick_volume(n_thick=4)
    dicom_write.write_dicom_series(thick, tmp_path / "thick")
    out = tmp_path / "thin"
    assert cli.main(["interpolate", str(tmp_path / "thick"), f"{out}/", "--run", run_id, *FAST]) == 0
    capsys.readouterr()
    thin = reader.read_volume(out)
    assert thin.shape == (16, 24, 32) and thin.spacing == pytest.approx((1.5, 1.5, 1.5))
    np.testing.assert_allclose(
        thin.slice_positions()[0], thick.slice_positions()[0] - [0, 0, 2.25], atol=1e-3
    )
    first_in = pydicom.dcmread(next((tmp_path / "thick").iterdir()), stop_before_pixels=True)
    first_out = pydicom.dcmread(sorted(out.iterdir())[0], stop_before_pixels=True)
    assert float(first_out.SliceThickness) == pytest.approx(1.5)
    assert float(first_out.SpacingBetweenSlices) == pytest.approx(1.5)
    assert first_out.StudyInstanceUID == first_in.StudyInstanceUID
    assert first_out.SeriesInstanceUID != first_in.SeriesInstanceUID


def test_refuses_unusable_input_with_one_line(tmp_path, capsys):
    run_id = make_diffusion_run(factor=4)
    nifti.write_nifti(_thick_volume(n_thick=1), tmp_path / "one.nii.gz")
    nifti.write_nifti(_thick_volume(), tmp_path / "thick.nii.gz")
    good, out = str(tmp_path / "thick.nii.gz"), str(tmp_path / "thin.nii.gz")
    _refused(capsys, [str(tmp_path / "one.nii.gz"), out, "--run", run_id], "need at least 2 thick slices")
    _refused(capsys, [good, out, "--run", run_id, "--factor", "1"], "--factor must be at least 2")
    line = _refused(capsys, [good, out, "--run", run_id, "--factor", "3"], "trained at factor 4, asked for 3")
    assert "--force-factor" in line
    _refused(capsys, [good, out, "--run", "no_such_run"], "'no_such_run'")
    _refused(capsys, [str(tmp_path / "absent.nii.gz"), out, "--run", run_id], "no such file")
    _refused(capsys, [good, str(tmp_path / "thin.txt"), "--run", run_id], "must end with .nii")
    _refused(capsys, [good, out, "--run", run_id, "--std", str(tmp_path / "s.nii")], "--samples 2 or more")
    _refused(capsys, [good, good, "--run", run_id, "--overwrite"], "OUT is the input")
    mr = dicom_write.write_dicom_series(_thick_volume(), tmp_path / "mr")
    for file in mr.iterdir():
        ds = pydicom.dcmread(file)
        ds.Modality = "MR"
        ds.save_as(file)
    _refused(capsys, [str(mr), out, "--run", run_id], "modality is 'MR'")
    assert not (tmp_path / "thin.nii.gz").exists()


def test_mismatched_factor_runs_with_force_and_refuses_to_overwrite(tmp_path, capsys):
    run_id = make_diffusion_run(factor=4)
    nifti.write_nifti(_thick_volume(n_thick=3), tmp_path / "thick.nii.gz")
    args = [
        str(tmp_path / "thick.nii.gz"),
        str(tmp_path / "thin.nii"),
        "--run",
        run_id,
        "--factor",
        "3",
        *FAST,
    ]
    assert cli.main(["interpolate", *args, "--force-factor"]) == 0
    assert json.loads(capsys.readouterr().out)["shape"][0] == 9
    _refused(capsys, [*args, "--force-factor"], "exists; pass --overwrite")


def test_exit_status_and_stderr_of_the_console_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ctlib.cli", "interpolate", str(tmp_path / "x.nii.gz"),
                             str(tmp_path / "y.nii.gz"), "--run", "missing_run"],
                            capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and "x.nii.gz" in result.stderr


def _probe(argv: list[str], cwd: Path) -> tuple[dict, list[str], float]:
    """``cli.main(argv)`` in a fresh interpreter: exit status and heavy imports, stderr lines, seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True,
                          cwd=str(cwd), env={**os.environ}, timeout=60)
    seconds = time.perf_counter() - started
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr.strip().splitlines(), seconds


GOOD = ["@/in.nii.gz", "@/thin.nii.gz", "--run", "@/diffusion.pt"]  # '@' is the test's folder
# Each was refused only after torch was imported and the model loaded (6-8 s here), or, with a usable
# model, minutes later inside the pipeline or when writing; now before any heavy import.
CHEAP_CASES = {
    "chunk zero": ([*GOOD, "--chunk", "0"], "--chunk must be at least 1"),
    "negative overlap": ([*GOOD, "--overlap", "-1"], "--overlap must be at least 0"),
    "window depth zero": ([*GOOD, "--window-depth", "0"], "--window-depth must be at least 1"),
    "overlap not below window": ([*GOOD, "--window-depth", "8", "--overlap", "8"], "--overlap 8 must"),
    "negative eta": ([*GOOD, "--eta", "-1"], "--eta must be a finite number >= 0"),
    "nan eta": ([*GOOD, "--eta", "nan"], "got nan"),
    "negative seed": ([*GOOD, "--seed", "-1"], "--seed must be at least 0"),
    "unknown device": ([*GOOD, "--device", "gpu7"], "unknown --device 'gpu7'"),
    "missing vae": ([*GOOD, "--vae", "@/novae.pt"], "novae.pt: no such checkpoint file (--vae)"),
    "std is OUT": ([*GOOD, "--samples", "2", "--std", "@/thin.nii.gz"], "--std names IN or OUT"),
    "OUT under a file": (
        ["@/in.nii.gz", "@/in.nii.gz/thin.nii.gz", "--run", "@/diffusion.pt"],
        "in.nii.gz is a file, not a folder",
    ),
    "corrupt run checkpoint": (
        ["@/in.nii.gz", "@/thin.nii.gz", "--run", "@/corrupt.pt"],
        "corrupt.pt: not a readable checkpoint (--run)",
    ),
    "empty vae checkpoint": ([*GOOD, "--vae", "@/empty.pt"], "empty.pt: not a readable checkpoint (--vae)"),
}


@pytest.mark.parametrize("name", sorted(CHEAP_CASES))
def test_cheap_refusals_come_before_torch(name, tmp_path):
    """Exit 2, one line, no traceback, and torch (papermill, nbformat, monai) never imported."""
    template, expected = CHEAP_CASES[name]
    (tmp_path / "in.nii.gz").write_bytes(b"an existing input: never read, the arguments are refused first")
    (tmp_path / "diffusion.pt").write_bytes(zipfile_bytes())
    (tmp_path / "corrupt.pt").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "empty.pt").write_bytes(b"")
    argv = ["interpolate", *(a.replace("@/", f"{tmp_path}/") for a in template)]
    result, lines, seconds = _probe(argv, tmp_path)
    assert result["rc"] == 2 and len(lines) == 1, lines
    assert lines[0].startswith("ctlib interpolate: ") and expected in lines[0], lines[0]
    assert result["heavy"] == [], f"{name}: imported {result['heavy']} before refusing ({seconds:.2f} s)"

def zipfile_bytes() -> bytes:
    """A small valid zip archive, as torch.save writes (its content is never read by these refusals)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("diffusion/data.pkl", b"never unpickled here")
    return buffer.getvalue()


def test_output_folder_without_write_permission_is_refused(tmp_path, capsys, monkeypatch):
    """As root every folder is writable, so the permission is simulated: before, a folder that could not be
    written was found only when writing, after the whole interpolation."""
    (tmp_path / "in.nii.gz").write_bytes(b"never read")
    (tmp_path / "diffusion.pt").write_bytes(zipfile_bytes())
    denied = tmp_path / "locked"
    denied.mkdir()
    real_access = os.access
    monkeypatch.setattr(interp_cli.os, "access", lambda p, mode: Path(p) != denied and real_access(p, mode))
    _refused(capsys, [str(tmp_path / "in.nii.gz"), str(denied / "thin.nii.gz"), "--run",
                      str(tmp_path / "diffusion.pt")], f"no write permission in {denied}")
