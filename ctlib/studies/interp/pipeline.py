"""Full-volume slice interpolation by latent diffusion: thick CT in, thin CT (and an uncertainty map) out.

Steps (Rombach et al. 2022 with a 3D denoiser over per-slice 2D latents):

1. Thin grid: ``n_thin = n_thick * factor`` slices, thin slices centred within each thick slab
   (``thick_slices.upsample_z``); the linear z-interpolation, window-normalized and padded in-plane to
   a multiple of the VAE and U-Net factors, is the condition.
2. The condition is VAE-encoded slice by slice, ``chunk`` slices per call (``SliceCodec``).
3. Latents are sampled (the U-Net adapted once as a ``Denoiser``) in overlapping z-windows of
   ``window_depth`` thin slices, each conditioned on its part of the condition, and blended with
   linear ramps in the overlaps (weights sum to 1).
   The starting noise of latent slice z is a function of ``(seed, sample, z)`` only, so every window
   that covers z starts from the same noise and the result hardly depends on the window layout; the
   per-step noise (eta > 0) is seeded by ``(seed, sample, window)``.
4. Latents are decoded slice by slice (``chunk`` per call) and mapped back to HU (``SliceCodec``).
   Residual models (``spec.baseline`` "linear" or "regressor", ``latent_diffusion``) condition on the
   latents of the baseline estimate B instead and decode a difference: ``B + D(z(B) + x0 / s) - D(z(B))``.
5. Data consistency (optional): each slab of thin slices is shifted per pixel so that its mean equals
   the observed thick slice (``slab``), or the observed slices are set (``decimate``).
6. ``samples`` draws give the per-voxel mean and standard deviation (uncertainty) in HU.

Network memory is bounded by ``window_depth`` and ``chunk``, whatever the depth of the volume; the
host holds the full-resolution condition and the running mean / std.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ctlib.data import body_mask, windows
from ctlib.diffusion import samplers
from ctlib.diffusion.denoiser import Denoiser
from ctlib.io.volume import Volume
from ctlib.models import regressor as regressor_module
from ctlib.models.slice_codec import SliceCodec
from ctlib.studies.interp import scoring as interpolation
from ctlib.studies.interp import thick_slices
from ctlib.studies.interp.bundle import Interpolator

Consistency = Literal["auto", "slab", "decimate"]
DEFAULT_WINDOW_DEPTH = 48  # thin slices per z-window, rounded up to the U-Net's depth multiple


@dataclasses.dataclass
class InterpolationResult:
    """Output of ``interpolate_volume``; volumes are ``(n_thin, y, x)`` in HU on the thin grid."""

    mean: Volume  # mean over the samples, after data consistency when asked
    std: Volume | None  # per-voxel standard deviation over the samples (None for one sample)
    raw: Volume | None  # mean before data consistency (only with ``return_raw``)
    residual_before_hu: float  # mean |slab mean - thick| inside the body, before data consistency
    residual_after_hu: float  # the same for ``mean`` (equal to before without data consistency)
    seconds: float  # wall time of the whole call
    seconds_per_step: float  # sampling time per denoising step over the whole volume, per sample
    windows: list[tuple[int, int]]  # [start, stop) of each z-window on the thin grid
    settings: dict[str, Any]


# ------------------------------------------------------------------------------ z-windows
def window_spans(n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of overlapping windows of ``window`` slices covering ``0..n-1``, evenly spread.

    One window ``(0, n)`` when ``n <= window``; otherwise the fewest windows whose neighbours overlap
    by at least ``overlap`` slices (less by at most one from rounding), the last ending at ``n``.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"window_spans: need window >= 1 and 0 <= overlap < window, got {window}, {overlap}")
    if n <= window:
        return [(0, n)]
    count = math.ceil((n - overlap) / (window - overlap))
    starts = np.rint(np.linspace(0, n - window, count)).astype(int)
    return [(int(s), int(s) + window) for s in starts]


def blend_weights(spans: list[tuple[int, int]], n: int) -> list[np.ndarray]:
    """Per-window z-weights, linear ramps across each overlap, normalized so they sum to 1 at every z."""
    raw = []
    for i, (start, stop) in enumerate(spans):
        j = np.arange(stop - start, dtype=np.float64)
        w = np.ones_like(j)
        if i > 0:
            before = max(spans[i - 1][1] - start, 0)
            w = np.minimum(w, (j + 1) / (before + 1))
        if i < len(spans) - 1:
            after = max(stop - spans[i + 1][0], 0)
            w = np.minimum(w, (stop - start - j) / (after + 1))
        raw.append(w)
    total = np.zeros(n)
    for (start, stop), w in zip(spans, raw, strict=True):
        total[start:stop] += w
    if np.any(total <= 0):
        raise ValueError(f"blend_weights: the windows {spans} do not cover 0..{n - 1}")
    return [w / total[start:stop] for (start, stop), w in zip(spans, raw, strict=True)]


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (NumPy's SeedSequence), so nearby inputs give unrelated streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def position_noise(
    shape: tuple[int, int, int], depth: tuple[int, int], *, seed: int, sample: int
) -> torch.Tensor:
    """Standard normal ``(C, stop - start, h, w)``; slice z depends only on ``(seed, sample, z)`` (CPU)."""
    start, stop = depth
    slices = [torch.randn(shape, generator=torch.Generator().manual_seed(_seed(seed, sample, z)))
              for z in range(start, stop)]
    return torch.stack(slices, dim=1)


# -------------------------------------------------------------------------- data consistency
def _thick_blocks(
    n_thin: int, n_thick: int, factor: int, thin_index0: float, mode: str, slab: int
) -> list[np.ndarray]:
    """Thin indices that thick slice k averages (``slab``) or coincides with (``decimate``)."""
    blocks = []
    for k in range(n_thick):
        centre = thin_index0 + k * factor
        if mode == "decimate":
            if not float(centre).is_integer():
                raise ValueError(
                    f"decimate consistency needs thick slices on thin positions; thick slice {k} sits at "
                    f"thin index {centre} (use 'slab')"
                )
            index = np.array([int(centre)])
        else:
            first = int(round(centre - (slab - 1) / 2))
            index = np.arange(first, first + slab)
        blocks.append(index[(index >= 0) & (index < n_thin)])
    return blocks


def block_means(thin_hu: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """``(n_thick, y, x)``: the mean of each block of thin slices (NaN for a block outside the grid)."""
    out = np.full((len(blocks), *thin_hu.shape[1:]), np.nan, dtype=np.float32)
    for k, index in enumerate(blocks):
        if index.size:
            out[k] = thin_hu[index].mean(axis=0, dtype=np.float64)
    return out


def project_consistent(thin_hu: np.ndarray, thick_hu: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Data consistency in place: add ``thick_k - mean(block_k)`` per pixel to every slice of block k.

    For decimation blocks (one slice each) this sets the observed slices to the thick ones. Exact
    (zero residual) when blocks do not overlap.
    """
    for k, index in enumerate(blocks):
        if index.size:
            shift = thick_hu[k] - thin_hu[index].mean(axis=0, dtype=np.float64)
            thin_hu[index] += shift.astype(np.float32)[None]
    return thin_hu


def _consistency_blocks(
    thick: Volume, thin: Volume, factor: int, mode: Consistency
) -> tuple[list[np.ndarray], str]:
    """Blocks of the thin grid behind each thick slice; the thick centres are found from the geometry."""
    record = thick.meta.get(thick_slices.META_KEY) or {}
    if mode == "auto":
        mode = record.get("mode", "slab")  # a measured thick slice is an average over its thickness
    if mode not in ("slab", "decimate"):
        raise ValueError(f"consistency must be 'auto', 'slab' or 'decimate', got {mode!r}")
    offset = np.asarray(thick.origin) - np.asarray(thin.origin)
    thin_index0 = float(offset @ thin.slice_normal) / thin.spacing[0]
    thin_index0 = round(thin_index0 * 2) / 2  # positions are whole or half thin slices; drop float noise
    slab = factor
    if record.get("slab") and record.get("factor"):
        slab = max(1, int(round(record["slab"] * factor / record["factor"])))
    return _thick_blocks(thin.shape[0], thick.shape[0], factor, thin_index0, mode, slab), mode


# ---------------------------------------------------------------------------------- pipeline
@dataclasses.dataclass(frozen=True)
class InterpolationOptions:
    """How ``interpolate_volume`` samples: sampler, z-windows, data consistency, seeds, memory, precision."""

    factor: int | None = None  # thin slices per thick slice; None: the model's training factor
    sampler: str = "ddim"  # a name in ctlib.diffusion.samplers.SAMPLERS
    steps: int = 20  # denoising steps
    eta: float = 0.0  # 0: deterministic DDIM; 1: DDPM-like
    samples: int = 1  # draws averaged; 2 or more also give the std map
    window_depth: int | None = None  # thin slices per z-window (default 48), rounded up to the U-Net's
    overlap: int | None = None  # thin slices shared by neighbouring windows (default a quarter of the window)
    data_consistency: bool = True  # project every draw onto the observed thick slices
    consistency: Consistency = "auto"  # "auto": the mode recorded by simulate_thick, else "slab"
    seed: int = 0  # the same seed gives the same output
    progress: bool = True  # a progress bar over the z-windows
    chunk: int = 16  # slices per VAE call
    return_raw: bool = False  # also keep the mean before data consistency
    bf16: bool = False  # bfloat16 autocast for the networks (the sampler's arithmetic stays float32)
    n_thin: int | None = None  # thin slices out; None: n_thick * factor (decimation pairs: to the last slice)


def default_window_depth(depth_multiple: int, window_depth: int | None = None) -> int:
    """``window_depth`` (default 48) rounded up to a multiple of the U-Net's depth multiple."""
    depth = DEFAULT_WINDOW_DEPTH if not window_depth else int(window_depth)
    return max(1, math.ceil(depth / depth_multiple)) * depth_multiple


def _checked_factor(thick: Volume, interpolator: Interpolator, options: InterpolationOptions) -> int:
    """The z-upsampling factor, after refusing arguments the pipeline cannot run with."""
    factor = interpolator.spec.factor if options.factor is None else options.factor
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    if thick.shape[0] < 2:
        raise ValueError(f"need at least 2 thick slices to interpolate between, got {thick.shape[0]}")
    if not isinstance(options.samples, int) or options.samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {options.samples!r}")
    samplers.get_sampler(options.sampler)  # ValueError naming the registered samplers
    return factor


def sample_latents(
    denoiser: Denoiser,
    cond: torch.Tensor,
    spans: list[tuple[int, int]],
    weights: list[np.ndarray],
    options: InterpolationOptions,
    sample: int,
    on_window: Callable[[], object] = lambda: None,
) -> torch.Tensor:
    """One draw of the latent stack ``(1, C, n_thin, h, w)``: every z-window sampled, blended by weight.

    Window i starts from ``position_noise`` (slice z depends on ``(seed, sample, z)`` only) and draws
    its per-step noise from a generator seeded by ``(seed, sample, i)``; it is conditioned on its
    part of ``cond`` ``(1, C, n_thin, h, w)``.
    """
    sample_fn = samplers.get_sampler(options.sampler)
    plane = (cond.shape[1], *cond.shape[3:])  # x_t has the VAE's latent channels, like the condition
    latents = torch.zeros((1, plane[0], cond.shape[2], *plane[1:]), device=cond.device)
    for i, ((start, stop), w) in enumerate(zip(spans, weights, strict=True)):
        x_T = position_noise(plane, (start, stop), seed=options.seed, sample=sample).to(cond.device)[None]
        generator = torch.Generator().manual_seed(_seed(options.seed, sample, i, 1))
        x0 = sample_fn(denoiser.conditioned(cond[:, :, start:stop]), tuple(x_T.shape),
                       num_steps=options.steps, generator=generator, eta=options.eta, x_T=x_T)
        ramp = torch.as_tensor(w, dtype=torch.float32, device=cond.device)[None, None, :, None, None]
        latents[:, :, start:stop] += x0.float() * ramp
        on_window()
    return latents


def baseline_estimate(linear: Volume, interpolator: Interpolator) -> np.ndarray:
    """The baseline B ``(n_thin, y, x)`` in HU a residual model corrects: the linear z-interpolation, or the
    regressor's correction of it (Gaussian-blended sliding windows, not clipped: as in training)."""
    if interpolator.spec.baseline != "regressor":
        return linear.array
    x = torch.from_numpy(windows.normalize(linear.array, interpolator.window))[None, None]
    y = regressor_module.predict_volume(interpolator.regressor, x.to(interpolator.device))
    return windows.denormalize(y[0, 0].float().cpu().numpy(), interpolator.window)


def _running_mean(mean: np.ndarray | None, x: np.ndarray, count: int) -> np.ndarray:
    """The mean of ``count`` arrays from the mean of the first ``count - 1`` and the last one, ``x``
    (a new array: never ``x`` itself, which the caller may change in place)."""
    return x.copy() if mean is None else mean + (x - mean) / count


@dataclasses.dataclass
class _Welford:
    """Running per-voxel mean and sum of squared deviations M2 over the draws (Welford 1962)."""

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        self.count += 1
        if self.mean is None:
            self.mean, self.m2 = x, np.zeros_like(x)
            return
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def std(self) -> np.ndarray | None:
        """Unbiased per-voxel standard deviation; None for a single draw."""
        return None if self.count < 2 else np.sqrt(np.maximum(self.m2 / (self.count - 1), 0.0))


def _on_thin_grid(linear: Volume, array: np.ndarray, meta: dict[str, Any]) -> Volume:
    volume = linear.with_array(array.astype(np.float32))
    volume.meta = meta
    return volume


@torch.no_grad()
def interpolate_volume(
    thick: Volume, interpolator: Interpolator, options: InterpolationOptions | None = None, **overrides: Any
) -> InterpolationResult:
    """Latent-diffusion slice interpolation (Rombach et al. 2022): ``(n, y, x)`` -> ``(n * factor, y, x)``.

    z-windows of the thin grid -> slice codec (linear estimate to condition latents) -> sampler per
    window, blended -> slice codec back to HU -> data consistency, over ``samples`` draws.
    ``options`` (``InterpolationOptions``) with any field overridden by keyword, e.g.
    ``interpolate_volume(thick, interpolator, steps=10, samples=4)``.
    """
    t_start = time.perf_counter()
    opts = dataclasses.replace(options or InterpolationOptions(), **overrides)
    factor = _checked_factor(thick, interpolator, opts)
    n_thin = thick.shape[0] * factor if opts.n_thin is None else int(opts.n_thin)
    if not 1 <= n_thin <= thick.shape[0] * factor:
        raise ValueError(f"n_thin must be in [1, {thick.shape[0] * factor}] (n_thick * factor), got {n_thin}")
    window = default_window_depth(interpolator.depth_multiple, opts.window_depth)
    overlap = window // 4 if opts.overlap is None else int(opts.overlap)
    spans = window_spans(n_thin, window, overlap)
    weights = blend_weights(spans, n_thin)

    device = interpolator.device
    precision = contextlib.nullcontext
    if opts.bf16:
        precision = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    codec = SliceCodec(interpolator.vae, interpolator.window, interpolator.scale_factor, chunk=opts.chunk,
                       multiple=interpolator.inplane_multiple, device=device, precision=precision)
    linear = thick_slices.upsample_z(thick, factor, "linear", n_thin=n_thin)  # the thin grid
    spec = interpolator.spec
    base = baseline_estimate(linear, interpolator) if spec.residual else linear.array
    cond = codec.encode(base)[None]
    base_decoded = codec.decode(cond[0], thick.shape[1:]) if spec.residual else None  # D(z(B))
    denoiser = Denoiser(interpolator.unet, interpolator.spec.prediction, interpolator.spec.noise_schedule(),
                        depth_multiple=interpolator.depth_multiple, precision=precision)
    blocks, mode = _consistency_blocks(thick, linear, factor, opts.consistency)

    draws, raw_mean, before_mean, sampling_s = _Welford(), None, None, 0.0
    bar = tqdm(total=opts.samples * len(spans), desc="z-windows", unit="window", disable=not opts.progress)
    for k in range(opts.samples):
        t0 = time.perf_counter()
        latents = sample_latents(denoiser, cond, spans, weights, opts, k, on_window=lambda: bar.update(1))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        sampling_s += time.perf_counter() - t0
        if spec.residual:
            latents = cond + latents / spec.residual_scale
        hu = codec.decode(latents[0], thick.shape[1:])
        del latents
        if base_decoded is not None:
            hu += base - base_decoded  # B + D(z) - D(z(B)): the VAE's error on B cancels
        if opts.return_raw:
            raw_mean = _running_mean(raw_mean, hu, k + 1)
        before_mean = _running_mean(before_mean, block_means(hu, blocks), k + 1)
        if opts.data_consistency:
            project_consistent(hu, thick.array, blocks)
        draws.add(hu)
    bar.close()

    mask = body_mask.body_mask(thick.array)
    before = interpolation.mean_abs_residual_hu(before_mean, thick.array, mask)
    after = (interpolation.mean_abs_residual_hu(block_means(draws.mean, blocks), thick.array, mask)
             if opts.data_consistency else before)
    settings = {
        "factor": factor, "sampler": opts.sampler, "steps": opts.steps, "eta": opts.eta,
        "samples": opts.samples, "window_depth": window, "overlap": overlap,
        "data_consistency": opts.data_consistency, "consistency": mode, "seed": opts.seed,
        "chunk": opts.chunk, "bf16": opts.bf16,
        **interpolator.meta,
    }
    out_meta = {**linear.meta, "interpolated": {**settings, "method": "latent_diffusion"}}
    out_meta.pop("upsampled", None)
    std = draws.std()
    return InterpolationResult(
        mean=_on_thin_grid(linear, draws.mean, out_meta),
        std=None if std is None else _on_thin_grid(linear, std, {**out_meta, "map": "std_hu"}),
        raw=(None if raw_mean is None
             else _on_thin_grid(linear, raw_mean, {**out_meta, "data_consistency": False})),
        residual_before_hu=before,
        residual_after_hu=after,
        seconds=time.perf_counter() - t_start,
        seconds_per_step=sampling_s / (opts.samples * opts.steps),
        windows=spans,
        settings=settings,
    )
