"""The released dose model: export a tiny random-weight bundle (and an ensemble), load it back through the
checksums, float16 within its recorded difference, refusals naming the file, the size budget, the card."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ctlib import checkpoint
from ctlib import release as core
from ctlib.data import windows
from ctlib.errors import CTInputError
from ctlib.io.openkbp import ROI_NAMES
from ctlib.models import dose_unet
from ctlib.studies.dose import cli as dose_cli
from ctlib.studies.dose import datasets, evaluation, features, model_io, release_card, release_model, run_kind

SPACING_MM = (2.5, 3.906, 3.906)
CARD = {"training_data": "OpenKBP train, 80 patients", "split": "challenge split 80/20/40",
        "metrics": {"dose score (Gy)": 9.99}, "protocol": "OpenKBP dose and DVH scores, 40 test patients",
        "device": "a test CPU", "wall_time": "1 s"}


def tiny_bundle(seed: int = 0, *, roi_size=(16, 32, 32), run_id: str = "tiny_run") -> Any:
    """A random-weight FiLM U-Net on the ten OpenKBP structures, as ``load_dose_run`` would give it."""
    names = features.constraint_names()
    config = dose_unet.DoseUNetConfig(
        in_channels=datasets.num_input_channels(len(ROI_NAMES)), constraint_dim=len(names), channels=(4, 8),
        num_res_units=1, film_hidden=8, constraint_scales=datasets.constraint_scales(names, 80.0),
    )
    model_config = model_io.unet_model_config(config, "mae", {}, ROI_NAMES)
    torch.manual_seed(seed)
    module = model_io.build_module(model_config).eval().requires_grad_(False)
    normalization = {**windows.normalization_record("full"), "sdf_clip_mm": 50.0, "include_pdm": True}
    run = run_kind.DoseRun(module=module, model_config=model_config, normalization=normalization,
                           window=windows.get_window("full"), sdf_clip_mm=50.0, include_pdm=True,
                           preprocess_run_id="pre_run", patch_size=list(roi_size), step=2, has_ema=False,
                           weights="model", parameters={}, path=Path("/absent/checkpoints/dose_model.pt"))
    options = {"roi_size": list(roi_size), "overlap": 0.0, "blend": "constant", "sw_batch_size": 1,
               "sw_device": torch.device("cpu")}
    return evaluation.DoseModelBundle(run_id=run_id, variant="mae", module=module, run=run,
                                      window_options=options)


def export_tiny(weights: Path, name: str = "dose_tiny", **options) -> Path:
    """Export ``tiny_bundle`` (or ``options["bundle"]``) to ``weights/name`` on the synthetic phantom."""
    bundle = options.pop("bundle", None) or tiny_bundle()
    options = {"card": CARD, "training_spacing_mm": SPACING_MM, "test_patient": _phantom_patient(), **options}
    release_model.export_dose_release(bundle, name=name, weights_dir=weights, **options)
    return weights / name


_PHANTOM: list = []


def _phantom_patient():
    if not _PHANTOM:
        with pytest.MonkeyPatch.context() as mp:  # the synthetic phantom, whatever $CTLIB_DATA_DIR holds
            mp.setenv("CTLIB_DATA_DIR", "/nonexistent")
            _PHANTOM.append(release_model.measurement_patient(None)[0])
    return _PHANTOM[0]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    weights = tmp_path_factory.mktemp("weights")
    yield {"weights": weights, "w32": export_tiny(weights / "a", precision="float32"),
           "auto": export_tiny(weights / "b", fp16_tolerance_gy=10.0)}
    torch.set_num_threads(threads)


def test_default_name_is_the_one_the_command_uses():
    assert release_model.DEFAULT_NAME == dose_cli.DEFAULT_RELEASE == "dose_unet"


def test_float32_release_rebuilds_the_bundle_exactly(released):
    original, patient = tiny_bundle(), release_model.crop_window(_phantom_patient(), (16, 32, 32))
    loaded = release_model.open_dose_release(released["w32"])
    model = loaded.model
    assert isinstance(model, evaluation.DoseModelBundle) and loaded.config["dtype"] == "float32"
    assert model.run_id == "tiny_run" and model.variant == "mae" and model.run.step == 2
    assert model.run.preprocess_run_id == "pre_run" and model.run.window.name == "full"
    assert model.window_options == {**original.window_options}  # roi, overlap, blend; device put back
    assert loaded.training_spacing_mm == SPACING_MM
    assert loaded.sha256 == core.sha256((released["w32"] / core.WEIGHTS_FILE).read_bytes())
    np.testing.assert_array_equal(model.predict(patient), original.predict(patient))


def test_float16_release_stays_within_the_recorded_difference(released):
    loaded = release_model.open_dose_release(released["auto"])
    decision = loaded.config["precision"]
    assert loaded.config["dtype"] == "float16" and decision["dtype"] == "float16"
    assert 0 < decision["max_abs_diff"] <= 10.0 and decision["unit"] == "Gy"
    stored = core.read_release(released["auto"]).tensors
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    window = release_model.crop_window(_phantom_patient(), (16, 32, 32))
    difference = np.abs(loaded.model.predict(window) - tiny_bundle().predict(window)).max()
    assert difference == pytest.approx(decision["max_abs_diff"], rel=1e-4)  # the same window was measured
    assert (released["auto"] / core.WEIGHTS_FILE).stat().st_size < 0.6 * (
        released["w32"] / core.WEIGHTS_FILE).stat().st_size


def test_export_leaves_the_bundles_float32_weights_in_place(tmp_path):
    bundle = tiny_bundle()
    before = {k: v.clone() for k, v in bundle.module.state_dict().items()}
    export_tiny(tmp_path, bundle=bundle, fp16_tolerance_gy=10.0)
    for key, value in bundle.module.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_inference_options_travel_generically(tmp_path):
    bundle = tiny_bundle()
    bundle.tta, bundle.sample_steps, bundle.seed = True, 7, 3
    folder = export_tiny(tmp_path, bundle=bundle, precision="float32")
    member = json.loads((folder / core.CONFIG_FILE).read_text())["members"][0]
    assert member["inference"]["tta"] is True and "sw_device" not in member["inference"]["window_options"]
    model = release_model.load_dose_release(folder)
    assert (model.tta, model.sample_steps, model.seed) == (True, 7, 3)
    # an option this ctlib does not know is refused, not ignored: the prediction would differ silently
    config = json.loads((folder / core.CONFIG_FILE).read_text())
    config["members"][0]["inference"]["flip_axes"] = [0, 1]
    (folder / core.CONFIG_FILE).write_text(json.dumps(config))
    core.write_sums(folder)
    with pytest.raises(CTInputError, match=r"config.json: inference options \['flip_axes'\] are unknown"):
        release_model.load_dose_release(folder)


def test_an_ensemble_round_trips(tmp_path):
    members = [tiny_bundle(0, run_id="run_a"), tiny_bundle(1, run_id="run_b")]
    folder = export_tiny(tmp_path, bundle=members, precision="float32")
    model = release_model.load_dose_release(folder)
    assert [m.run_id for m in model.members] == ["run_a", "run_b"]
    window = release_model.crop_window(_phantom_patient(), (16, 32, 32))
    expected = (members[0].predict(window).astype(np.float64) + members[1].predict(window)) / 2
    np.testing.assert_allclose(model.predict(window), expected, rtol=1e-6, atol=1e-6)
    assert "Ensemble of 2 models" in (folder / core.CARD_FILE).read_text()


@pytest.mark.parametrize("file", [core.WEIGHTS_FILE, core.CONFIG_FILE])
def test_a_flipped_byte_is_refused_naming_the_file(released, tmp_path, file):
    folder = tmp_path / "copy"
    shutil.copytree(released["w32"], folder)
    data = bytearray((folder / file).read_bytes())
    position = len(data) - 10 if file == core.WEIGHTS_FILE else data.index(b'"training_spacing_mm"') + 30
    data[position] ^= 0x01
    (folder / file).write_bytes(bytes(data))
    with pytest.raises(CTInputError) as err:
        release_model.load_dose_release(folder)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(folder / file)) and "modified or is corrupt" in line


def test_loading_never_unpickles(released, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a release must load without pickle")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    release_model.load_dose_release(released["auto"])


def test_other_kinds_and_missing_folders_are_refused(released, tmp_path):
    with pytest.raises(CTInputError, match="no such folder"):
        release_model.load_dose_release(tmp_path / "absent")
    folder = tmp_path / "other"
    shutil.copytree(released["w32"], folder)
    config = json.loads((folder / core.CONFIG_FILE).read_text())
    config["kind"] = "slice_interp.residual_regressor"
    (folder / core.CONFIG_FILE).write_text(json.dumps(config))
    core.write_sums(folder)
    with pytest.raises(CTInputError, match="a release of kind 'slice_interp.residual_regressor'"):
        release_model.load_dose_release(folder)


def test_the_budget_is_checked_before_writing(released, tmp_path):
    shutil.copytree(released["w32"], tmp_path / "already")
    size_mb = core.folder_bytes(tmp_path / "already") / core.MB
    with pytest.raises(core.BudgetExceeded, match="nothing written"):
        export_tiny(tmp_path, name="second", precision="float32", budget_mb=1.5 * size_mb)
    assert not (tmp_path / "second").exists()
    export_tiny(tmp_path, name="second", precision="float32", budget_mb=2.5 * size_mb)
    assert core.verify_release(tmp_path / "second") == sorted(core.RELEASE_FILES)


def test_the_card_states_its_fields_and_flags_missing_ones(released, tmp_path):
    text = (released["w32"] / core.CARD_FILE).read_text()
    for fragment in ("## Architecture", "FiLM-conditioned 3D residual U-Net", "channels [4, 8]",
                     "Data: OpenKBP train, 80 patients", "Split: challenge split 80/20/40",
                     "Archived run: `tiny_run`", "Steps: 2", "Device: a test CPU", "Wall time: 1 s",
                     "Protocol: OpenKBP dose and DVH scores", "| dose score (Gy) | 9.99 |",
                     "**float32**: float32 asked for", "(2.5, 3.906, 3.906) mm",
                     "sliding windows [16, 32, 32]"):
        assert fragment in text, fragment
    report = release_model.prepare_dose_release(tiny_bundle(), card=None, training_spacing_mm=SPACING_MM,
                                                test_patient=_phantom_patient(), precision="float32").report
    assert report["card_fields_not_given"] == list(release_card.REQUIRED)
    with pytest.raises(ValueError, match="unknown"):
        release_card.card_info({"training_data": "x", "dataset": "typo"})


def test_training_spacing_is_the_median_of_the_patients(tmp_path):
    for n, voxel in enumerate(([4.0, 4.0, 2.5], [3.0, 3.0, 2.0], [5.0, 5.0, 3.0])):
        np.savez(tmp_path / f"pt_{n}.npz", voxel_size_mm=np.array(voxel))  # (i, j, k) -> (dz, dy, dx)
    assert release_model.training_spacing_from(tmp_path) == (2.5, 4.0, 4.0)
    with pytest.raises(ValueError, match="no patient .npz files"):
        release_model.training_spacing_from(tmp_path / "empty")


def test_export_command_from_a_training_run(tmp_path, capsys):
    """``python -m ctlib.studies.dose.release_model export RUN``: the checkpoint, params.json and run.json
    of a run of the training notebook, as the coordinator will release it."""
    bundle = tiny_bundle()
    run_dir = tmp_path / "runs" / "20261201-000000_dose_train_abcd"
    (run_dir / "checkpoints").mkdir(parents=True)
    checkpoint.save_checkpoint(
        run_dir / "checkpoints" / "dose_model.pt", model_state=bundle.module.state_dict(),
        config={"model": bundle.model_config}, normalization=bundle.run.normalization,
        extra={"preprocess_run_id": "pre_run", "patch_size": [16, 32, 32], "step": 1500}, rng_state=False,
    )
    params = {"sw_roi": [16, 32, 32], "sw_overlap": 0.25}
    (run_dir / "params.json").write_text(json.dumps({"parameters": params}))
    (run_dir / "run.json").write_text(json.dumps({
        "run_id": run_dir.name, "notebook": "notebooks/dose/2026-11-23_02_dose_train.ipynb",
        "duration_s": 125, "device": {"cuda_available": False, "cpu_count": 2}, "git": {"commit": "abc123"}}))
    card = {k: v for k, v in CARD.items() if k not in ("device", "wall_time")}  # from run.json instead
    (tmp_path / "card.json").write_text(json.dumps(card))
    argv = ["export", str(run_dir), "--out", str(tmp_path / "weights"), "--card", str(tmp_path / "card.json"),
            "--precision", "float32", "--training-spacing-mm", "2.5", "3.906", "3.906", "--tta"]
    assert release_model.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["models"]["dose_unet"]["total_mb"] > 0
    model = release_model.load_dose_release(tmp_path / "weights" / "dose_unet")
    assert model.run_id == run_dir.name and model.run.step == 1500 and model.tta is True
    assert model.window_options["roi_size"] == [16, 32, 32] and model.window_options["overlap"] == 0.25
    window = release_model.crop_window(_phantom_patient(), (16, 32, 32))
    bundle.tta, bundle.window_options["overlap"] = True, 0.25
    np.testing.assert_allclose(model.predict(window), bundle.predict(window), rtol=1e-5, atol=1e-5)
    card = (tmp_path / "weights" / "dose_unet" / core.CARD_FILE).read_text()
    assert "Device: CPU (2 cores)" in card and "Wall time: 2 min 05 s" in card and "Steps: 1500" in card
    assert release_model.main(["verify", str(tmp_path / "weights" / "dose_unet")]) == 0
    assert release_model.main([*argv, "--budget-mb", "0.001"]) == 2
    assert "over the budget" in capsys.readouterr().err
    # evaluation's default: the release unless a run is named
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTLIB_WEIGHTS_DIR", str(tmp_path / "weights"))
        assert release_model.load_dose_model().run.path == tmp_path / "weights" / "dose_unet"
        assert release_model.load_dose_model("dose_unet").run_id == run_dir.name
        from_run = release_model.load_dose_model(run_dir, roi_size=[8, 16, 16])
        assert from_run.run.path == run_dir / "checkpoints" / "dose_model.pt"
        assert from_run.window_options["roi_size"] == [8, 16, 16]
