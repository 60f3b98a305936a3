"""Conditional dose diffusion: scaling, conditioning channels, loss, deterministic DDIM sampling,
sliding windows."""

from __future__ import annotations

import pytest
import torch

from ctlib.models import latent_unet
from ctlib.studies.dose import diffusion, inference

C, K = 3, 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(constraint_channels: bool = True, prediction: str = "v") -> diffusion.DoseDiffusion:
    spec = diffusion.DoseDiffusionSpec(prediction=prediction, num_train_timesteps=50,
                                       constraint_channels=constraint_channels)
    config = latent_unet.LatentUNetConfig(
        channels=(8, 16),
        attention_levels=(False, False),
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=8,
        latent_channels=1,
        cond_channels=diffusion.condition_channels(C, K, spec),
    )
    torch.manual_seed(0)
    unet = latent_unet.build_latent_unet(config)
    return diffusion.DoseDiffusion(unet, spec, depth_multiple=latent_unet.required_depth_multiple(config),
                                   constraint_scales=(80.0, 1.0))


def _batch(depth: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "inputs": torch.randn(2, C, depth, 8, 8, generator=g),
        "constraints": torch.tensor([[70.0, 1.0], [56.0, 0.0]]),
        "dose": torch.rand(2, 1, depth, 8, 8, generator=g) * 70,
    }


def test_dose_scaling_round_trip():
    dose = torch.tensor([0.0, 40.0, 80.0])
    torch.testing.assert_close(diffusion.dose_to_unit(dose, 80.0), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(diffusion.unit_to_dose(diffusion.dose_to_unit(dose, 80.0), 80.0), dose)
    assert float(diffusion.unit_to_dose(torch.tensor(-1.5), 80.0)) == 0.0


def test_condition_appends_scaled_constraint_planes():
    model, batch = _model(), _batch()
    cond = model.condition(batch["inputs"], batch["constraints"])
    assert cond.shape == (2, C + K, 4, 8, 8)
    torch.testing.assert_close(cond[:, :C], batch["inputs"])
    assert (
        cond[0, C].unique().tolist() == pytest.approx([70 / 80]) and float(cond[1, C + 1].abs().max()) == 0.0
    )
    assert _model(constraint_channels=False).condition(batch["inputs"], batch["constraints"]).shape[1] == C


@pytest.mark.parametrize("prediction", ["v", "epsilon"])
def test_loss_is_finite_and_trains_the_unet(prediction):
    model = _model(prediction=prediction)
    loss, metrics = model(_batch())
    assert loss.ndim == 0 and torch.isfinite(loss) and 0 <= float(metrics["mean_t"]) < 50
    loss.backward()
    assert all(p.grad is not None for p in model.unet.parameters())
    assert all(k.startswith("unet.") for k in model.state_dict())


def test_ddim_sampling_shapes_and_determinism():
    # depth 3 is padded to the U-Net's multiple of 2 and cropped back
    model, batch = _model(), _batch(depth=3)

    def sample(seed: int, eta: float = 0.0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return model.sampler(num_steps=4, eta=eta, generator=generator)(batch["inputs"], batch["constraints"])

    a, b = sample(0), sample(0)
    assert a.shape == (2, 1, 3, 8, 8) and float(a.min()) >= 0.0 and float(a.max()) <= 80.0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, sample(1))
    assert not torch.equal(sample(0, eta=1.0), a)
    assert model.training  # restored after sampling


def test_sampler_plugs_into_sliding_window_inference():
    model, batch = _model(), _batch(depth=8)
    pdm = torch.ones(2, 1, 8, 8, 8, dtype=torch.bool)
    pdm[..., :2] = False
    out = inference.predict_dose(model.sampler(num_steps=2, generator=torch.Generator().manual_seed(0)),
                                 batch["inputs"], batch["constraints"], pdm, roi_size=(4, 8, 8), overlap=0.5)
    assert (
        out.shape == (2, 1, 8, 8, 8) and float(out[~pdm].abs().max()) == 0.0 and float(out[pdm].max()) > 0.0
    )


def test_spec_round_trip_and_checks():
    spec = diffusion.DoseDiffusionSpec(prediction="x0", min_snr_gamma=None)
    assert diffusion.DoseDiffusionSpec.from_dict(spec.to_dict()) == spec
    assert spec.noise_schedule().num_train_timesteps == 1000
    with pytest.raises(ValueError, match="prediction"):
        diffusion.DoseDiffusionSpec(prediction="score")
    with pytest.raises(ValueError, match="schedule"):
        diffusion.DoseDiffusionSpec(schedule="sigmoid")


def test_sampling_clips_x0_to_the_dose_normalization_range(monkeypatch):
    """The x0 clip must span the data range of the normalization (0 Gy .. dose_scale_gy): a clip to (0, 1)
    floors every predicted dose at 40 Gy and still returns doses inside [0, 80] Gy."""
    from ctlib.diffusion import samplers

    seen = {}

    def low_dose_sampler(denoiser, shape, *, clip_x0, **kwargs):
        seen["clip_x0"] = clip_x0
        return torch.full(shape, -1.0).clamp(*clip_x0)  # a sample whose x0 is 0 Gy everywhere

    monkeypatch.setattr(samplers, "get_sampler", lambda name: low_dose_sampler)
    model, batch = _model(), _batch()
    dose = model.sampler(num_steps=2)(batch["inputs"], batch["constraints"])
    low, high = seen["clip_x0"]
    assert float(diffusion.unit_to_dose(torch.tensor(low), 80.0)) == 0.0
    assert float(diffusion.unit_to_dose(torch.tensor(high), 80.0)) == pytest.approx(80.0)
    assert float(dose.max()) == 0.0  # a 0 Gy sample comes back as 0 Gy, not floored
    assert diffusion.unit_range(80.0) == (-1.0, 1.0) and diffusion.unit_range(70.0) == (-1.0, 1.0)
