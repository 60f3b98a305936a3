"""Discrete noise schedules beta_1 .. beta_T of the forward process q(x_t | x_0).

Index convention: array index ``t`` in ``0 .. T-1`` is the paper's step ``t + 1``, so
``alphas_cumprod[t] = prod_{s <= t} (1 - betas[s])`` is the paper's ``alpha_bar_{t+1}`` and
``x_t = sqrt(alphas_cumprod[t]) * x_0 + sqrt(1 - alphas_cumprod[t]) * eps``. These raw integer
indices are also what the U-Net's time embedding receives. Everything is float64 so that
conversions stay exact where ``alphas_cumprod`` is close to 0 or 1; callers cast the extracted
coefficients to the data dtype.

Comparison with MONAI 1.6 (``monai.networks.schedulers``, checked in tests/test_diffusion_schedules.py):

- ``linear`` == ``"linear_beta"`` and ``scaled_linear`` == ``"scaled_linear_beta"`` with the same
  ``beta_start`` / ``beta_end`` (MONAI computes in float32; the betas agree to float32 rounding,
  alphas_cumprod to the float32 cumprod error, ~1e-6 relative). Note that MONAI's default
  ``beta_start, beta_end`` for ``scaled_linear_beta`` are (1e-4, 2e-2), not LDM's (0.00085, 0.012):
  pass them explicitly.
- ``cosine`` == ``"cosine"``: same formula, same clipping at 0.999, and (like here) MONAI sets
  ``alphas_cumprod = cumprod(1 - betas)``, so ``alphas_cumprod[0] = 1 - betas[0] < 1``; its
  ``alphas_cumprod /= alphas_cumprod[0]`` only normalizes f(0) and cancels in the beta ratios. The
  difference is precision: MONAI evaluates the cosine in float32, which moves the tail betas (t near
  T-1, where f(t) ~ 1e-6) by up to 3e-5 absolute / 1.4e-3 relative and alphas_cumprod by up to
  6.4e-5 relative (T = 1000). diffusers' ``squaredcos_cap_v2`` is the same formula in float64 cast
  to float32.
- neither rescales the linear betas by 1000 / T (Nichol & Dhariwal 2021 do for T != 1000); the
  defaults here are defined for T = 1000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

ScheduleKind = Literal["linear", "scaled_linear", "cosine"]

_DEFAULT_BETAS: dict[str, tuple[float, float]] = {
    "linear": (1e-4, 0.02),  # Ho et al. 2020, T = 1000
    "scaled_linear": (0.00085, 0.012),  # Rombach et al. 2022 (LDM / Stable Diffusion)
}
COSINE_S = 0.008  # Nichol & Dhariwal 2021, offset that keeps beta_1 from being vanishingly small
COSINE_MAX_BETA = 0.999  # Nichol & Dhariwal 2021, avoids the singularity at t = T


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete forward process: ``betas``, ``alphas = 1 - betas`` and ``alphas_cumprod``, each a
    float64 tensor of shape ``(T,)``, with ``T = num_train_timesteps``."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    num_train_timesteps: int
    kind: str = "custom"

    def __post_init__(self) -> None:
        expected = (self.num_train_timesteps,)
        for name in ("betas", "alphas", "alphas_cumprod"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dtype != torch.float64 or value.shape != expected:
                found = (value.dtype, tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(
                    f"NoiseSchedule.{name}: expected a float64 tensor of shape {expected}, got {found}"
                )
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError(
                f"NoiseSchedule ({self.kind}): betas must lie in (0, 1), got range "
                f"[{self.betas.min().item():.3g}, {self.betas.max().item():.3g}]"
            )


def from_betas(betas: torch.Tensor, *, kind: str = "custom") -> NoiseSchedule:
    """Schedule from a beta sequence (Ho et al. 2020): ``alphas_cumprod = cumprod(1 - betas)``, in float64."""
    betas = torch.as_tensor(betas).detach().to(device="cpu", dtype=torch.float64).flatten()
    alphas = 1.0 - betas
    return NoiseSchedule(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=torch.cumprod(alphas, dim=0),
        num_train_timesteps=int(betas.numel()),
        kind=kind,
    )


def cosine_alpha_bar(t: torch.Tensor, num_train_timesteps: int, *, s: float = COSINE_S) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17 before normalization: ``f(t) = cos((t/T + s) / (1 + s) * pi/2)^2``."""
    return torch.cos((t / num_train_timesteps + s) / (1.0 + s) * (math.pi / 2.0)) ** 2


def make_schedule(
    kind: ScheduleKind,
    *,
    num_train_timesteps: int = 1000,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> NoiseSchedule:
    """Noise schedule: ``linear`` (Ho et al. 2020), ``scaled_linear`` (Rombach et al. 2022, LDM) or
    ``cosine`` (Nichol & Dhariwal 2021).

    ``beta_start`` / ``beta_end`` default to (1e-4, 0.02) for ``linear`` and (0.00085, 0.012) for
    ``scaled_linear``; ``cosine`` takes neither.
    """
    if kind not in get_args(ScheduleKind):
        raise ValueError(f"make_schedule: kind must be one of {get_args(ScheduleKind)}, got {kind!r}")
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(
            f"make_schedule: num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}"
        )
    T = num_train_timesteps

    if kind == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ValueError(
                "make_schedule('cosine'): beta_start / beta_end do not apply to the cosine schedule "
                f"(got beta_start={beta_start}, beta_end={beta_end}); leave them unset"
            )
        # alpha_bar(t) = f(t) / f(0) on the grid t = 0 .. T; beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1),
        # clipped at 0.999. alphas_cumprod is then re-accumulated from the clipped betas, so it is
        # f(t + 1) / f(0) (array index t) except at the clipped tail, and alphas_cumprod[0] = 1 - betas[0].
        f = cosine_alpha_bar(torch.arange(T + 1, dtype=torch.float64), T)
        betas = torch.clamp(1.0 - f[1:] / f[:-1], max=COSINE_MAX_BETA)
        return from_betas(betas, kind=kind)

    default_start, default_end = _DEFAULT_BETAS[kind]
    b0 = default_start if beta_start is None else float(beta_start)
    b1 = default_end if beta_end is None else float(beta_end)
    if not 0.0 < b0 <= b1 < 1.0:
        raise ValueError(
            f"make_schedule({kind!r}): expected 0 < beta_start <= beta_end < 1, got ({b0}, {b1})"
        )
    if kind == "linear":
        betas = torch.linspace(b0, b1, T, dtype=torch.float64)
    else:  # scaled_linear: linear in sqrt(beta)
        betas = torch.linspace(math.sqrt(b0), math.sqrt(b1), T, dtype=torch.float64) ** 2
    return from_betas(betas, kind=kind)


def extract(values: torch.Tensor, t: torch.Tensor | int, ndim: int) -> torch.Tensor:
    """Gather ``values[t]`` for per-sample timesteps ``t`` (B,) and shape it ``(B, 1, ..., 1)`` with
    ``ndim`` dimensions, e.g. ``(B, 1, 1, 1, 1)`` for ``(B, C, D, H, W)`` data. A Python int or a 0-d
    tensor gives shape ``(1, ..., 1)``. Keeps the dtype of ``values``; lives on the device of ``t``."""
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"extract: timesteps must be integers (raw indices 0..T-1), got dtype {t.dtype}")
    if t.ndim > 1:
        raise ValueError(
            f"extract: timesteps must have shape (B,) or be a scalar, got shape {tuple(t.shape)}"
        )
    batch = t.shape[0] if t.ndim == 1 else 1
    out = values.to(t.device)[t.long()]
    return out.reshape(batch, *([1] * (ndim - 1)))


def snr(schedule: NoiseSchedule, t: torch.Tensor | int) -> torch.Tensor:
    """Signal-to-noise ratio ``alpha_bar_t / (1 - alpha_bar_t)`` (Kingma et al. 2021), float64,
    shaped like ``t``."""
    t = torch.as_tensor(t)
    ab = schedule.alphas_cumprod.to(t.device)[t.long()]
    return ab / (1.0 - ab)
