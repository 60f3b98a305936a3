"""The one resolver of the ``device`` parameter (ctlib.device) and its per-rank use in training."""

from __future__ import annotations

import pytest
import torch

from ctlib import device as devices
from ctlib.train import distributed


@pytest.mark.parametrize("cuda", [False, True])
def test_auto_picks_cuda_when_available(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert devices.resolve_device("auto") == torch.device("cuda" if cuda else "cpu")
    assert devices.resolve_device() == devices.resolve_device("auto")
    assert devices.resolve_device("auto", local_rank=3) == torch.device("cuda:3" if cuda else "cpu")
    world = distributed.WorldInfo(rank=1, local_rank=2, world_size=4, distributed=False)
    assert distributed.resolve_device("auto", world) == torch.device("cuda:2" if cuda else "cpu")


def test_explicit_devices_pass_through(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device(torch.device("cpu"), local_rank=1) == torch.device("cpu")
    assert devices.resolve_device("cuda:1") == torch.device("cuda:1")
