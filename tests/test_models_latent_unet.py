"""Latent 3D U-Net: channel layout, depth padding, in-plane checks."""

from __future__ import annotations

import pytest
import torch

from ctlib.diffusion import schedules
from ctlib.diffusion.denoiser import Denoiser
from ctlib.models import latent_unet


def denoise(unet, x_t, cond, t, multiple):
    """The U-Net on ``cat([x_t, cond], 1)`` with depth padding, as samplers call it."""
    schedule = schedules.make_schedule("linear", num_train_timesteps=1000)
    return Denoiser(unet, "v", schedule, cond=cond, depth_multiple=multiple)(x_t, t)

TINY = latent_unet.LatentUNetConfig(
    channels=(8, 8), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8, norm_num_groups=4
)


def test_config_round_trip_and_depth_multiple():
    assert latent_unet.LatentUNetConfig.from_dict(TINY.to_dict()) == TINY
    assert latent_unet.required_depth_multiple(TINY) == 2
    assert latent_unet.required_depth_multiple(latent_unet.LatentUNetConfig()) == 4
    with pytest.raises(ValueError, match="attention_levels"):
        latent_unet.LatentUNetConfig(channels=(8, 8), attention_levels=(True,), norm_num_groups=4)


@pytest.mark.parametrize(
    "depth,multiple,pad", [(5, 4, (1, 2)), (8, 4, (0, 0)), (3, 2, (0, 1)), (1, 8, (3, 4))]
)
def test_pad_then_crop_is_identity(depth, multiple, pad):
    x = torch.randn(2, 8, depth, 4, 6)
    padded, got = latent_unet.pad_depth(x, multiple)
    assert got == pad and padded.shape[2] % multiple == 0
    assert torch.equal(latent_unet.crop_depth(padded, got), x)
    if pad[0]:
        assert torch.equal(padded[:, :, 0], x[:, :, 0])  # edge replication
    if pad[1]:
        assert torch.equal(padded[:, :, -1], x[:, :, -1])


@pytest.mark.parametrize("depth", [3, 4])
def test_unet_accepts_latent_plus_condition(depth):
    torch.manual_seed(0)
    unet = latent_unet.build_latent_unet(TINY)
    assert unet.in_channels == 8 and unet.out_channels == 4
    x_t, cond = torch.randn(2, 4, depth, 4, 4), torch.randn(2, 4, depth, 4, 4)
    t = torch.tensor([0, 999])
    out = denoise(unet, x_t, cond, t, latent_unet.required_depth_multiple(TINY))
    assert out.shape == (2, 4, depth, 4, 4)
    padded, pad = latent_unet.pad_depth(torch.cat([x_t, cond], 1), 2)
    torch.testing.assert_close(out, latent_unet.crop_depth(unet(padded, t), pad))


def test_attention_with_flash_flag_runs_on_cpu():
    config = latent_unet.LatentUNetConfig(
        channels=(8, 8), attention_levels=(False, True), num_res_blocks=1, num_head_channels=4,
        norm_num_groups=4, use_flash_attention=True,
    )
    unet = latent_unet.build_latent_unet(config)
    out = denoise(
        unet, torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 2, 4, 4), torch.tensor([5]), 2
    )
    assert out.shape == (1, 4, 2, 4, 4)


def test_inplane_check_and_mismatch():
    latent_unet.check_inplane(TINY, (1, 8, 3, 4, 6))
    with pytest.raises(ValueError, match="multiple of 2"):
        latent_unet.check_inplane(TINY, (1, 8, 3, 4, 5))
    unet = latent_unet.build_latent_unet(TINY)
    with pytest.raises(ValueError, match="does not match x_t"):
        denoise(
            unet, torch.zeros(1, 4, 3, 4, 4), torch.zeros(1, 4, 2, 4, 4), torch.tensor([1]), 2
        )
