"""Samplers of the reverse process, all with one signature, in a registry (``SAMPLERS``)::

    sampler(denoiser, shape, *, num_steps,
            generator=None, eta=0.0, x_T=None, clip_x0=None, callback=None) -> x_0  (B, C, D, H, W)

``denoiser`` is a ``ctlib.diffusion.denoiser.Denoiser``: the network with its prediction, schedule and
condition, called as ``denoiser(x_t, t)`` with raw integer timesteps ``t`` (B,) in ``0 .. T-1``; the
samplers know nothing of conditioning. ``callback(step_index, t, x_t, x0_pred)`` sees every step.
Put the model in eval mode first; sampling runs under ``torch.no_grad``.
Noise is drawn on the generator's device, so a seed gives the same sample on CPU and GPU.

Notes on MONAI 1.6 (checked in tests/test_diffusion_samplers.py):

- ``DDIMScheduler.set_timesteps`` builds its list with ``linspace(T-1, 0, N).round()`` but ``step``
  takes the previous timestep as ``t - T // N``: for T = 1000, N = 10 the list is 999, 888, ..., 111,
  0 while ``step(999)`` jumps to 899 and ``step(111)`` to 11, so the chain uses alpha_bar values
  that belong to no listed step. With the exact denoiser of Gaussian data the 10-step chain ends
  up to 0.22 away from the list-consistent one (0.027 at 50 steps). diffusers (0.42) has the same
  arithmetic, which is exact only for ``timestep_spacing="leading"`` or ``"trailing"``. Here the
  previous timestep is always the next entry of the list.
- ``DDPMScheduler.step`` takes ``alphas_cumprod[t - 1]`` as the previous value, so it is only
  correct on the full chain of T consecutive steps (with 50 inference steps and the exact Gaussian
  denoiser it returns samples of std 0.95 for data of std 0.5); ``ddpm`` below refuses anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, get_args

import torch

from ctlib.diffusion import parameterization
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.parameterization import Prediction
from ctlib.diffusion.schedules import NoiseSchedule

Spacing = Literal["linspace", "leading", "trailing"]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


class Sampler(Protocol):
    """The signature every entry of ``SAMPLERS`` has."""

    def __call__(
        self,
        denoiser: Denoiser,
        shape: tuple[int, ...],
        *,
        num_steps: int,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        x_T: torch.Tensor | None = None,
        clip_x0: tuple[float, float] | None = None,
        callback: Callback | None = None,
    ) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------
# Timestep lists and single steps (pure functions)
# ---------------------------------------------------------------------------------------------


def ddim_timesteps(
    num_train_timesteps: int, num_steps: int, *, spacing: Spacing = "linspace"
) -> torch.Tensor:
    """Descending DDIM timestep subsequence tau (Song et al. 2021, sec. 4.2), as raw indices (N,) long.

    ``linspace``: ``round(linspace(0, T-1, N))``, spans [0, T-1] (MONAI's and diffusers' default;
    N = 1 gives [T-1]);
    ``leading``: ``arange(N) * (T // N)``; ``trailing``: ``round(arange(T, 0, -T/N)) - 1``
    (Lin et al. 2024, table 2: always starts at T-1). All end at (or near) 0.
    """
    T = num_train_timesteps
    if spacing not in get_args(Spacing):
        raise ValueError(f"ddim_timesteps: spacing must be one of {get_args(Spacing)}, got {spacing!r}")
    if not isinstance(num_steps, int) or not 1 <= num_steps <= T:
        raise ValueError(f"ddim_timesteps: num_steps must be an int in [1, T={T}], got {num_steps!r}")
    if spacing == "linspace" and num_steps == 1:
        ts = torch.tensor([T - 1.0])  # one step from pure noise (MONAI); diffusers' linspace gives [0]
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, num_steps, dtype=torch.float64).round().flip(0)
    elif spacing == "leading":
        ts = (torch.arange(num_steps, dtype=torch.float64) * (T // num_steps)).flip(0)
    else:
        ts = (torch.arange(T, 0, -T / num_steps, dtype=torch.float64).round() - 1)[:num_steps]
    ts = ts.long()
    if ts.unique().numel() != ts.numel():  # cannot happen for N <= T; guards edits of the formulas above
        raise ValueError(f"ddim_timesteps: repeated timesteps for T={T}, N={num_steps}, spacing={spacing!r}")
    return ts


def _alpha_bar(schedule: NoiseSchedule, t: int) -> float:
    """alpha_bar at raw index t; t = -1 is the clean end of the chain, where alpha_bar = 1."""
    return 1.0 if t < 0 else float(schedule.alphas_cumprod[t])


def ddpm_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    schedule: NoiseSchedule,
    *,
    prediction: Prediction,
    noise: torch.Tensor | None = None,
    clip_x0: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step x_t -> x_{t-1} (Ho et al. 2020, eq. 6-7) with the posterior variance
    beta_tilde_t ("fixed small"); ``noise`` (like x_t) is required for t > 0. Returns (x_{t-1}, x0_pred)."""
    x0, _ = parameterization.predict_x0_eps(prediction, model_output, x_t, t, schedule, clip_x0)
    # Notation of Ho et al.: alpha_t = 1 - beta_t, abar_t = prod alpha_s, abar_{t-1} = 1 at the last step.
    beta_t = float(schedule.betas[t])
    alpha_t = float(schedule.alphas[t])
    abar_t = _alpha_bar(schedule, t)
    abar_prev = _alpha_bar(schedule, t - 1)
    # Posterior mean mu_tilde(x_t, x0) = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0
    #                                    + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t   (eq. 7)
    coef_x0 = abar_prev**0.5 * beta_t / (1.0 - abar_t)
    coef_xt = alpha_t**0.5 * (1.0 - abar_prev) / (1.0 - abar_t)
    mean = coef_x0 * x0 + coef_xt * x_t
    if t == 0:
        return mean, x0
    if noise is None:
        raise ValueError(f"ddpm_step: noise is required at t={t} > 0")
    # Posterior variance beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t   (eq. 7)
    variance = (1.0 - abar_prev) / (1.0 - abar_t) * beta_t
    return mean + variance**0.5 * noise, x0


def ddim_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    *,
    prediction: Prediction,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One generalized step x_t -> x_{t_prev} (Song et al. 2021, eq. 12 and 16). ``t_prev = -1`` is
    the clean end (alpha_bar_prev = 1, i.e. diffusers' ``set_alpha_to_one=True``), where an eta = 0
    step returns x0_pred. ``noise`` (like x_t) is required when eta > 0. Returns (x_{t_prev}, x0_pred)."""
    if not -1 <= t_prev < t:
        raise ValueError(f"ddim_step: expected -1 <= t_prev < t, got t={t}, t_prev={t_prev}")
    if eta < 0:
        raise ValueError(f"ddim_step: eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    x0, eps = parameterization.predict_x0_eps(prediction, model_output, x_t, t, schedule, clip_x0)
    # Notation of Song et al.: alpha_t there is alpha_bar_t here.
    abar_t = _alpha_bar(schedule, t)
    abar_prev = _alpha_bar(schedule, t_prev)
    # sigma_t(eta) = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)   (eq. 16)
    sigma = eta * ((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)) ** 0.5
    # x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z   (eq. 12)
    direction = max(1.0 - abar_prev - sigma**2, 0.0) ** 0.5
    x_prev = abar_prev**0.5 * x0 + direction * eps
    if sigma > 0:
        if noise is None:
            raise ValueError(f"ddim_step: noise is required when eta > 0 (eta={eta}, t={t})")
        x_prev = x_prev + sigma * noise
    return x_prev, x0


# ---------------------------------------------------------------------------------------------
# Samplers (common signature)
# ---------------------------------------------------------------------------------------------


def _start(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    x_T: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """x_T ~ N(0, I) of ``shape`` where the denoiser places it (``Denoiser.placement``), or a copy of x_T."""
    shape = tuple(shape)
    if x_T is not None:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"sampler: x_T has shape {tuple(x_T.shape)}, expected {shape}")
        return x_T.clone()
    return _randn(shape, generator, *denoiser.placement())


def _randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def _t_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    """The same raw timestep for every sample: (B,) long, the dtype used in training."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


@torch.no_grad()
def ddpm(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    num_steps: int,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    x_T: torch.Tensor | None = None,
    clip_x0: tuple[float, float] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, algorithm 2); ``eta`` is unused
    (always stochastic)."""
    schedule, prediction = denoiser.schedule, denoiser.prediction
    T = schedule.num_train_timesteps
    if num_steps != T:
        raise ValueError(
            f"ddpm: num_steps must equal the number of training timesteps T={T}, got {num_steps}. The DDPM "
            "posterior q(x_{t-1} | x_t, x0) assumes consecutive timesteps; fewer steps need a respaced "
            "schedule. Use 'ddim' instead (eta=1.0 gives the DDPM-like stochastic sampler on a timestep "
            "subsequence)."
        )
    x = _start(denoiser, shape, x_T, generator)
    for i, t in enumerate(range(T - 1, -1, -1)):
        out = denoiser(x, _t_batch(t, x))
        noise = _randn(tuple(x.shape), generator, x.device, x.dtype) if t > 0 else None
        x_prev, x0 = ddpm_step(out, x, t, schedule, prediction=prediction, noise=noise, clip_x0=clip_x0)
        if callback is not None:
            callback(i, t, x, x0)
        x = x_prev
    return x


@torch.no_grad()
def ddim(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    num_steps: int,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    x_T: torch.Tensor | None = None,
    clip_x0: tuple[float, float] | None = None,
    callback: Callback | None = None,
    spacing: Spacing = "linspace",
) -> torch.Tensor:
    """Denoising diffusion implicit models (Song et al. 2021) on a timestep subsequence; eta = 0 is
    deterministic.

    The previous timestep of each step is the next entry of ``ddim_timesteps(T, num_steps,
    spacing=spacing)``, and the last step goes to alpha_bar = 1 (returns x0_pred when eta = 0).
    With eta > 0 noise is drawn at every step (the last one's sigma is 0), as diffusers does.
    """
    schedule, prediction = denoiser.schedule, denoiser.prediction
    ts = ddim_timesteps(schedule.num_train_timesteps, num_steps, spacing=spacing).tolist()
    prevs = ts[1:] + [-1]
    x = _start(denoiser, shape, x_T, generator)
    for i, (t, t_prev) in enumerate(zip(ts, prevs, strict=True)):
        out = denoiser(x, _t_batch(t, x))
        noise = _randn(tuple(x.shape), generator, x.device, x.dtype) if eta > 0 else None
        x_prev, x0 = ddim_step(
            out, x, t, t_prev, schedule, prediction=prediction, eta=eta, noise=noise, clip_x0=clip_x0
        )
        if callback is not None:
            callback(i, t, x, x0)
        x = x_prev
    return x


@torch.no_grad()
def ddim_invert(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    num_steps: int,
    spacing: Spacing = "linspace",
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion x0 -> x_T (Song et al. 2021, sec. 4.3; Dhariwal & Nichol 2021, app. F).

    Runs the eta = 0 chain of ``ddim`` backwards over the same timesteps: the step tau_{i-1} -> tau_i
    (tau_0 = clean, alpha_bar = 1) reuses the eps that sampling would predict at tau_i, approximated
    by calling the model at timestep tau_i on the current, slightly less noisy x (as diffusers'
    DDIMInverseScheduler and null-text inversion do). Then x0_hat = (x - s_prev eps) / a_prev and
    x_{tau_i} = a_i x0_hat + s_i eps. The error vanishes as num_steps grows; no clipping.
    x0: (B, C, D, H, W); returns x_T of the same shape.
    """
    schedule = denoiser.schedule
    ts = ddim_timesteps(schedule.num_train_timesteps, num_steps, spacing=spacing).flip(0).tolist()
    prevs = [-1] + ts[:-1]
    x = x0.clone()
    for i, (t_prev, t) in enumerate(zip(prevs, ts, strict=True)):
        _, eps = denoiser.x0_eps(x, t)
        abar_prev = _alpha_bar(schedule, t_prev)
        abar_t = _alpha_bar(schedule, t)
        x0_hat = (x - (1.0 - abar_prev) ** 0.5 * eps) / abar_prev**0.5
        if callback is not None:
            callback(i, t, x, x0_hat)
        x = abar_t**0.5 * x0_hat + (1.0 - abar_t) ** 0.5 * eps
    return x


SAMPLERS: dict[str, Sampler] = {
    "ddpm": ddpm,
    "ddim": ddim,
}


def get_sampler(name: str) -> Sampler:
    """The sampler registered under ``name`` in ``SAMPLERS``."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"get_sampler: unknown sampler {name!r}; registered: {sorted(SAMPLERS)} "
            "(every one takes (denoiser, shape, *, num_steps, ...))"
        ) from None
