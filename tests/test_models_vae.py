"""Per-slice VAE: shapes and compression, chunking, scale factor, loss terms against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctlib.data import windows
from ctlib.models import vae as vae_module
from ctlib.models import vae_run
from ctlib.train import loop
from ctlib.train.streams import BatchStream, TensorDataset

TINY = vae_module.VAEConfig(channels=(8, 8, 8, 8), norm_num_groups=4, num_res_blocks=1)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return vae_module.build_vae(TINY)


def test_config_round_trip_and_refusals():
    assert vae_module.VAEConfig.from_dict(TINY.to_dict()) == TINY
    assert TINY.attention_levels == (False,) * 4 and not TINY.with_encoder_nonlocal_attn
    with pytest.raises(ValueError, match="unknown key"):
        vae_module.VAEConfig.from_dict({"chanels": [8, 8]})
    with pytest.raises(ValueError, match="norm_num_groups"):
        vae_module.VAEConfig(channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="attention_levels"):
        vae_module.VAEConfig(channels=(8, 8), attention_levels=(False,), norm_num_groups=4)


@pytest.mark.parametrize("shape", [(2, 1, 5, 32, 32), (1, 3, 32, 48)])
def test_encode_decode_shapes_give_8x_and_4_channels(tiny_vae, shape):
    x = torch.rand(shape) * 2 - 1
    z = vae_module.encode_slices(tiny_vae, x, 1.0, chunk=4)
    assert vae_module.downsampling_factor(TINY) == vae_module.downsampling_factor(tiny_vae) == 8
    expected = (
        (*shape[:-4], 4, shape[-3], shape[-2] // 8, shape[-1] // 8)
        if len(shape) == 5
        else (4, shape[1], 4, 6)
    )
    assert tuple(z.shape) == expected
    y = vae_module.decode_slices(tiny_vae, z, 1.0, chunk=3)
    assert tuple(y.shape) == tuple(x.shape)


def test_encode_refuses_sizes_not_divisible(tiny_vae):
    with pytest.raises(ValueError, match="multiples of 8"):
        vae_module.encode_slices(tiny_vae, torch.zeros(1, 1, 2, 30, 32))


def test_chunked_equals_unchunked_and_keeps_training_mode(tiny_vae):
    x = torch.rand(2, 1, 7, 32, 32) * 2 - 1
    tiny_vae.train()
    a = vae_module.encode_slices(tiny_vae, x, 0.7, chunk=3)
    b = vae_module.encode_slices(tiny_vae, x, 0.7, chunk=64)
    assert tiny_vae.training
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # slice d of volume b is encoded on its own, like a 2D batch
    mu, _ = tiny_vae.eval().encode(x[1, :, 4][None])
    torch.testing.assert_close(a[1, :, 4], 0.7 * mu[0], atol=1e-5, rtol=1e-5)
    da = vae_module.decode_slices(tiny_vae, a, 0.7, chunk=2)
    db = vae_module.decode_slices(tiny_vae, a, 0.7, chunk=64)
    torch.testing.assert_close(da, db, atol=1e-5, rtol=1e-5)


def test_sampled_encoding_differs_but_is_reproducible(tiny_vae):
    x = torch.rand(1, 1, 2, 32, 32)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = vae_module.encode_slices(tiny_vae, x, sample=True, generator=g1)
    s2 = vae_module.encode_slices(tiny_vae, x, sample=True, generator=g2)
    torch.testing.assert_close(s1, s2)
    assert not torch.allclose(s1, vae_module.encode_slices(tiny_vae, x))


def test_scale_factor_is_one_over_std(tiny_vae):
    volumes = [torch.rand(1, 1, 3, 32, 32) * 2 - 1, torch.rand(2, 1, 2, 32, 32) * 2 - 1]
    slices = torch.rand(3, 1, 32, 32) * 2 - 1
    factor = vae_module.latent_scale_factor(tiny_vae, [*volumes, slices])
    z = torch.cat([vae_module.encode_slices(tiny_vae, v).flatten() for v in volumes]
                  + [vae_module.encode_slices(tiny_vae, slices.unsqueeze(2)).flatten()])
    assert math.isclose(factor, 1.0 / float(z.double().std()), rel_tol=1e-6)
    scaled = vae_module.encode_slices(tiny_vae, volumes[0], factor)
    torch.testing.assert_close(scaled, factor * vae_module.encode_slices(tiny_vae, volumes[0]))


def test_kl_closed_form():
    mu = torch.full((2, 4, 3, 3), 0.5)
    sigma = torch.full((2, 4, 3, 3), 2.0)
    per_element = 0.5 * (0.25 + 4.0 - math.log(4.0) - 1.0)
    assert math.isclose(float(vae_module.kl_divergence(mu, sigma)), per_element * 36, rel_tol=1e-6)
    assert float(vae_module.kl_divergence(torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2))) == 0.0


def test_vae_loss_components():
    target = torch.zeros(2, 1, 16, 16)
    recon = torch.full((2, 1, 16, 16), 0.25)
    mu, sigma = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    loss, parts = vae_module.vae_loss(recon, target, mu, sigma, kl_weight=1.0)
    assert set(parts) == {"l1", "kl"}
    assert math.isclose(float(loss), 0.25, rel_tol=1e-6)
    # gradient term: zero for constant images; SSIM loss: 0 for identical images
    ramp = torch.linspace(-1, 1, 16).expand(2, 1, 16, 16).contiguous()
    loss, parts = vae_module.vae_loss(
        ramp, ramp, mu, sigma, kl_weight=1.0, ssim_weight=1.0, gradient_weight=1.0
    )
    assert float(parts["ssim_loss"]) == pytest.approx(0.0, abs=1e-5) and float(parts["gradient_l1"]) == 0.0
    grad = vae_module.image_gradient_l1(ramp, torch.zeros_like(ramp))
    assert float(grad) == pytest.approx((2 / 15) / 2, rel=1e-5)  # W-gradient 2/15, H-gradient 0


@pytest.mark.parametrize("kind", ["hinge", "lsgan"])
def test_adversarial_terms_route_gradients_to_their_player(tiny_vae, kind):
    torch.manual_seed(0)
    disc = vae_module.build_discriminator(channels=8, num_layers_d=2)
    module = vae_module.VAELossModule(
        tiny_vae.train(), discriminator=disc, adversarial_weight=0.5, adversarial_kind=kind
    )
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    # generator term alone: no gradient on the discriminator
    recon, _, _ = module.vae(images)
    g_loss, d_loss = vae_module.adversarial_terms(disc, recon, images, kind)
    g_loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in disc.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in module.vae.parameters())
    module.zero_grad(set_to_none=True)
    d_loss.backward()
    assert all(p.grad is None for p in module.vae.parameters())
    module.zero_grad(set_to_none=True)
    loss, metrics = module(images)
    assert {"generator_adv", "discriminator", "l1", "kl"} <= set(metrics) and torch.isfinite(loss)
    with pytest.raises(ValueError, match="needs a discriminator"):
        vae_module.VAELossModule(tiny_vae, adversarial_weight=0.1)


def test_train_loop_then_load_frozen_vae(tmp_path):
    torch.manual_seed(0)
    vae = vae_module.build_vae(TINY)
    module = vae_module.VAELossModule(vae, kl_weight=1e-6, ssim_weight=0.1)
    images = torch.rand(8, 1, 16, 16) * 2 - 1
    config = loop.TrainConfig(steps=2, batch_size=4, lr=1e-3, log_every=1, device="cpu")
    history = loop.train(
        module, loop.forward_loss, BatchStream(TensorDataset(images), batch_size=4), config,
        checkpoint_path=tmp_path / "vae.pt", normalization=windows.normalization_record("full"),
        model_config=TINY.to_dict(), extra={"scale_factor": 0.5},
    )
    assert len(history) == 2 and {"l1", "kl", "ssim_loss"} <= set(history[0])
    run = vae_run.VAERun.load(tmp_path / "vae.pt")
    loaded = run.vae
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert run.scale_factor == 0.5 and run.config == TINY and run.window == windows.FULL and run.step == 2
    x = torch.rand(1, 1, 2, 16, 16)
    torch.testing.assert_close(vae_module.encode_slices(loaded, x), vae_module.encode_slices(vae, x))


def test_pad_inplane_edge_pads_the_far_ends_only():
    a = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    padded = vae_module.pad_inplane(a, 4)
    assert padded.shape == (2, 8, 4)
    np.testing.assert_array_equal(padded[:, :5, :3], a)
    np.testing.assert_array_equal(padded[:, 7, :3], a[:, 4, :])
    assert vae_module.pad_inplane(padded, 4) is padded


def test_foreground_weight_counts_body_errors_more():
    """An error on the body (above the level) weighs 1 + w times one on air; w = 0 is the plain L1."""
    target = torch.full((1, 1, 4, 4), -1.0)
    target[..., :2, :] = 0.0  # half the image is 'body'
    body_error, air_error = target.clone(), target.clone()
    body_error[..., 0, 0] += 0.5
    air_error[..., 3, 3] += 0.5
    mu, sigma = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    plain = [vae_module.vae_loss(r, target, mu, sigma, kl_weight=0.0)[1]["l1"]
             for r in (body_error, air_error)]
    assert plain[0] == pytest.approx(plain[1]) == pytest.approx(0.5 / 16)
    weighted = [vae_module.vae_loss(r, target, mu, sigma, kl_weight=0.0, foreground_weight=9.0,
                                    foreground_level=-0.5)[1]["l1"] for r in (body_error, air_error)]
    # weights: 8 body pixels x 10 + 8 air pixels x 1 = 88
    assert weighted[0] == pytest.approx(10 * 0.5 / 88) and weighted[1] == pytest.approx(0.5 / 88)
