"""Checkpoints: weights_only round trip, RNG capture/restore, refusals with one-line errors."""

from __future__ import annotations

import fractions
import os
import random

import numpy as np
import pytest
import torch

import ctlib
from ctlib import checkpoint
from ctlib.data import windows
from ctlib.errors import CTInputError


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 3)).pow(2).mean().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_with_weights_only(tmp_path):
    model, optimizer = _model_and_optimizer()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5**s)
    optimizer.step()
    scheduler.step()
    record = windows.normalization_record("mediastinum")
    path = checkpoint.save_checkpoint(
        tmp_path / "sub" / "ckpt.pt",
        model_state=model.state_dict(),
        config={"model": {"channels": [8, 16], "kind": "mlp"}, "train": {"lr": 1e-2}},
        normalization=record,
        extra={"scale_factor": 0.8125, "step": 7, "epoch": 1},
        optimizer_state=optimizer.state_dict(),
        scheduler_state=scheduler.state_dict(),
    )
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary left behind
    raw = torch.load(path, weights_only=True)  # loadable without pickled classes
    ckpt = checkpoint.load_checkpoint(path)
    assert raw.keys() == ckpt.keys()
    assert ckpt["config"]["model"] == {"channels": [8, 16], "kind": "mlp"}
    assert windows.window_from_record(ckpt["normalization"]) == windows.MEDIASTINUM
    assert ckpt["extra"] == {"scale_factor": 0.8125, "step": 7, "epoch": 1}
    assert ckpt["provenance"]["ctlib_version"] == ctlib.__version__
    assert ckpt["provenance"]["torch_version"] == str(torch.__version__)
    assert "git_commit" in ckpt["provenance"]

    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    fresh.load_state_dict(ckpt["model_state"])
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_optimizer.load_state_dict(ckpt["optimizer_state"])
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
        assert torch.equal(optimizer.state[a]["exp_avg"], fresh_optimizer.state[b]["exp_avg"])
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda s: 0.5**s)
    fresh_scheduler.load_state_dict(ckpt["scheduler_state"])
    assert fresh_scheduler.last_epoch == 1


def test_rng_capture_and_restore_all_generators(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    model, _ = _model_and_optimizer()
    checkpoint.save_checkpoint(
        tmp_path / "c.pt",
        model_state=model.state_dict(),
        config={},
        normalization={},
        extra={},
        rng_state=True,
    )
    expected = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3),
        np.random.standard_normal(),
        torch.rand(3),
    )
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    checkpoint.restore_rng(checkpoint.load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.standard_normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and got[3] == expected[3]
    assert np.array_equal(got[2], expected[2]) and torch.equal(got[4], expected[4])


def test_refuses_unstorable_values_before_writing(tmp_path):
    model, _ = _model_and_optimizer()
    with pytest.raises(TypeError, match=r"\['scale_factor'\].*float64"):
        checkpoint.save_checkpoint(
            tmp_path / "c.pt", model_state=model.state_dict(), config={}, normalization={},
            extra={"scale_factor": np.float64(0.5)},
        )
    assert not (tmp_path / "c.pt").exists()


def test_missing_corrupt_and_incomplete_files(tmp_path):
    with pytest.raises(CTInputError, match="no checkpoint file"):
        checkpoint.load_checkpoint(tmp_path / "absent.pt")
    model, _ = _model_and_optimizer()
    path = checkpoint.save_checkpoint(
        tmp_path / "ok.pt", model_state=model.state_dict(), config={}, normalization={}
    )
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CTInputError, match="not a readable checkpoint") as info:
        checkpoint.load_checkpoint(truncated)
    assert "\n" not in str(info.value) and str(truncated) in str(info.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(CTInputError, match="not a readable checkpoint"):
        checkpoint.load_checkpoint(garbage)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CTInputError, match="not a ctlib checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "plain.pt")
    incomplete = torch.load(path, weights_only=True)
    del incomplete["normalization"]
    torch.save(incomplete, tmp_path / "incomplete.pt")
    with pytest.raises(CTInputError, match=r"lacks key\(s\) \['normalization'\]"):
        checkpoint.load_checkpoint(tmp_path / "incomplete.pt")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format": checkpoint.FORMAT, "payload": fractions.Fraction(1, 3)}, tmp_path / "evil.pt")
    with pytest.raises(CTInputError, match="WeightsUnpickler|not a readable"):
        checkpoint.load_checkpoint(tmp_path / "evil.pt")


class _RunsCode:
    """A pickle that would call a function on load (harmless here: os.getcwd)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_pickled_code_is_named_as_blocked_without_torchs_advice(tmp_path):
    """Before: the refusal repeated torch's advice to re-run with weights_only=False."""
    path = tmp_path / "evil.pt"
    torch.save({"format": "ctlib-checkpoint", "payload": _RunsCode()}, path)
    with pytest.raises(CTInputError) as info:
        checkpoint.load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable checkpoint (it holds pickled code (posix.getcwd)")
    assert "weights_only=False" not in message and "\n" not in message


def test_foreign_pickle_protocol_is_refused_quietly(tmp_path, capfd):
    """A plain pickle (protocol 4) made torch print a UserWarning before the one-line refusal."""
    import pickle

    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"payload": _RunsCode()}, protocol=4))
    with pytest.raises(CTInputError, match=r"plain\.pt: not a readable checkpoint"):
        checkpoint.load_checkpoint(path)
    assert capfd.readouterr().err == ""
