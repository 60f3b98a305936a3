"""The denoiser adapter: condition concatenation, depth padding, precision, parameterization, placement."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from ctlib.diffusion import parameterization as P
from ctlib.diffusion import schedules
from ctlib.diffusion.denoiser import Denoiser

SCHEDULE = schedules.make_schedule("linear", num_train_timesteps=20, beta_end=0.2)


class Spy(nn.Module):
    """Records the input shape and returns ``x[:, :1] * 2 + t`` (one output channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return x[:, :1] * self.scale + t.to(x.dtype)[:, None, None, None, None]


def test_condition_is_concatenated_and_depth_padded_then_cropped():
    spy = Spy()
    x_t, cond = torch.randn(2, 1, 5, 2, 2), torch.randn(2, 3, 5, 2, 2)
    out = Denoiser(spy, "epsilon", SCHEDULE, cond=cond, depth_multiple=4)(x_t, torch.tensor([1, 2]))
    assert spy.shapes == [(2, 4, 8, 2, 2)]  # 1 + 3 channels, depth 5 padded to 8
    assert out.shape == x_t.shape and out.dtype == x_t.dtype  # cropped back, float32 again
    t_plane = torch.tensor([1.0, 2.0], dtype=torch.float64)[:, None, None, None, None]
    expected = (x_t.double() * 2 + t_plane).float()
    torch.testing.assert_close(out, expected)


def test_refuses_a_condition_of_another_shape_and_an_unknown_prediction():
    with pytest.raises(ValueError, match="concatenated along dim 1"):
        Denoiser(lambda x, t: x, "v", SCHEDULE, cond=torch.zeros(2, 1, 3, 4, 4))(
            torch.zeros(2, 1, 2, 4, 4), torch.zeros(2, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="prediction"):
        Denoiser(lambda x, t: x, "score", SCHEDULE)


def test_precision_context_wraps_the_network_call_only():
    entered = []

    @contextlib.contextmanager
    def precision():
        entered.append(True)
        yield

    denoiser = Denoiser(lambda x, t: x.half(), "x0", SCHEDULE, precision=precision)
    out = denoiser(torch.ones(1, 1, 2, 2, 2), torch.tensor([0]))
    assert entered == [True] and out.dtype == torch.float32


@pytest.mark.parametrize("kind", ["epsilon", "v", "x0"])
def test_x0_eps_applies_the_parameterization_at_one_timestep(kind):
    gen = torch.Generator().manual_seed(0)
    x_t, out = torch.randn(2, 1, 2, 2, 2, generator=gen), torch.randn(2, 1, 2, 2, 2, generator=gen)
    denoiser = Denoiser(lambda x, t: out, kind, SCHEDULE)
    x0, eps = denoiser.x0_eps(x_t, 7, clip_x0=(-1.0, 1.0))
    x0_ref, eps_ref = P.predict_x0_eps(kind, out, x_t, 7, SCHEDULE, (-1.0, 1.0))
    torch.testing.assert_close(x0, x0_ref, rtol=0, atol=0)
    torch.testing.assert_close(eps, eps_ref, rtol=0, atol=0)


def test_repeated_stacks_the_condition_per_draw_and_placement_follows_it():
    cond = torch.arange(2, dtype=torch.float64).view(2, 1, 1, 1, 1).expand(2, 1, 1, 2, 2)
    denoiser = Denoiser(Spy(), "v", SCHEDULE, cond=cond)
    three = denoiser.repeated(3)
    assert three.cond.shape == (6, 1, 1, 2, 2) and three.cond[:, 0, 0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    assert denoiser.cond.shape[0] == 2  # frozen: the original keeps its condition
    assert denoiser.placement() == (torch.device("cpu"), torch.float64)
    assert denoiser.conditioned(None).placement() == (torch.device("cpu"), torch.float64)  # the parameters'
    assert Denoiser(lambda x, t: x, "v", SCHEDULE).placement() == (torch.device("cpu"), torch.float32)
    assert Denoiser(lambda x, t: x, "v", SCHEDULE).repeated(4).cond is None
