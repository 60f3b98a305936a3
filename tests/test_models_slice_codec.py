"""The slice codec: HU <-> scaled latents through a per-slice 2D VAE; padding, window, chunking (tiny VAE)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from ctlib.data import windows
from ctlib.models import slice_codec
from ctlib.models import vae as vae_module

TINY = vae_module.VAEConfig(channels=(8, 8, 8, 8), norm_num_groups=4, num_res_blocks=1)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return vae_module.build_vae(TINY)


def _hu(shape=(3, 20, 28), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1000, 1500, size=shape).astype(np.float32)


def test_reconstruct_crops_back_stays_in_the_window_and_equals_the_manual_path(tiny_vae):
    hu = _hu()
    out = slice_codec.SliceCodec(tiny_vae, windows.FULL, 0.7, chunk=2).reconstruct(hu)
    assert out.shape == hu.shape and out.dtype == np.float32
    assert windows.FULL.low <= out.min() and out.max() <= windows.FULL.high
    # pad -> normalize -> encode (scaled) -> decode -> denormalize (clipped) -> crop, written out by hand
    x = torch.from_numpy(vae_module.pad_inplane(windows.normalize(hu, windows.FULL), 8))[None]
    z = vae_module.encode_slices(tiny_vae, x, 0.7, chunk=2)
    manual = vae_module.decode_slices(tiny_vae, z, 0.7, chunk=2)
    expected = windows.denormalize(manual[0, :, :20, :28].numpy(), windows.FULL, clip=True)
    np.testing.assert_array_equal(out, expected)


def test_encode_pads_to_the_multiple_scales_and_decode_crops(tiny_vae):
    hu = _hu()
    codec = slice_codec.SliceCodec(tiny_vae, windows.FULL, 0.5, multiple=16)
    z = codec.encode(hu)
    assert codec.factor == 8 and z.shape == (TINY.latent_channels, 3, 4, 4)  # 20 x 28 -> 32 x 32 -> / 8
    unscaled = slice_codec.SliceCodec(tiny_vae, windows.FULL, 1.0, multiple=16).encode(hu)
    torch.testing.assert_close(z, 0.5 * unscaled)
    torch.testing.assert_close(codec.encode_normalized(torch.from_numpy(codec.to_network(hu))[None]), z)
    assert codec.decode(z).shape == (3, 32, 32)
    cropped = codec.decode(z, (20, 28))
    np.testing.assert_array_equal(cropped, codec.decode(z)[:, :20, :28])
    # unclipped decoding extrapolates past the window; clip=True holds it
    clipped = codec.decode(z, (20, 28), clip=True)
    np.testing.assert_array_equal(clipped, np.clip(cropped, windows.FULL.low, windows.FULL.high))
    with pytest.raises(ValueError, match=r"\(C, n, h, w\)"):
        codec.decode(z[None])


def test_vae_calls_are_chunked_and_precision_wraps_them(tiny_vae):
    sizes, entered = [], []
    encode, decode = tiny_vae.encode, tiny_vae.decode

    @contextlib.contextmanager
    def precision():
        entered.append(True)
        yield

    def spy_encode(x):
        sizes.append(("encode", x.shape[0]))
        return encode(x)

    def spy_decode(z):
        sizes.append(("decode", z.shape[0]))
        return decode(z)

    tiny_vae.encode, tiny_vae.decode = spy_encode, spy_decode
    try:
        codec = slice_codec.SliceCodec(tiny_vae, windows.FULL, chunk=3, precision=precision)
        codec.reconstruct(_hu((7, 16, 16)))
    finally:
        del tiny_vae.encode, tiny_vae.decode
    assert sizes == [("encode", 3), ("encode", 3), ("encode", 1), ("decode", 3), ("decode", 3), ("decode", 1)]
    assert entered == [True, True]  # once around encoding, once around decoding


def test_refuses_a_multiple_the_vae_cannot_divide(tiny_vae):
    with pytest.raises(ValueError, match="multiple=12 must be a multiple of the VAE factor 8"):
        slice_codec.SliceCodec(tiny_vae, windows.FULL, multiple=12)
