"""The residual formulation of latent diffusion (``spec.baseline``): the denoiser models the latent
difference from a baseline estimate B (linear or the regressor), decoded as a difference, so an untrained
x0-prediction U-Net returns B exactly and the VAE's reconstruction error of B cancels (tiny models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ctlib.data import phantom, windows
from ctlib.models import latent_unet, regressor
from ctlib.models import vae as vae_module
from ctlib.models.slice_codec import SliceCodec
from ctlib.studies.interp import bundle, latent_diffusion, pipeline, thick_slices

TINY_VAE = vae_module.VAEConfig(channels=(8, 8, 8, 8), num_res_blocks=1, norm_num_groups=4)
TINY_UNET = latent_unet.LatentUNetConfig(channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                                         norm_num_groups=4, num_head_channels=8)
TINY_REGRESSOR = regressor.RegressorConfig(features=(4, 4, 4, 4, 4, 4), zero_init_output=False)
FAST = {"steps": 3, "progress": False, "data_consistency": False}


def _pair(factor: int = 4) -> thick_slices.ThickThinPair:
    volume = phantom.ct_phantom(shape=(6 * factor, 32, 32), seed=1)
    return thick_slices.thick_thin_pair(volume, factor)


def _interpolator(baseline: str, prediction: str = "x0", *, scale: float = 2.0, seed: int = 0,
                  factor: int = 4) -> bundle.Interpolator:
    torch.manual_seed(seed)
    spec = latent_diffusion.InterpDiffusionSpec(factor=factor, prediction=prediction, baseline=baseline,
                                                residual_scale=scale)
    reg = regressor.build_regressor(TINY_REGRESSOR) if baseline == "regressor" else None
    return bundle.Interpolator(vae_module.build_vae(TINY_VAE), latent_unet.build_latent_unet(TINY_UNET), spec,
                               0.8, windows.FULL, 2, "cpu", regressor=reg)


class ConstantX0(nn.Module):
    """An x0-prediction 'U-Net' that returns ``value`` everywhere (x_t's channels, whatever the input)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :4], self.value)


# ------------------------------------------------------------------------------------ the spec
def test_spec_refuses_an_unknown_baseline_and_a_bad_scale():
    with pytest.raises(ValueError, match="baseline must be one of"):
        latent_diffusion.InterpDiffusionSpec(baseline="cubic")
    for scale in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="residual_scale"):
            latent_diffusion.InterpDiffusionSpec(baseline="linear", residual_scale=scale)


def test_a_spec_saved_before_the_residual_fields_loads_as_the_plain_model():
    old = latent_diffusion.InterpDiffusionSpec().to_dict()
    old.pop("baseline"), old.pop("residual_scale")
    spec = latent_diffusion.InterpDiffusionSpec.from_dict(old)
    assert spec.baseline == "none" and spec.residual_scale == 1.0 and not spec.residual


# --------------------------------------------------------------------------------- training
def test_encode_pair_targets_the_scaled_latent_difference_from_the_baseline():
    torch.manual_seed(0)
    vae = vae_module.build_vae(TINY_VAE)
    batch = {"thin": torch.rand(2, 1, 4, 16, 16) * 2 - 1, "linear": torch.rand(2, 1, 4, 16, 16) * 2 - 1}
    z_thin = vae_module.encode_slices(vae, batch["thin"], 0.8)
    z_lin = vae_module.encode_slices(vae, batch["linear"], 0.8)
    plain = latent_diffusion.encode_pair(vae, batch, 0.8)
    torch.testing.assert_close(plain[0], z_thin)
    torch.testing.assert_close(plain[1], z_lin)
    spec = latent_diffusion.InterpDiffusionSpec(baseline="linear", residual_scale=3.0)
    x0, cond = latent_diffusion.encode_pair(vae, batch, 0.8, spec=spec)
    torch.testing.assert_close(cond, z_lin)
    torch.testing.assert_close(x0, (z_thin - z_lin) * 3.0)


def test_the_regressor_baseline_conditions_on_the_regressor_output():
    torch.manual_seed(0)
    vae, reg = vae_module.build_vae(TINY_VAE), regressor.build_regressor(TINY_REGRESSOR)
    batch = {"thin": torch.rand(1, 1, 16, 32, 32) * 2 - 1, "linear": torch.rand(1, 1, 16, 32, 32) * 2 - 1}
    spec = latent_diffusion.InterpDiffusionSpec(baseline="regressor")
    x0, cond = latent_diffusion.encode_pair(vae, batch, 0.8, spec=spec, regressor=reg)
    with torch.no_grad():
        base = reg(batch["linear"])
    assert not torch.allclose(base, batch["linear"], atol=1e-3)  # the test regressor is not the identity
    torch.testing.assert_close(cond, vae_module.encode_slices(vae, base, 0.8))
    torch.testing.assert_close(x0, vae_module.encode_slices(vae, batch["thin"], 0.8) - cond)
    with pytest.raises(ValueError, match="regressor exactly when"):
        latent_diffusion.encode_pair(vae, batch, 0.8, spec=spec)
    with pytest.raises(ValueError, match="regressor exactly when"):
        latent_diffusion.encode_pair(vae, batch, 0.8, regressor=reg,
                                     spec=latent_diffusion.InterpDiffusionSpec(baseline="linear"))


def test_latent_residual_std_is_the_std_of_the_difference():
    torch.manual_seed(0)
    vae = vae_module.build_vae(TINY_VAE)
    batches = [{"thin": torch.rand(1, 1, 4, 16, 16) * 2 - 1, "linear": torch.rand(1, 1, 4, 16, 16) * 2 - 1}
               for _ in range(2)]
    diffs = [vae_module.encode_slices(vae, b["thin"], 0.8) - vae_module.encode_slices(vae, b["linear"], 0.8)
             for b in batches]
    expected = float(torch.cat([d.flatten() for d in diffs]).std())
    measured = latent_diffusion.latent_residual_std(vae, batches, 0.8, "linear")
    assert measured == pytest.approx(expected, rel=1e-5)


# -------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("baseline", ["linear", "regressor"])
def test_an_untrained_x0_unet_returns_its_baseline_exactly(baseline):
    """MONAI zero-initializes the U-Net's output convolution: x0 = 0, so the output is B itself."""
    pair = _pair()
    interp = _interpolator(baseline)
    out = pipeline.interpolate_volume(pair.thick, interp, **FAST).mean.array
    linear = thick_slices.upsample_z(pair.thick, 4, "linear")
    expected = pipeline.baseline_estimate(linear, interp)
    np.testing.assert_allclose(out, expected, atol=0.05)  # float32 HU
    if baseline == "regressor":
        assert np.abs(expected - linear.array).max() > 5.0  # the regressor moved the estimate


def test_the_plain_model_does_not_return_linear_so_the_identity_is_the_formulation():
    pair = _pair()
    out = pipeline.interpolate_volume(pair.thick, _interpolator("none"), **FAST).mean.array
    linear = thick_slices.upsample_z(pair.thick, 4, "linear").array
    assert np.abs(out - linear).mean() > 20.0  # a random VAE's reconstruction, far from linear


def test_the_sample_is_decoded_as_a_difference_from_the_baseline():
    """A constant x0 = c gives B + D(z(B) + c / s) - D(z(B)), whatever the VAE's error on B."""
    pair = _pair()
    interp = _interpolator("linear", scale=2.0)
    interp.unet = ConstantX0(0.6)
    out = pipeline.interpolate_volume(pair.thick, interp, **FAST).mean.array
    codec = SliceCodec(interp.vae, interp.window, interp.scale_factor, multiple=interp.inplane_multiple)
    base = thick_slices.upsample_z(pair.thick, 4, "linear").array
    z = codec.encode(base)
    size = base.shape[1:]
    expected = base + codec.decode(z + 0.6 / 2.0, size) - codec.decode(z, size)
    np.testing.assert_allclose(out, expected, atol=0.05)
    assert np.abs(out - base).mean() > 1.0  # the correction is not nothing


def test_an_interpolator_refuses_a_regressor_that_does_not_match_its_baseline():
    reg = regressor.build_regressor(TINY_REGRESSOR)
    with pytest.raises(ValueError, match="a regressor goes with baseline 'regressor' only"):
        bundle.Interpolator(vae_module.build_vae(TINY_VAE), latent_unet.build_latent_unet(TINY_UNET),
                            latent_diffusion.InterpDiffusionSpec(baseline="linear"), 0.8, windows.FULL, 2,
                            "cpu", regressor=reg)
    with pytest.raises(ValueError, match="a regressor goes with baseline 'regressor' only"):
        _interpolator("regressor").__class__(
            vae_module.build_vae(TINY_VAE), latent_unet.build_latent_unet(TINY_UNET),
            latent_diffusion.InterpDiffusionSpec(baseline="regressor"), 0.8, windows.FULL, 2, "cpu")


# ------------------------------------------------------------------------ runs and releases
@pytest.fixture()
def residual_run(tmp_path, monkeypatch):
    """A regressor run and a residual diffusion run over it (tiny random models, one 'training step')."""
    from test_interp_pipeline import fake_run, make_diffusion_run
    from test_interp_regression import save_regressor

    from ctlib import paths

    monkeypatch.setenv(paths.RUNS_ENV_VAR, str(tmp_path / "runs"))
    torch.manual_seed(0)
    reg_dir = fake_run("regressor_run", "2026-11-23_05_regressor")
    save_regressor(reg_dir / "checkpoints" / "regressor.pt", regressor.build_regressor(TINY_REGRESSOR_SAVED))
    spec = latent_diffusion.InterpDiffusionSpec(factor=4, prediction="x0", baseline="regressor",
                                                residual_scale=2.0)
    return make_diffusion_run(factor=4, spec=spec, regressor_run_id="regressor_run")


TINY_REGRESSOR_SAVED = regressor.RegressorConfig(features=(4, 4, 4, 4, 4, 4))  # test_interp_regression.TINY


def test_a_residual_run_loads_with_its_regressor_and_a_release_reproduces_it(residual_run, tmp_path):
    from ctlib.studies.interp import release

    interp = bundle.load_interpolator(residual_run, device="cpu")
    assert interp.regressor is not None and interp.meta["regressor_run_id"] == "regressor_run"
    pair = _pair()
    expected = pipeline.interpolate_volume(pair.thick, interp, **FAST).mean.array
    release.export_interpolator(residual_run, tmp_path / "w", card={"split": "none"}, precision="float32")
    released = release.load_released_interpolator(tmp_path / "w" / release.DEFAULT_INTERPOLATOR, device="cpu")
    assert released.spec == interp.spec and released.regressor is not None
    for a, b in ((released.regressor, interp.regressor), (released.unet, interp.unet)):
        assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    ours = pipeline.interpolate_volume(pair.thick, released, **FAST).mean.array
    np.testing.assert_array_equal(ours, expected)
    card = (tmp_path / "w" / release.DEFAULT_INTERPOLATOR / "MODEL_CARD.md").read_text()
    assert "Residual formulation" in card and "regressor" in card


def test_a_residual_run_refuses_a_regressor_of_another_factor(residual_run, tmp_path):
    from test_interp_regression import save_regressor

    from ctlib import paths
    from ctlib.errors import CTInputError

    save_regressor(paths.runs_dir() / "regressor_run" / "checkpoints" / "regressor.pt",
                   regressor.build_regressor(TINY_REGRESSOR_SAVED), factor=6)
    with pytest.raises(CTInputError, match="differ from the regressor's"):
        bundle.load_interpolator(residual_run, device="cpu")
