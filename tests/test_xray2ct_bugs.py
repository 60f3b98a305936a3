"""The eleven faults of the X-ray-to-CT bug report (issue 14), each pinned by a test on the code the study
runs. Bugs 6 (lateral view at 90 degrees) and 10 (Beer-Lambert, not a sum) are also covered by
tests/test_physics_drr.py and tests/test_xray2ct_pairs.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctlib.diffusion import parameterization, samplers, schedules
from ctlib.diffusion.denoiser import Denoiser
from ctlib.physics import attenuation, drr
from ctlib.runs import params as run_params
from ctlib.studies.xray2ct import networks, normalization, projection, sampling, training
from ctlib.studies.xray2ct.views import ViewGeometry

GEOMETRY = ViewGeometry(
    volume_size=16, voxel_mm=16.0, detector_size_mm=(449.0, 449.0), detector_pixels=(16, 16), n_samples=32
)
TINY = {
    "lift": {"channels": 8, "features": [4, 4, 8, 8, 16, 4]}, "unet_features": (4, 4, 8, 8, 16, 4),
    "channels": (8, 8), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 8,
}  # fmt: skip
DIFFUSION_NOTEBOOK = "notebooks/xray2ct/2026-12-04_04_xray2ct_diffusion.ipynb"


def _model(kind: str = "diffusion", seed: int = 0) -> networks.DiffusionX2CT | networks.DeterministicX2CT:
    torch.manual_seed(seed)
    model = networks.build(networks.X2CTConfig(kind=kind, geometry=GEOMETRY.to_dict(), **TINY))
    if kind == "diffusion":  # MONAI zero-initializes the output convolution: give it trained-like weights
        with torch.no_grad():
            for p in model.unet.out.parameters():
                p.normal_(0.0, 0.1)
    return model


class OracleV(torch.nn.Module):
    """The exact v of a known x0: ``v = a eps - s x0`` with ``eps = (x_t - a x0) / s``."""

    def __init__(self, x0: torch.Tensor, schedule: schedules.NoiseSchedule) -> None:
        super().__init__()
        self.x0, self.schedule = x0, schedule

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedules.extract(self.schedule.alphas_cumprod, t, x_t.ndim).to(x_t.dtype)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        return a * (x_t - a * self.x0) / s - s * self.x0


def test_bug1_ddim_with_v_prediction_recovers_x0_from_the_exact_velocity() -> None:
    schedule = training.SPEC.noise_schedule()
    x0 = torch.rand(2, 1, 4, 4, 4) * 2 - 1
    denoiser = Denoiser(OracleV(x0, schedule), "v", schedule)
    out = samplers.ddim(denoiser, tuple(x0.shape), num_steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    # the conversions themselves: x0 = a x_t - s v, eps = a v + s x_t = (x_t - a x0) / s
    t = torch.tensor([500, 500])
    noise = torch.randn_like(x0)
    x_t = parameterization.q_sample(x0, t, noise, schedule)
    v = parameterization.velocity(x0, noise, t, schedule)
    x0_hat, eps_hat = parameterization.predict_x0_eps("v", v, x_t, t, schedule)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_hat, noise, atol=1e-5, rtol=0)


class TimestepSpy(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.seen = unet, []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(t.detach().clone())
        return self.unet(x, t)


def test_bug2_the_time_embedding_sees_the_same_raw_timesteps_in_training_and_sampling() -> None:
    model = _model()
    spy = TimestepSpy(model.unet)
    model.unet = spy
    volumes = torch.rand(64, 1, *GEOMETRY.shape) * 2 - 1
    drrs = GEOMETRY.render_hu(normalization.to_hu(volumes[:, 0], normalization.RECON)).detach()
    torch.manual_seed(0)
    training.DiffusionLoss(GEOMETRY, normalization.RECON)({"volume": volumes, "drrs": drrs}, model)
    trained = spy.seen[-1]
    spy.seen.clear()
    sampling.sample_volumes(model, drrs[0], training.SPEC, num_samples=1, num_steps=4)
    sampled = torch.cat(spy.seen)
    assert trained.dtype == sampled.dtype == torch.long
    assert trained.max() > 500 and trained.max() <= 999  # raw indices 0 .. T-1, not t / T
    assert sampled.tolist() == samplers.ddim_timesteps(1000, 4).tolist()  # the same scale: 999 .. 0


def test_bug3_predicted_x0_is_clamped_to_the_data_range_with_a_small_margin(monkeypatch) -> None:
    assert normalization.clip_range() == (-1.05, 1.05)
    seen = {}
    ddim = samplers.ddim

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return ddim(*args, **kwargs)

    monkeypatch.setattr(samplers, "ddim", spy)
    sampling.sample_volumes(_model(), torch.rand(2, 16, 16), training.SPEC, num_samples=1, num_steps=2)
    assert seen["clip_x0"] == normalization.clip_range()
    x_t = torch.randn(1, 1, 4, 4, 4) * 20  # a wild prediction: the implied x0 is clamped, not left at +-40
    _, x0 = samplers.ddim_step(
        torch.full_like(x_t, 40.0), x_t, 999, 500, training.SPEC.noise_schedule(), prediction="v",
        clip_x0=seen["clip_x0"],
    )  # fmt: skip
    assert x0.abs().max() <= 1.05 + 1e-6


def test_bug4_the_window_keeps_soft_tissue_contrast_and_is_recorded() -> None:
    fat, muscle, air, lung = (
        normalization.to_model(torch.tensor(h), normalization.RECON) for h in (-100.0, 40.0, -1000.0, -800.0)
    )
    assert float(muscle - fat) >= 0.1  # X2CT-GAN's 4095-wide normalization gives 0.068
    assert float(lung - air) >= 0.1 and float(air) == -1.0
    full = normalization.window_named("full")
    assert (
        float(
            normalization.to_model(torch.tensor(40.0), full)
            - normalization.to_model(torch.tensor(-100.0), full)
        )
        < 0.1
    )
    assert normalization.window_named("recon") is normalization.RECON


def test_bug5_the_projection_loss_uses_the_real_renderer_without_per_sample_normalization() -> None:
    hu = torch.full((1, *GEOMETRY.shape), 0.0)  # water
    drrs = GEOMETRY.render_hu(hu)
    x = normalization.to_model(hu, normalization.RECON)[:, None]
    assert float(projection.projection_loss(x, drrs, GEOMETRY, normalization.RECON)[0]) < 1e-6
    denser = normalization.to_model(torch.full_like(hu, 1000.0), normalization.RECON)[:, None]  # twice water
    loss = float(projection.projection_loss(denser, drrs, GEOMETRY, normalization.RECON)[0])
    # the rendered line integrals double: the loss is their mean absolute excess, not 0 as after normalizing
    expected = float(drrs.mean()) / projection.LINE_INTEGRAL_SCALE
    assert loss == pytest.approx(expected, rel=1e-3)
    chords = GEOMETRY.chord_lengths_mm()
    assert float(drrs[0, 0].max()) == pytest.approx(
        float(chords.max()) * attenuation.mu_water(60.0), rel=0.02
    )


def test_bug6_the_lateral_view_is_rendered_at_90_degrees() -> None:
    hu = torch.full((1, *GEOMETRY.shape), -1000.0)
    hu[0, :, :, :4] = 0.0  # a slab on the patient's right: a stripe in PA, a uniform shadow laterally
    pa, lateral = GEOMETRY.render_hu(hu)[0]
    assert GEOMETRY.angles_deg == (0.0, 90.0)
    assert float(pa[:, :4].mean()) > 10 * float(pa[:, -4:].mean() + 1e-6)
    assert float(lateral[4:-4, 4:-4].std()) < 0.25 * float(lateral[4:-4, 4:-4].mean())


def test_bug7_no_token_bottleneck_a_single_voxel_change_stays_local() -> None:
    model = _model().eval()
    drrs = torch.rand(1, 2, 16, 16)
    x = torch.zeros(1, 1, *GEOMETRY.shape)
    t = torch.tensor([10])
    with torch.no_grad():
        base = model(x, t, drrs)
        x[0, 0, 8, 8, 8] = 1.0
        changed = (model(x, t, drrs) - base).abs()[0, 0]
    peak = np.unravel_index(int(changed.argmax()), changed.shape)
    assert max(abs(int(p) - 8) for p in peak) <= 1
    assert model.lifter(drrs).shape[2:] == GEOMETRY.shape  # the condition is at full resolution


def _lr_values(name: str) -> list[float]:
    values = [run_params.notebook_defaults(DIFFUSION_NOTEBOOK)[name]]
    for path in sorted(
        run_params.params_root_default().glob(f"{run_params.notebook_stem(DIFFUSION_NOTEBOOK)}/*.yaml")
    ):
        import yaml

        values.append(yaml.safe_load(path.read_text()).get(name, values[0]))
    return values


def test_bug8_the_diffusion_learning_rate_suits_v_prediction() -> None:
    lrs = _lr_values("lr")
    assert all(1e-5 <= lr <= 5e-4 for lr in lrs), lrs  # AdamW for diffusion U-Nets: 1e-4 .. 3e-4
    assert all(w > 0 for w in _lr_values("warmup_steps"))


def test_bug9_the_cosine_schedule_is_not_renormalized_to_start_at_one() -> None:
    schedule = training.SPEC.noise_schedule()
    assert training.SPEC.schedule == "cosine" and training.SPEC.prediction == "v"
    ab = schedule.alphas_cumprod
    assert float(ab[0]) < 1.0 and float(ab[0]) == pytest.approx(1.0 - float(schedule.betas[0]))
    f = schedules.cosine_alpha_bar(torch.arange(1001, dtype=torch.float64), 1000)
    torch.testing.assert_close(ab[:900], (f[1:] / f[0])[:900], rtol=1e-9, atol=0)
    assert float(ab[-1]) < 1e-4 and math.isfinite(float(schedules.snr(schedule, 999)))


def test_bug10_drrs_are_beer_lambert_line_integrals_of_mu_not_sums_of_hu() -> None:
    hu = torch.full((1, *GEOMETRY.shape), 0.0)
    hu[0, 6:10, 6:10, 6:10] = 1000.0
    line = GEOMETRY.render_hu(hu)
    mu = attenuation.hu_to_mu(hu, GEOMETRY.energy_kev)
    intensity = drr.render(
        mu, GEOMETRY.spacing_mm, GEOMETRY.cone(), [0.0, 90.0], n_samples=32, output="intensity"
    )
    torch.testing.assert_close(intensity, torch.exp(-line), rtol=1e-5, atol=1e-7)
    assert float(line.min()) >= 0  # a sum of HU would be negative through air and zero through water


def test_bug11_the_lifted_views_keep_many_channels_concatenated_at_full_weight() -> None:
    model = _model()
    assert model.lifter.out_channels == 2 * (8 + 1) and networks.LiftConfig().channels >= 16
    assert model.unet.conv_in.conv.in_channels == 1 + model.lifter.out_channels
    drrs = torch.rand(1, 2, 16, 16)
    x = torch.zeros(1, 1, *GEOMETRY.shape, requires_grad=True)
    views = drrs.clone().requires_grad_(True)
    model(x, torch.tensor([500]), views).square().sum().backward()
    # the views steer the output about as strongly as x_t does (not damped by a 0.1 weight on one channel)
    assert float(views.grad.abs().mean()) > 0.1 * float(x.grad.abs().mean())
