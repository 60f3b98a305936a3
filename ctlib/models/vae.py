"""The per-slice 2D VAE of the latent diffusion study (KL-regularized autoencoder, Rombach et al. 2022).

Each axial slice ``(1, H, W)`` in ``[-1, 1]`` is encoded to ``(latent_channels, H/f, W/f)`` with
``f = 2**(len(channels) - 1)`` (8 for four levels). Volumes ``(B, 1, D, H, W)`` are encoded slice by
slice in chunks, so memory is bounded by ``chunk`` slices, and latents are multiplied by the scale
factor ``1 / std(latents)`` so the diffusion model sees roughly unit-variance inputs (Rombach et al.
2022, Sec. G; MONAI generative tutorials). The loss is L1 + KL (+ optional SSIM, image-gradient L1
and a PatchGAN adversarial term, Isola et al. 2017); perceptual losses need downloaded weights and
are not offered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterable, Iterator
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from monai.losses import SSIMLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import nn
from torch.func import functional_call

from ctlib.config import ConfigDict
from ctlib.models import level_checks

AdversarialKind = Literal["hinge", "lsgan"]
ADVERSARIAL_KINDS: tuple[str, ...] = get_args(AdversarialKind)


@dataclasses.dataclass
class VAEConfig(ConfigDict):
    """Hyper-parameters of ``monai.networks.nets.AutoencoderKL`` (2D), attention off by default."""

    channels: tuple[int, ...] = (32, 64, 64, 64)  # one entry per level; len - 1 downsamplings
    latent_channels: int = 4
    num_res_blocks: int | tuple[int, ...] = 2
    norm_num_groups: int = 32
    attention_levels: tuple[bool, ...] | None = None  # None: no attention at any level
    with_encoder_nonlocal_attn: bool = False
    with_decoder_nonlocal_attn: bool = False
    use_flash_attention: bool = False  # torch scaled_dot_product_attention in the attention blocks
    use_checkpoint: bool = False  # activation checkpointing: less memory, more compute
    in_channels: int = 1
    out_channels: int = 1

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.attention_levels is None:
            self.attention_levels = (False,) * len(self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        level_checks.check_levels("VAEConfig", self.channels, self.attention_levels, self.norm_num_groups)


def downsampling_factor(vae: VAEConfig | AutoencoderKL) -> int:
    """In-plane compression of the VAE, from its config or the built model: ``2**(levels - 1)``."""
    channels = vae.channels if isinstance(vae, VAEConfig) else vae.encoder.channels
    return 2 ** (len(channels) - 1)


def build_vae(config: VAEConfig) -> AutoencoderKL:
    """MONAI ``AutoencoderKL`` with ``spatial_dims=2`` from a ``VAEConfig``."""
    return AutoencoderKL(
        spatial_dims=2,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        channels=config.channels,
        latent_channels=config.latent_channels,
        num_res_blocks=config.num_res_blocks,
        norm_num_groups=config.norm_num_groups,
        attention_levels=config.attention_levels,
        with_encoder_nonlocal_attn=config.with_encoder_nonlocal_attn,
        with_decoder_nonlocal_attn=config.with_decoder_nonlocal_attn,
        use_flash_attention=config.use_flash_attention,
        use_checkpoint=config.use_checkpoint,
    )


@contextlib.contextmanager
def _eval_no_grad(module: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd inside the block; the module's previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def _as_batched(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """``(B, C, D, H, W)`` view of a 5-D or unbatched 4-D ``(C, D, H, W)`` tensor, and whether it was 4-D."""
    if x.ndim == 5:
        return x, False
    if x.ndim == 4:
        return x.unsqueeze(0), True
    raise ValueError(f"{name}: expected (B, C, D, H, W) or (C, D, H, W), got shape {tuple(x.shape)}")


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def encode_slices(
    vae: AutoencoderKL,
    volume: torch.Tensor,
    scale_factor: float = 1.0,
    *,
    chunk: int = 16,
    sample: bool = False,
    generator: torch.Generator | None = None,
    out_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-slice VAE encoding: ``(B, 1, D, H, W)`` -> ``(B, latent, D, H/f, W/f)`` times ``scale_factor``.

    Slices are encoded ``chunk`` at a time in eval mode without autograd, so memory is bounded; the
    posterior mean is returned unless ``sample`` (noise from ``generator``, which must live on the
    VAE's device). An unbatched ``(1, D, H, W)`` input gives an
    unbatched output. Results go to ``out_device`` (default: the input's device).
    """
    x, unbatched = _as_batched(volume, "encode_slices")
    batch, _, depth, height, width = x.shape
    factor = downsampling_factor(vae)
    if height % factor or width % factor:
        raise ValueError(f"encode_slices: H and W must be multiples of {factor}, got H={height}, W={width}")
    device = _device_of(vae)
    slices = rearrange(x, "b c d h w -> (b d) c h w")
    chunks = []
    with _eval_no_grad(vae):
        for start in range(0, slices.shape[0], max(1, int(chunk))):
            part = slices[start : start + chunk].to(device, non_blocking=True)
            z_mu, z_sigma = vae.encode(part)
            if sample:
                noise = torch.randn(z_mu.shape, generator=generator, device=z_mu.device, dtype=z_mu.dtype)
                z_mu = z_mu + noise * z_sigma
            chunks.append((z_mu.float() * scale_factor).to(out_device or volume.device))
    latents = rearrange(torch.cat(chunks), "(b d) c h w -> b c d h w", b=batch, d=depth)
    return latents[0] if unbatched else latents


def decode_slices(
    vae: AutoencoderKL,
    latents: torch.Tensor,
    scale_factor: float = 1.0,
    *,
    chunk: int = 16,
    out_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-slice VAE decoding: ``(B, latent, D, h, w)`` divided by ``scale_factor`` ->
    ``(B, 1, D, h*f, w*f)``."""
    z, unbatched = _as_batched(latents, "decode_slices")
    batch, depth = z.shape[0], z.shape[2]
    device = _device_of(vae)
    slices = rearrange(z, "b c d h w -> (b d) c h w")
    chunks = []
    with _eval_no_grad(vae):
        for start in range(0, slices.shape[0], max(1, int(chunk))):
            part = slices[start : start + chunk].to(device, non_blocking=True) / scale_factor
            chunks.append(vae.decode(part).float().to(out_device or latents.device))
    images = rearrange(torch.cat(chunks), "(b d) c h w -> b c d h w", b=batch, d=depth)
    return images[0] if unbatched else images


def pad_inplane(array: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-pad ``(..., y, x)`` at the far ends of y and x up to multiples of ``multiple``."""
    pad_y, pad_x = (-array.shape[-2]) % multiple, (-array.shape[-1]) % multiple
    if pad_y == pad_x == 0:
        return array
    return np.pad(array, [(0, 0)] * (array.ndim - 2) + [(0, pad_y), (0, pad_x)], mode="edge")


def latent_scale_factor(vae: AutoencoderKL, batches: Iterable[torch.Tensor], *, chunk: int = 16) -> float:
    """``1 / std`` of the unscaled posterior-mean latents over all ``batches`` (Rombach et al. 2022).

    A batch is a volume batch ``(B, 1, D, H, W)`` or a slice batch ``(B, 1, H, W)``. The standard
    deviation is pooled over every latent element (unbiased), in float64.
    """
    total, total_sq, count = 0.0, 0.0, 0
    for batch in batches:
        volume = batch.unsqueeze(2) if batch.ndim == 4 else batch
        z = encode_slices(vae, volume, 1.0, chunk=chunk).double()
        total += float(z.sum())
        total_sq += float((z * z).sum())
        count += z.numel()
    if count < 2:
        raise ValueError("latent_scale_factor: needs at least two latent values; got no batches")
    variance = (total_sq - total * total / count) / (count - 1)
    if variance <= 0:
        raise ValueError(f"latent_scale_factor: latent variance is {variance}; the VAE encodes a constant")
    return float(variance**-0.5)


# ----------------------------------------------------------------------------------------- losses
def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch
    (Kingma & Welling 2014)."""
    kl = 0.5 * (z_mu.float().pow(2) + z_sigma.float().pow(2) - torch.log(z_sigma.float().pow(2)) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()


def image_gradient_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 difference of forward finite differences along every spatial axis (edge sharpness term)."""
    terms = []
    for dim in range(2, recon.ndim):
        terms.append((torch.diff(recon, dim=dim) - torch.diff(target, dim=dim)).abs().mean())
    return torch.stack(terms).mean()


@functools.lru_cache(maxsize=4)
def _ssim_loss(spatial_dims: int, data_range: float) -> SSIMLoss:
    return SSIMLoss(spatial_dims=spatial_dims, data_range=data_range)


def vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    z_mu: torch.Tensor,
    z_sigma: torch.Tensor,
    *,
    kl_weight: float,
    ssim_weight: float = 0.0,
    gradient_weight: float = 0.0,
    foreground_weight: float = 0.0,
    foreground_level: float = -1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1 + kl_weight * KL (+ ssim_weight * (1 - SSIM) + gradient_weight * gradient L1) and its components.

    Images are ``(B, 1, H, W)`` in ``[-1, 1]``, so SSIM uses ``data_range=2`` (MONAI ``SSIMLoss``,
    Gaussian window 11, sigma 1.5). Terms with zero weight are not computed. ``foreground_weight`` > 0
    weighs the L1 of target pixels above ``foreground_level`` (e.g. -500 HU normalized: the body)
    ``1 + foreground_weight`` times the others, normalized by the mean weight: a whole OpenKBP slice is
    mostly air, which a plain L1 rewards reconstructing while the body stays blurred.
    """
    recon, target = recon.float(), target.float()
    error = (recon - target).abs()
    if foreground_weight:
        weight = 1.0 + foreground_weight * (target > foreground_level).float()
        l1 = (weight * error).sum() / weight.sum()
    else:
        l1 = error.mean()
    terms = {"l1": l1, "kl": kl_divergence(z_mu, z_sigma)}
    total = terms["l1"] + kl_weight * terms["kl"]
    if ssim_weight:
        terms["ssim_loss"] = _ssim_loss(recon.ndim - 2, 2.0)(recon, target)
        total = total + ssim_weight * terms["ssim_loss"]
    if gradient_weight:
        terms["gradient_l1"] = image_gradient_l1(recon, target)
        total = total + gradient_weight * terms["gradient_l1"]
    return total, {k: v.detach() for k, v in terms.items()}


def build_discriminator(
    *, channels: int = 32, num_layers_d: int = 3, in_channels: int = 1
) -> PatchDiscriminator:
    """MONAI 2D ``PatchDiscriminator`` (PatchGAN, Isola et al. 2017): one logit per image patch."""
    return PatchDiscriminator(
        spatial_dims=2, channels=channels, in_channels=in_channels, num_layers_d=num_layers_d
    )


def adversarial_terms(
    discriminator: nn.Module, recon: torch.Tensor, target: torch.Tensor, kind: AdversarialKind = "hinge"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(generator_loss, discriminator_loss)`` of a hinge (Lim & Ye 2017) or LSGAN (Mao et al. 2017) game.

    The generator term sees the discriminator through detached parameters and the discriminator term
    sees a detached reconstruction, so summing both and taking one optimizer step updates each player
    with its own gradient only (a simultaneous-update GAN step).
    """
    if kind not in ADVERSARIAL_KINDS:
        raise ValueError(f"adversarial kind must be one of {list(ADVERSARIAL_KINDS)}, got {kind!r}")
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    fake_for_g = functional_call(discriminator, frozen, (recon,))[-1]
    real = discriminator(target)[-1]
    fake = discriminator(recon.detach())[-1]
    if kind == "hinge":
        g_loss = -fake_for_g.mean()
        d_loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    else:
        g_loss = (fake_for_g - 1.0).pow(2).mean()
        d_loss = 0.5 * ((real - 1.0).pow(2).mean() + fake.pow(2).mean())
    return g_loss, d_loss


class VAELossModule(nn.Module):
    """The VAE (and optional discriminator) whose ``forward(images)`` returns ``(loss, metrics)``.

    Training goes through this module's forward so DistributedDataParallel sees every parameter
    use; pass ``loop.forward_loss`` as the loss function of ``ctlib.train.loop.train``.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        *,
        kl_weight: float = 1e-6,
        ssim_weight: float = 0.0,
        gradient_weight: float = 0.0,
        discriminator: nn.Module | None = None,
        adversarial_weight: float = 0.0,
        adversarial_kind: AdversarialKind = "hinge",
        foreground_weight: float = 0.0,
        foreground_level: float = -1.0,
    ) -> None:
        super().__init__()
        if adversarial_weight and discriminator is None:
            raise ValueError(
                "VAELossModule: adversarial_weight > 0 needs a discriminator (build_discriminator())"
            )
        if adversarial_kind not in ADVERSARIAL_KINDS:
            raise ValueError(
                f"adversarial_kind must be one of {list(ADVERSARIAL_KINDS)}, got {adversarial_kind!r}"
            )
        self.vae = vae
        self.discriminator = discriminator
        self.weights = {
            "kl_weight": kl_weight,
            "ssim_weight": ssim_weight,
            "gradient_weight": gradient_weight,
            "foreground_weight": foreground_weight,
            "foreground_level": foreground_level,
        }
        self.adversarial_weight = float(adversarial_weight)
        self.adversarial_kind = adversarial_kind

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``images`` ``(B, 1, H, W)`` in ``[-1, 1]`` -> total loss and its detached components."""
        recon, z_mu, z_sigma = self.vae(images)
        loss, metrics = vae_loss(recon, images, z_mu, z_sigma, **self.weights)
        if self.discriminator is not None and self.adversarial_weight:
            g_loss, d_loss = adversarial_terms(
                self.discriminator, recon.float(), images.float(), self.adversarial_kind
            )
            loss = loss + self.adversarial_weight * g_loss + d_loss
            metrics.update(generator_adv=g_loss.detach(), discriminator=d_loss.detach())
        return loss, metrics


def vae_from_state(config: VAEConfig, state: dict[str, torch.Tensor]) -> AutoencoderKL:
    """A frozen VAE (eval, no grad) with the weights of a bare ``AutoencoderKL`` or of a ``VAELossModule``
    (keys ``vae.*``). Checkpoints are read by ``ctlib.models.vae_run.VAERun``."""
    if any(k.startswith("vae.") for k in state):
        state = {k[len("vae.") :]: v for k, v in state.items() if k.startswith("vae.")}
    vae = build_vae(config)
    vae.load_state_dict(state)
    return vae.eval().requires_grad_(False)
