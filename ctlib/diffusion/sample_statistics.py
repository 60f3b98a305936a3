"""K samples per input: the per-voxel mean and standard deviation (an uncertainty map) of a sampler."""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.samplers import Sampler, get_sampler


def sample_k(
    sampler: Sampler | str,
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    k: int,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    **sampler_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo mean and per-voxel standard deviation over ``k`` samples of each input.

    ``shape`` is ``(B, C, D, H, W)`` for one draw of the B inputs; the k draws run as batches of
    ``batch_size`` draws (default: all k at once), each a sampler call on ``(m * B, C, D, H, W)`` with
    the denoiser's condition repeated m times (``Denoiser.repeated``). The draws differ only through
    ``generator``: with a deterministic
    sampler (DDIM, eta = 0) the spread comes from x_T. Statistics are accumulated in float64 with
    Chan et al.'s pairwise update; the std is unbiased (k - 1 in the denominator), zero for k = 1.
    ``sampler_kwargs`` go to the sampler (``num_steps``, ``eta``, ...).
    Returns ``(mean, std)``, each ``(B, C, D, H, W)`` in the sampler's output dtype.
    """
    if isinstance(sampler, str):
        sampler = get_sampler(sampler)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"sample_k: k must be an int >= 1, got {k!r}")
    batch_size = k if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"sample_k: batch_size must be an int >= 1 (draws per sampler call), got {batch_size!r}"
        )
    if "x_T" in sampler_kwargs:
        raise ValueError("sample_k: x_T cannot be given (each of the k draws needs its own starting noise)")
    B = shape[0]

    count = 0
    mean = m2 = None
    out_dtype = None
    for start in range(0, k, batch_size):
        m = min(batch_size, k - start)
        draws = sampler(denoiser.repeated(m), (m * B, *shape[1:]), generator=generator, **sampler_kwargs)
        out_dtype = draws.dtype
        draws = rearrange(draws.double(), "(m b) ... -> m b ...", m=m)
        # Chan et al. 1979: merge (count, mean, M2) of the running set with those of this batch.
        batch_mean = draws.mean(dim=0)
        batch_m2 = ((draws - batch_mean) ** 2).sum(dim=0)
        if mean is None:
            count, mean, m2 = m, batch_mean, batch_m2
        else:
            delta = batch_mean - mean
            total = count + m
            mean = mean + delta * (m / total)
            m2 = m2 + batch_m2 + delta**2 * (count * m / total)
            count = total
    std = (m2 / (count - 1)).sqrt() if count > 1 else torch.zeros_like(m2)
    return mean.to(out_dtype), std.to(out_dtype)
