"""Released models (issue 12.3): export -> load round trips (float32 exact, float16 within the recorded
tolerance), checksums that name a modified file, no unpickling, the size budget, and ``ctlib interpolate``
on the release when no ``--run`` is given (tiny random models, CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_cli_refusals import PROBE
from test_interp_pipeline import make_diffusion_run
from test_interp_regression import TINY as TINY_REGRESSOR
from test_interp_regression import save_regressor

from ctlib import cli, paths
from ctlib import release as core
from ctlib.data import phantom, windows
from ctlib.diffusion.ema import EMA
from ctlib.errors import CTInputError
from ctlib.io import nifti
from ctlib.models import regressor
from ctlib.studies.interp import bundle, pipeline, regression, release, thick_slices
from ctlib.studies.interp import cli as interp_cli

FAST = {"steps": 2, "progress": False, "seed": 0}
CARD = {"training_data": "tiny random weights, no data", "split": "none", "protocol": "none",
        "metrics": {"PSNR full window (dB)": 12.3}}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A diffusion run (with its VAE run) and a regressor checkpoint, and their releases: float32 (tolerance 0
    measured, float16 refused) and float16 (a tolerance it meets)."""
    root = tmp_path_factory.mktemp("release")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(paths.RUNS_ENV_VAR, str(root / "runs"))
        run_id = make_diffusion_run(factor=4)
        run_dir = paths.runs_dir() / run_id
        fp32 = release.export_interpolator(run_id, root / "w32", card=CARD, fp16_tolerance_hu=0.0, steps=3)
        fp16 = release.export_interpolator(run_id, root / "w16", card=CARD, fp16_tolerance_hu=1e6, steps=3)
    torch.manual_seed(0)
    model = regressor.build_regressor(regressor.RegressorConfig(**{**TINY_REGRESSOR.to_dict(),
                                                                   "zero_init_output": False}))
    averaged = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    averaged.update(model)
    reg_ckpt = save_regressor(root / "regressor.pt", model, ema=averaged)
    reg32 = release.export_regressor(reg_ckpt, root / "w32", precision="float32")  # not measured: faster
    reg16 = release.export_regressor(reg_ckpt, root / "w16", fp16_tolerance_hu=1e6)
    return {
        "root": root, "diffusion": run_dir / "checkpoints" / "diffusion.pt",
        "vae": Path(root / "runs" / f"{run_id}_vae" / "checkpoints" / "vae.pt"),
        "regressor": reg_ckpt, "reports": {"fp32": fp32, "fp16": fp16, "reg32": reg32, "reg16": reg16},
    }


def _thick(factor: int = 4):
    return thick_slices.simulate_thick(phantom.ct_phantom(shape=(6 * factor, 32, 48), seed=1), factor)


def _precision(folder):
    return json.loads((folder / core.CONFIG_FILE).read_text())["precision"]


# ------------------------------------------------------------------------------- round trips
def test_float32_release_reproduces_the_run_exactly(models):
    folder = models["root"] / "w32" / release.DEFAULT_INTERPOLATOR
    precision = _precision(folder)
    assert precision["dtype"] == "float32" and precision["max_abs_diff"] > 0
    assert "> 0 HU" in precision["reason"]
    released = release.load_released_interpolator(folder, device="cpu")
    original = bundle.load_interpolator(models["diffusion"], vae_checkpoint=models["vae"], device="cpu")
    assert (released.spec, released.scale_factor, released.window, released.depth_multiple) == (
        original.spec, original.scale_factor, original.window, original.depth_multiple)
    for a, b in ((released.vae, original.vae), (released.unet, original.unet)):
        assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    thick = _thick()
    out = pipeline.interpolate_volume(thick, released, **FAST).mean.array
    np.testing.assert_array_equal(out, pipeline.interpolate_volume(thick, original, **FAST).mean.array)


def test_float16_release_stays_within_the_recorded_difference(models):
    folder = models["root"] / "w16" / release.DEFAULT_INTERPOLATOR
    precision = _precision(folder)
    assert precision["dtype"] == "float16" and 0 < precision["max_abs_diff"] <= precision["tolerance"]
    with safe_open(str(folder / core.WEIGHTS_FILE), "pt") as stored:
        assert {stored.get_slice(k).get_dtype() for k in stored.keys()} == {"F16"}
    size32 = (models["root"] / "w32" / release.DEFAULT_INTERPOLATOR / core.WEIGHTS_FILE).stat().st_size
    assert (folder / core.WEIGHTS_FILE).stat().st_size < 0.55 * size32
    released = release.load_released_interpolator(folder, device="cpu")
    original = bundle.load_interpolator(models["diffusion"], vae_checkpoint=models["vae"], device="cpu")
    thick, _ = release.measurement_volume(None, 4, "slab")  # the exporter's measurement, repeated
    settings = {"steps": 3, "seed": 0, "progress": False, "data_consistency": False}
    ours = pipeline.interpolate_volume(thick, released, **settings).mean.array
    theirs = pipeline.interpolate_volume(thick, original, **settings).mean.array
    assert np.abs(ours - theirs).max() == pytest.approx(precision["max_abs_diff"], rel=1e-6)


def test_regressor_round_trips(models):
    thick, roi = _thick(), (16, 32, 48)
    original = regression.load_regressor_run(models["regressor"], device="cpu")
    expected = regression.interpolate_regression(thick, original, 4, roi_size=roi).array
    exact = release.load_released_regressor(models["root"] / "w32" / release.DEFAULT_REGRESSOR, device="cpu")
    assert (exact.factor, exact.mode, exact.window) == (4, "slab", original.window)
    assert exact.meta["weights"] == "ema"
    ours = regression.interpolate_regression(thick, exact, 4, roi_size=roi).array
    np.testing.assert_array_equal(ours, expected)
    half_dir = models["root"] / "w16" / release.DEFAULT_REGRESSOR
    precision = _precision(half_dir)
    assert precision["dtype"] == "float16" and precision["max_abs_diff"] > 0
    half = release.load_released_regressor(half_dir, device="cpu")
    measured, _ = release.measurement_volume(None, 4, "slab")
    diff = np.abs(regression.interpolate_regression(measured, half, 4).array
                  - regression.interpolate_regression(measured, original, 4).array)
    assert diff.max() == pytest.approx(precision["max_abs_diff"], rel=1e-6)


def test_precision_decision_in_closed_form():
    state = {"w": torch.tensor([1 / 3], dtype=torch.float32), "n": torch.tensor([7])}
    error = abs(float(torch.tensor(1 / 3).half().float()) - float(torch.tensor(1 / 3))) * 3000

    def evaluate(tensors):
        assert tensors["n"].dtype == torch.int64  # integers are never cast
        return tensors["w"].double().numpy() * 3000

    kw = {"metric": "w * 3000", "unit": "HU", "peak": 4095.0}
    assert core.decide_precision(state, evaluate, tolerance=error * 1.01, **kw).dtype == "float16"
    kept = core.decide_precision(state, evaluate, tolerance=error * 0.99, **kw)
    assert kept.dtype == "float32" and kept.max_abs_diff == pytest.approx(error)
    huge = core.decide_precision({"w": torch.tensor([1e6])}, evaluate, tolerance=1e9, **kw)
    assert huge.dtype == "float32" and "cannot hold" in huge.reason


# --------------------------------------------------------------------------- checks on loading
def _copy(models, tmp_path, which="w32", name=release.DEFAULT_INTERPOLATOR):
    target = tmp_path / name
    shutil.copytree(models["root"] / which / name, target)
    return target


@pytest.mark.parametrize("file", [core.WEIGHTS_FILE, core.CONFIG_FILE])
def test_a_modified_byte_is_refused_naming_the_file(models, tmp_path, file):
    folder = _copy(models, tmp_path)
    data = bytearray((folder / file).read_bytes())
    position = len(data) - 10 if file == core.WEIGHTS_FILE else data.index(b'"scale_factor": 0.8') + 18
    data[position] ^= 0x01  # a weight's low bit, or 0.8 -> 0.9: still valid safetensors / JSON
    (folder / file).write_bytes(bytes(data))
    with pytest.raises(CTInputError) as err:
        release.load_released_interpolator(folder, device="cpu")
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(folder / file)) and "modified or is corrupt" in line


def test_unlisted_files_and_edited_cards(models, tmp_path):
    folder = _copy(models, tmp_path)
    sums = (folder / core.SUMS_FILE).read_text().splitlines()
    (folder / core.SUMS_FILE).write_text("\n".join(s for s in sums if core.CONFIG_FILE not in s) + "\n")
    with pytest.raises(CTInputError, match="config.json: not listed in SHA256SUMS"):
        release.load_released_interpolator(folder)
    folder = _copy(models, tmp_path / "second")
    with (folder / core.CARD_FILE).open("a") as card:
        card.write("an edit\n")
    release.load_released_interpolator(folder, device="cpu")  # the loader checks what it reads
    with pytest.raises(CTInputError, match="MODEL_CARD.md: SHA-256 differs"):
        core.verify_release(folder)
    core.write_sums(folder)  # a deliberate edit is signed again
    assert core.verify_release(folder) == sorted(core.RELEASE_FILES)
    with pytest.raises(CTInputError, match="a release of kind 'slice_interp.latent_diffusion'"):
        release.load_released_regressor(folder)
    with pytest.raises(CTInputError, match="no such folder"):
        release.load_released_interpolator(tmp_path / "absent")


def test_loading_never_unpickles(models, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a release must load without pickle")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    for which in ("w32", "w16"):
        weights = models["root"] / which
        release.load_released_interpolator(weights / release.DEFAULT_INTERPOLATOR, device="cpu")
        release.load_released_regressor(weights / release.DEFAULT_REGRESSOR, device="cpu")


def test_size_budget_is_checked_before_writing(models, tmp_path):
    existing = _copy(models, tmp_path / "weights")
    loaded = core.read_release(existing)
    item = core.Release(name="second", tensors=loaded.tensors, config={"kind": "k"}, card="card")
    size = core.folder_bytes(existing) / core.MB
    with pytest.raises(core.BudgetExceeded, match=r"over the budget of .* nothing written") as err:
        core.write_releases(tmp_path / "weights", [item], budget_mb=1.5 * size)
    assert release.DEFAULT_INTERPOLATOR in str(err.value) and not (tmp_path / "weights" / "second").exists()
    same_name = dataclasses.replace(item, name=release.DEFAULT_INTERPOLATOR)
    report = core.write_releases(tmp_path / "weights", [same_name], budget_mb=1.5 * size)  # replaces it
    assert report["total_mb"] < 1.5 * size and list(report["models"]) == [release.DEFAULT_INTERPOLATOR]


# ----------------------------------------------------------------------------- command lines
def test_export_and_verify_commands(models, tmp_path, capsys):
    card = tmp_path / "card.yaml"
    card.write_text("training_data: tiny\nsplit: none\nprotocol: none\nmetrics: {PSNR: 1.0}\n")
    argv = ["export", "--diffusion-run", str(models["diffusion"]), "--vae", str(models["vae"]),
            "--regressor-run", str(models["regressor"]), "--out", str(tmp_path / "w"),
            "--precision", "float32", "--diffusion-card", str(card)]
    assert release.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["models"]) == [release.DEFAULT_INTERPOLATOR, release.DEFAULT_REGRESSOR]
    assert report["models"][release.DEFAULT_INTERPOLATOR]["card_fields_not_given"] == []
    assert report["models"][release.DEFAULT_REGRESSOR]["card_fields_not_given"] == list(
        release.model_card.REQUIRED)
    card_text = (tmp_path / "w" / release.DEFAULT_INTERPOLATOR / core.CARD_FILE).read_text()
    assert "| PSNR | 1.0 |" in card_text and "`diffusion_run_vae`" in card_text
    assert "float32 asked for" in card_text
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(paths.WEIGHTS_ENV_VAR, str(tmp_path / "w"))
        assert release.main(["verify"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert release.main([*argv, "--budget-mb", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "over the budget of 0.01 MB" in err


def test_interpolate_without_run_uses_the_release(models, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    _copy(models, weights)
    monkeypatch.setenv(paths.WEIGHTS_ENV_VAR, str(weights))
    thick = _thick().with_array(np.rint(_thick().array))
    thick.meta.pop(thick_slices.META_KEY)
    nifti.write_nifti(thick, tmp_path / "thick.nii.gz")
    common = [str(tmp_path / "thick.nii.gz"), "--steps", "2", "--quiet"]
    assert cli.main(["interpolate", common[0], str(tmp_path / "a.nii.gz"), *common[1:]]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == str(weights / release.DEFAULT_INTERPOLATOR) and summary["shape"][0] == 24
    assert cli.main(["interpolate", common[0], str(tmp_path / "b.nii.gz"), *common[1:],
                     "--run", str(models["diffusion"]), "--vae", str(models["vae"])]) == 0
    capsys.readouterr()
    a, b = (nifti.read_nifti(tmp_path / f"{n}.nii.gz").array for n in "ab")
    np.testing.assert_array_equal(a, b)  # the float32 release is the run
    fp16 = str(models["root"] / "w16" / release.DEFAULT_INTERPOLATOR)  # a release named by --run
    assert cli.main(["interpolate", common[0], str(tmp_path / "c.nii.gz"), *common[1:], "--run", fp16]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == fp16
    assert 0 < np.abs(nifti.read_nifti(tmp_path / "c.nii.gz").array - a).max() < 100
    assert cli.main(["interpolate", common[0], str(tmp_path / "d.nii.gz"), "--vae", str(models["vae"])]) == 2
    assert "--vae goes with a diffusion run" in capsys.readouterr().err


def test_interpolate_without_run_or_release_refuses_before_torch(tmp_path):
    (tmp_path / "in.nii.gz").write_bytes(b"never read")
    argv = ["interpolate", str(tmp_path / "in.nii.gz"), str(tmp_path / "out.nii.gz")]
    env = {**os.environ, paths.WEIGHTS_ENV_VAR: str(tmp_path / "weights")}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True,
                          env=env, timeout=60)
    result, lines = json.loads(done.stdout.strip().splitlines()[-1]), done.stderr.strip().splitlines()
    assert result == {"rc": 2, "heavy": []} and len(lines) == 1, done.stderr
    folder = tmp_path / "weights" / release.DEFAULT_INTERPOLATOR
    assert f"{folder}: no released interpolation model yet (no such folder)" in lines[0]
    assert "--run RUN_ID" in lines[0] and "release export --diffusion-run" in lines[0]


def test_help_states_where_thin_slices_go_as_the_upsampler_places_them(capsys):
    with pytest.raises(SystemExit):
        cli.main(["interpolate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Thick slice k sits at thin index (factor - 1) / 2 + k * factor" in text
    assert "output origin = first thick centre - (factor - 1) / 2 * thin spacing" in text
    assert interp_cli.DEFAULT_RELEASE == release.DEFAULT_INTERPOLATOR
    thick = phantom.ct_phantom(shape=(4, 8, 8), spacing_mm=(5.0, 1.0, 1.0))
    thin = thick_slices.upsample_z(thick, 6, "linear")
    assert thin.shape[0] == 24 and thin.spacing[0] == pytest.approx(5 / 6)
    np.testing.assert_allclose(thin.slice_positions()[0], thick.slice_positions()[0] - [0, 0, 2.5 * 5 / 6])
    halfway = (thin.slice_positions()[2::6] + thin.slice_positions()[3::6]) / 2
    np.testing.assert_allclose(halfway, thick.slice_positions(), atol=1e-9)


def test_an_unknown_precision_is_refused():
    """Before: 'fp16' (not a Precision) fell through to the 'auto' decision without a word."""
    with pytest.raises(ValueError, match="precision must be 'auto', 'float16' or 'float32', got 'fp16'"):
        release._decide({}, lambda state: np.zeros(1), "fp16", 1.0, windows.FULL, "x", "y")
