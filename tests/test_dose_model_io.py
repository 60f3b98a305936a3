"""Dose model configs: build, checkpoint with the training loop, load back (EMA for diffusion), predict."""

from __future__ import annotations

import pytest
import torch

from ctlib.diffusion.ema import EMA
from ctlib.models import dose_unet, latent_unet
from ctlib.studies.dose import datasets, diffusion, inference, losses, model_io, run_kind
from ctlib.train import loop
from tests.test_dose_datasets import ROIS, synthetic_patient

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(model_config, tmp_path, ema: bool = False):
    patient = synthetic_patient()
    ds = datasets.DosePatchDataset([patient], patch_size=(4, 8, 8), patches_per_patient=2)
    torch.manual_seed(0)
    module = model_io.build_module(model_config)
    tracker = EMA(module, decay=0.5) if ema else None
    config = loop.TrainConfig(steps=2, batch_size=2, lr=1e-2, log_every=1)
    loop.train(
        module,
        loop.forward_loss,
        loop.batch_stream(ds, config),
        config,
        checkpoint_path=tmp_path / "m.pt",
        normalization=ds.normalization,
        model_config=model_config,
        ema=tracker,
    )
    return module, tracker, patient


def test_unet_round_trip(tmp_path):
    net = dose_unet.DoseUNetConfig(
        in_channels=4, constraint_dim=4, channels=(4, 8), num_res_units=1, film_hidden=8
    )
    config = model_io.unet_model_config(
        net, "ptv_underdose", {"underdose_weight": 3.0, "dvh_weight": 1.0}, ROIS
    )
    assert config["loss_options"] == {"underdose_weight": 3.0}  # options of other losses are dropped
    module, _, patient = _train(config, tmp_path)
    run = run_kind.DoseRun.load(tmp_path / "m.pt")
    loaded = run.module
    assert isinstance(loaded, losses.DoseLoss) and loaded.loss_name == "ptv_underdose" and not loaded.training
    assert run.model_config == config and model_io.required_multiple(config) == 2
    assert (run.kind, run.variant, run.has_ema, run.parameters) == ("unet", "ptv_underdose", False, {})
    a = inference.predict_patient(model_io.dose_predictor(module), patient, roi_size=(4, 8, 8))
    b = inference.predict_patient(model_io.dose_predictor(loaded), patient, roi_size=(4, 8, 8))
    assert a.max() > 0 and (a == b).all()


def test_diffusion_round_trip_uses_ema(tmp_path):
    spec = diffusion.DoseDiffusionSpec(num_train_timesteps=20)
    net = latent_unet.LatentUNetConfig(channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                                       num_head_channels=8, norm_num_groups=8, latent_channels=1,
                                       cond_channels=diffusion.condition_channels(4, 4, spec))
    config = model_io.diffusion_model_config(net, spec, (80.0, 80.0, 1.0, 1.0), ROIS)
    module, tracker, _ = _train(config, tmp_path, ema=True)
    loaded = run_kind.DoseRun.load(tmp_path / "m.pt").module
    raw = run_kind.DoseRun.load(tmp_path / "m.pt", use_ema=False).module
    name = next(iter(tracker.shadow))
    torch.testing.assert_close(dict(loaded.named_parameters())[name], tracker.shadow[name])
    torch.testing.assert_close(dict(raw.named_parameters())[name], dict(module.named_parameters())[name])
    predictor = model_io.dose_predictor(loaded, sample_steps=2, generator=torch.Generator().manual_seed(0))
    out = predictor(torch.zeros(1, 4, 4, 8, 8), torch.tensor([[70.0, 54.0, 1.0, 1.0]]))
    assert out.shape == (1, 1, 4, 8, 8) and float(out.min()) >= 0


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="kind"):
        model_io.build_module({"kind": "gan"})
    with pytest.raises(TypeError, match="DoseLoss or DoseDiffusion"):
        model_io.dose_predictor(torch.nn.Linear(1, 1))
