"""The latent-diffusion training objective: frozen VAE, raw timesteps, only the U-Net in the state."""

from __future__ import annotations

import torch

from ctlib.diffusion import samplers
from ctlib.models import latent_unet
from ctlib.models import vae as vae_module
from ctlib.studies.interp import latent_diffusion

TINY_VAE = vae_module.VAEConfig(channels=(8, 8, 8, 8), num_res_blocks=1, norm_num_groups=4, latent_channels=4)
TINY_UNET = latent_unet.LatentUNetConfig(channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                                         norm_num_groups=4, num_head_channels=8)


def _batch(depth: int = 6, size: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    thin = torch.rand((2, 1, depth, size, size), generator=g) * 2 - 1
    return {"thin": thin, "linear": thin.roll(1, dims=2), "volume_index": torch.tensor([0, 1])}


def test_loss_trains_only_the_unet_and_sees_raw_timesteps():
    torch.manual_seed(0)
    vae = vae_module.build_vae(TINY_VAE)
    unet = latent_unet.build_latent_unet(TINY_UNET)
    seen = []
    unet.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    spec = latent_diffusion.InterpDiffusionSpec(factor=6)
    module = latent_diffusion.LatentDiffusionLoss(unet, vae, scale_factor=0.5, spec=spec,
                                                  depth_multiple=latent_unet.required_depth_multiple(TINY_UNET))
    assert all(k.startswith("unet.") for k in module.state_dict())
    loss, metrics = module(_batch(depth=6))  # depth 6 is padded to the U-Net's multiple of 2
    loss.backward()
    assert torch.isfinite(loss) and set(metrics) == {"loss", "mean_t"}
    assert all(p.grad is None for p in vae.parameters())
    assert any(p.grad is not None for p in unet.parameters())
    t = seen[0]
    assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) <= spec.num_train_timesteps - 1


def test_denoiser_crops_back_to_any_depth_and_drives_a_sampler():
    torch.manual_seed(0)
    unet = latent_unet.build_latent_unet(TINY_UNET).eval()
    spec = latent_diffusion.InterpDiffusionSpec(prediction="epsilon")
    module = latent_diffusion.LatentDiffusionLoss(
        unet,
        vae_module.build_vae(TINY_VAE),
        scale_factor=0.5,
        spec=spec,
        depth_multiple=latent_unet.required_depth_multiple(TINY_UNET),
    )
    cond = torch.randn(1, 4, 5, 2, 2)
    denoiser = module.denoiser(cond)
    assert denoiser.prediction == "epsilon" and denoiser.depth_multiple == 2  # the spec's, not a default
    # depth 5 -> 6 -> 5
    assert denoiser(torch.randn(1, 4, 5, 2, 2), torch.tensor([3])).shape == (1, 4, 5, 2, 2)
    x = samplers.ddim(denoiser, (1, 4, 5, 2, 2), num_steps=3, generator=torch.Generator().manual_seed(1))
    assert x.shape == (1, 4, 5, 2, 2) and torch.isfinite(x).all()
