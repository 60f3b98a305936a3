"""The slice codec: a per-slice 2D VAE run over a volume, HU in, scaled latents out and back.

Built like MONAI's ``SliceInferer`` (``monai/inferers/inferer.py``): one object runs a 2D network over
the axial slices of a 3D volume, so the path between HU and latents is written once::

    encode: HU (n, y, x) -> normalize (HU window to [-1, 1]) -> edge-pad in-plane to ``multiple``
            -> VAE encoder, ``chunk`` slices per call, posterior mean times ``scale_factor`` -> (C, n, h, w)
    decode: (C, n, h, w) / ``scale_factor`` -> VAE decoder, ``chunk`` slices per call -> [-1, 1]
            -> HU (denormalize, optionally clipped to the window) -> crop to (y, x) -> (n, y, x)

Memory on the network's device is bounded by ``chunk`` slices whatever the depth (Rombach et al.
2022 scale the latents by ``1 / std`` so the denoiser sees about unit variance). Normalization is
elementwise, so padding before or after it gives the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ctlib.data.windows import HUWindow, denormalize, normalize
from ctlib.models import vae as vae_module


@dataclasses.dataclass
class SliceCodec:
    """HU slices ``(n, y, x)`` <-> latents ``(C, n, y'/f, x'/f)`` through ``vae``, ``y'``/``x'`` padded.

    ``multiple`` (default: the VAE factor ``f``) is what height and width are edge-padded to; it must be
    a multiple of ``f`` (the latent diffusion pipeline pads to ``f`` times the U-Net's multiple).
    ``device`` receives the latents (default: the VAE's); decoded images come back to the CPU.
    ``precision`` is a context factory entered around every VAE call (e.g. bf16 autocast).
    """

    vae: nn.Module
    window: HUWindow
    scale_factor: float = 1.0
    chunk: int = 16  # slices per VAE call
    multiple: int | None = None
    device: torch.device | str | None = None
    precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def __post_init__(self) -> None:
        factor = self.factor
        self.multiple = factor if self.multiple is None else int(self.multiple)
        if self.multiple % factor:
            raise ValueError(
                f"SliceCodec: multiple={self.multiple} must be a multiple of the VAE factor {factor}"
            )

    @property
    def factor(self) -> int:
        """In-plane downsampling of the VAE (``vae.downsampling_factor``)."""
        return vae_module.downsampling_factor(self.vae)

    def to_network(self, hu: np.ndarray) -> np.ndarray:
        """HU ``(n, y, x)`` -> the VAE's input: window-normalized to [-1, 1], edge-padded to ``multiple``."""
        return vae_module.pad_inplane(normalize(np.asarray(hu, dtype=np.float32), self.window), self.multiple)

    def encode(self, hu: np.ndarray) -> torch.Tensor:
        """HU ``(n, y, x)`` -> scaled posterior-mean latents ``(C, n, y'/f, x'/f)`` on ``device``."""
        return self.encode_normalized(torch.from_numpy(self.to_network(hu))[None])

    def encode_normalized(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``(B, 1, D, H, W)`` or ``(1, D, H, W)`` (H, W multiples of f) -> latents."""
        with self.precision():
            return vae_module.encode_slices(self.vae, images, self.scale_factor, chunk=self.chunk,
                                            out_device=self.device)

    def decode_normalized(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, C, D, h, w)`` or ``(C, D, h, w)`` -> images in about [-1, 1] on the CPU."""
        with self.precision():
            return vae_module.decode_slices(self.vae, latents, self.scale_factor, chunk=self.chunk,
                                            out_device="cpu")

    def decode(
        self, latents: torch.Tensor, size: tuple[int, int] | None = None, *, clip: bool = False
    ) -> np.ndarray:
        """Latents ``(C, n, h, w)`` -> HU ``(n, y, x)``, cropped to ``size = (y, x)`` (default: uncropped).

        ``clip`` clips to the window; without it values past [-1, 1] extrapolate beyond the window.
        """
        if latents.ndim != 4:
            raise ValueError(
                f"SliceCodec.decode: expected latents (C, n, h, w), got shape {tuple(latents.shape)}"
            )
        image = self.decode_normalized(latents)[0]
        if size is not None:
            image = image[:, : size[0], : size[1]]
        return denormalize(image.numpy(), self.window, clip=clip)

    def reconstruct(self, hu: np.ndarray) -> np.ndarray:
        """The VAE's reconstruction of HU slices ``(n, y, x)`` (posterior mean), clipped to the window."""
        return self.decode(self.encode(hu), tuple(np.shape(hu)[1:]), clip=True)
