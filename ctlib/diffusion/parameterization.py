"""What the denoiser predicts: the noise ``eps`` (Ho et al. 2020), the clean sample ``x0``, or the
velocity ``v`` (Salimans & Ho 2022), and the exact conversions between them.

With ``a = sqrt(alpha_bar_t)`` and ``s = sqrt(1 - alpha_bar_t)`` (``a^2 + s^2 = 1``)::

    x_t = a * x0 + s * eps                       (forward process, q_sample)
    v   = a * eps - s * x0                       (Salimans & Ho 2022, eq. in sec. 4)
    x0  = a * x_t - s * v        eps = a * v + s * x_t
    x0  = (x_t - s * eps) / a    eps = (x_t - a * x0) / s

The coefficients are computed in float64 from the schedule and cast to the data dtype. The v
conversions are a rotation (well conditioned at every t); the eps -> x0 conversion divides by ``a``
(ill conditioned near t = T-1) and x0 -> eps divides by ``s`` (ill conditioned near t = 0).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from ctlib.diffusion.schedules import NoiseSchedule, extract

Prediction = Literal["epsilon", "v", "x0"]


def check_prediction(kind: str) -> None:
    """Raise a ValueError naming the valid parameterizations if ``kind`` is not one of them."""
    if kind not in get_args(Prediction):
        raise ValueError(
            f"prediction must be one of {get_args(Prediction)} ('epsilon': noise, 'v': velocity of "
            f"Salimans & Ho 2022, 'x0': clean sample), got {kind!r}"
        )


def _coefficients(
    t: torch.Tensor | int, schedule: NoiseSchedule, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = sqrt(alpha_bar_t)`` and ``s = sqrt(1 - alpha_bar_t)`` shaped ``(B, 1, ..., 1)``
    in ``like``'s dtype."""
    t = torch.as_tensor(t, device=like.device)
    ab = extract(schedule.alphas_cumprod, t, like.ndim)
    return ab.sqrt().to(like.dtype), (1.0 - ab).sqrt().to(like.dtype)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """Forward process q(x_t | x_0) (Ho et al. 2020, eq. 4): ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``."""
    a, s = _coefficients(t, schedule, x0)
    return a * x0 + s * noise


def velocity(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> torch.Tensor:
    """Velocity target (Salimans & Ho 2022): ``v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0``."""
    a, s = _coefficients(t, schedule, x0)
    return a * noise - s * x0


def training_target(
    kind: Prediction, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> torch.Tensor:
    """Regression target of the denoiser for parameterization ``kind``: ``eps``, ``v`` or ``x0``."""
    check_prediction(kind)
    if kind == "epsilon":
        return noise
    if kind == "x0":
        return x0
    return velocity(x0, noise, t, schedule)


def predict_x0_eps(
    kind: Prediction,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor | int,
    schedule: NoiseSchedule,
    clip_x0: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Salimans & Ho 2022 conversions: the model's output in parameterization ``kind`` -> (x0, eps).

    ``clip_x0 = (low, high)`` clamps the predicted x0 to the data range (e.g. ``(-1, 1)`` for images
    normalized to [-1, 1]) and then re-derives eps from the clamped x0, so that
    ``x_t = a * x0 + s * eps`` still holds (as guided-diffusion's DDIM does; MONAI and diffusers keep
    the unclamped eps by default). ``None`` clamps nothing: the right choice in latent space, where
    the latents have no fixed range.
    """
    check_prediction(kind)
    if model_output.shape != x_t.shape:
        raise ValueError(
            f"predict_x0_eps: model output shape {tuple(model_output.shape)} != x_t shape {tuple(x_t.shape)} "
            "(a learned-variance model doubles the channels: split them before calling)"
        )
    a, s = _coefficients(t, schedule, x_t)
    if kind == "epsilon":
        eps = model_output
        x0 = (x_t - s * eps) / a
    elif kind == "x0":
        x0 = model_output
        eps = (x_t - a * x0) / s
    else:
        x0 = a * x_t - s * model_output
        eps = a * model_output + s * x_t
    if clip_x0 is not None:
        low, high = clip_x0
        if not low < high:
            raise ValueError(f"predict_x0_eps: clip_x0 must be (low, high) with low < high, got {clip_x0}")
        x0 = x0.clamp(low, high)
        eps = (x_t - a * x0) / s
    return x0, eps
