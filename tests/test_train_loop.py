"""The training loop: learning, gradient accumulation, exact resume, bf16 on CPU, compile flag, refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ctlib import checkpoint
from ctlib.data import windows
from ctlib.train import loop, lr_schedules
from ctlib.train.streams import BatchStream

NORMALIZATION = windows.normalization_record("full")
TRUE_W = torch.tensor([[1.5, -2.0, 0.5, 1.0]])


class Regression:
    """y = x @ w + 0.3, with x drawn per index: a dataset whose samples record their index."""

    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ TRUE_W.T + 0.3

    def __len__(self) -> int:
        return len(self.x)

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        jitter = torch.tensor(rng.normal(scale=1e-3), dtype=torch.float32)
        return {"x": self.x[index], "y": self.y[index] + jitter, "index": index}


def mse(batch, model):
    loss = (model(batch["x"]) - batch["y"]).pow(2).mean()
    return loss, {"mae": (model(batch["x"]) - batch["y"]).abs().mean()}


def make_model(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(8, 1)
    )


def config(**changes) -> loop.TrainConfig:
    base = loop.TrainConfig(
        steps=12, batch_size=4, lr=0.05, log_every=1, checkpoint_every=4, seed=7, device="cpu"
    )
    return dataclasses.replace(base, **changes)


class TinyEMA:
    """Generic EMA protocol: update(model), state_dict(), load_state_dict()."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)

    def state_dict(self) -> dict:
        return {"shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def test_loss_decreases_and_checkpoint_is_self_describing(tmp_path):
    model = make_model()
    data = BatchStream(Regression(), batch_size=8, seed=7)
    history = loop.train(
        model, mse, data, config(steps=60, batch_size=8, log_every=10, checkpoint_every=30),
        checkpoint_path=tmp_path / "ckpt.pt", normalization=NORMALIZATION,
        model_config={"hidden": 8, "sizes": (4, 8, 1)}, extra={"scale_factor": 0.5},
    )
    assert [r["step"] for r in history] == [10, 20, 30, 40, 50, 60]
    assert history[-1]["loss"] < 0.1 * history[0]["loss"]
    assert {"loss", "mae", "lr", "seconds_per_step"} <= set(history[0])
    ckpt = checkpoint.load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["config"]["model"] == {"hidden": 8, "sizes": [4, 8, 1]}
    assert ckpt["config"]["train"]["steps"] == 60 and ckpt["normalization"] == NORMALIZATION
    assert ckpt["extra"]["scale_factor"] == 0.5 and ckpt["extra"]["step"] == 60
    assert ckpt["extra"]["data_state"]["position"] == 60 * 8


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    histories, params = [], []
    for batch_size, accum in ((8, 1), (4, 2)):
        model = make_model()
        data = BatchStream(Regression(), batch_size=batch_size, seed=7)
        cfg = config(steps=1, batch_size=batch_size, grad_accum_steps=accum, lr=0.1)
        histories.append(loop.train(model, mse, data, cfg, checkpoint_path=tmp_path / f"{accum}.pt",
                                    normalization=NORMALIZATION))
        params.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert histories[0][0]["loss"] == pytest.approx(histories[1][0]["loss"], rel=1e-5)


class Killed(Exception):
    pass


def _run(tmp_path, name, steps, *, kill_at=None, seen=None):
    model = make_model(dropout=0.2)
    ema = TinyEMA(model)
    data = BatchStream(Regression(), batch_size=4, seed=7)

    def recording_loss(batch, net):
        seen.extend(batch["index"].tolist())
        noise = 1e-3 * torch.randn(())  # the loop must restore torch's RNG for this to match
        loss, metrics = mse(batch, net)
        return loss + noise, metrics

    def callback(record, net):
        if record["step"] == kill_at:
            raise Killed

    cfg = config(steps=steps, grad_accum_steps=2, grad_clip=1.0)
    history = loop.train(
        model, recording_loss, data, cfg, checkpoint_path=tmp_path / name, normalization=NORMALIZATION,
        ema=ema, lr_schedule=lr_schedules.WarmupCosine(warmup_steps=3, total_steps=steps), callback=callback,
    )
    return model, ema, history


def test_killed_run_resumes_to_the_same_parameters_and_data_order(tmp_path):
    seen_straight: list[int] = []
    model_a, ema_a, history_a = _run(tmp_path, "straight.pt", 12, seen=seen_straight)

    seen_killed: list[int] = []
    with pytest.raises(Killed):
        _run(tmp_path, "killed.pt", 12, kill_at=6, seen=seen_killed)
    # last checkpoint before the kill
    assert checkpoint.load_checkpoint(tmp_path / "killed.pt")["extra"]["step"] == 4
    torch.manual_seed(12345)  # a fresh process would have other RNG states
    np.random.seed(12345)
    seen_resumed: list[int] = []
    model_b, ema_b, history_b = _run(tmp_path, "killed.pt", 12, seen=seen_resumed)

    assert seen_killed[: 4 * 2 * 4] + seen_resumed == seen_straight
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for key in ema_a.shadow:
        torch.testing.assert_close(ema_a.shadow[key], ema_b.shadow[key], atol=1e-6, rtol=0)
    assert [r["step"] for r in history_b] == list(range(1, 13))
    for ra, rb in zip(history_a, history_b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6) and ra["lr"] == pytest.approx(rb["lr"])


def test_finished_run_is_not_trained_again(tmp_path):
    seen: list[int] = []
    model, _, history = _run(tmp_path, "done.pt", 4, seen=seen)
    before = [p.detach().clone() for p in model.parameters()]
    seen_again: list[int] = []
    model2, _, history2 = _run(tmp_path, "done.pt", 4, seen=seen_again)
    assert seen_again == [] and history2 == history
    for a, b in zip(before, model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_seed_or_model(tmp_path):
    loop.train(make_model(), mse, BatchStream(Regression(), batch_size=4, seed=7), config(steps=2),
               checkpoint_path=tmp_path / "c.pt", normalization=NORMALIZATION, model_config={"hidden": 8})
    with pytest.raises(ValueError, match="seed=7"):
        loop.train(
            make_model(),
            mse,
            BatchStream(Regression(), batch_size=4, seed=8),
            config(steps=4, seed=8),
            checkpoint_path=tmp_path / "c.pt",
            normalization=NORMALIZATION,
        )
    with pytest.raises(ValueError, match="model config"):
        loop.train(
            make_model(),
            mse,
            BatchStream(Regression(), batch_size=4, seed=7),
            config(steps=4),
            checkpoint_path=tmp_path / "c.pt",
            normalization=NORMALIZATION,
            model_config={"hidden": 16},
        )
    history = loop.train(
        make_model(),
        mse,
        BatchStream(Regression(), batch_size=4, seed=8),
        config(steps=2, seed=8),
        checkpoint_path=tmp_path / "c.pt",
        normalization=NORMALIZATION,
        resume=False,
    )
    assert len(history) == 2


def test_bf16_autocast_step_on_cpu(tmp_path):
    model = make_model()
    seen_dtypes = []

    def loss_fn(batch, net):
        out = net(batch["x"])
        seen_dtypes.append(out.dtype)
        return (out.float() - batch["y"]).pow(2).mean(), {}

    history = loop.train(
        model,
        loss_fn,
        BatchStream(Regression(), batch_size=4, seed=7),
        config(steps=1, amp="bf16"),
        checkpoint_path=tmp_path / "c.pt",
        normalization=NORMALIZATION,
    )
    assert seen_dtypes == [torch.bfloat16] and np.isfinite(history[0]["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_compile_flag_wraps_the_model_and_saves_plain_weights(tmp_path, monkeypatch):
    compiled = []

    class FakeCompiled(torch.nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, *args):
            return self._orig_mod(*args)

    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or FakeCompiled(m))
    model = make_model()
    loop.train(model, mse, BatchStream(Regression(), batch_size=4, seed=7), config(steps=2, compile=True),
               checkpoint_path=tmp_path / "c.pt", normalization=NORMALIZATION)
    assert compiled == [model]
    assert set(checkpoint.load_checkpoint(tmp_path / "c.pt")["model_state"]) == set(model.state_dict())


def test_nonfinite_loss_and_callback_stop(tmp_path):
    def bad(batch, net):
        return net(batch["x"]).mean() * float("nan"), {}

    with pytest.raises(FloatingPointError, match="step 1"):
        loop.train(make_model(), bad, BatchStream(Regression(), batch_size=4, seed=7), config(steps=3),
                   checkpoint_path=tmp_path / "nan.pt", normalization=NORMALIZATION)
    assert not (tmp_path / "nan.pt").exists()
    history = loop.train(make_model(), mse, BatchStream(Regression(), batch_size=4, seed=7), config(steps=10),
                         checkpoint_path=tmp_path / "stop.pt", normalization=NORMALIZATION,
                         callback=lambda record, model: record["step"] == 3)
    assert len(history) == 3 and checkpoint.load_checkpoint(tmp_path / "stop.pt")["extra"]["step"] == 3


def test_wall_clock_budget_stops_after_a_checkpoint_and_resumes(tmp_path):
    budget = config(steps=10, log_every=2, max_minutes=1e-9)  # past the budget at the first log step
    history = loop.train(make_model(), mse, BatchStream(Regression(), batch_size=4, seed=7), budget,
                         checkpoint_path=tmp_path / "budget.pt", normalization=NORMALIZATION)
    assert [r["step"] for r in history] == [2] and "_past_deadline" not in history[0]
    assert checkpoint.load_checkpoint(tmp_path / "budget.pt")["extra"]["step"] == 2
    history = loop.train(
        make_model(),
        mse,
        BatchStream(Regression(), batch_size=4, seed=7),
        config(steps=10, log_every=2),
        checkpoint_path=tmp_path / "budget.pt",
        normalization=NORMALIZATION,
    )
    assert [r["step"] for r in history] == [2, 4, 6, 8, 10]
    with pytest.raises(ValueError, match="max_minutes"):
        loop.TrainConfig(max_minutes=-1)


def test_config_validation_and_schedules():
    with pytest.raises(ValueError, match="amp"):
        loop.TrainConfig(amp="fp16")
    with pytest.raises(ValueError, match="grad_accum_steps"):
        loop.TrainConfig(grad_accum_steps=0)
    assert loop.TrainConfig.from_dict(loop.TrainConfig().to_dict()) == loop.TrainConfig()
    schedule = lr_schedules.WarmupCosine(warmup_steps=2, total_steps=10, min_ratio=0.1)
    assert [round(schedule(s), 4) for s in (0, 1, 2, 10)] == [0.5, 1.0, 1.0, 0.1]
    assert lr_schedules.Constant(4)(1) == 0.5 and lr_schedules.Constant()(0) == 1.0


def test_clock_checkpoint_before_the_end_when_checkpoint_every_exceeds_the_steps(tmp_path):
    """Issue 11: the default VAE run (200 steps, checkpoint_every 500) wrote nothing a killed run could
    resume from. With ``checkpoint_minutes`` a checkpoint exists at the first log step past the clock."""
    path = tmp_path / "clock.pt"
    steps_on_disk = []

    def watch(record, model):
        steps_on_disk.append(checkpoint.load_checkpoint(path)["extra"]["step"] if path.exists() else None)

    clocked = config(steps=8, log_every=2, checkpoint_every=500, checkpoint_minutes=1e-9)
    loop.train(make_model(), mse, BatchStream(Regression(), batch_size=4, seed=7), clocked,
               checkpoint_path=path, normalization=NORMALIZATION, callback=watch)
    # the first log step past the clock saves (after its callback); later ones wait for 20x the save time
    assert steps_on_disk[:2] == [None, 2] and set(steps_on_disk[2:]) <= {2, 4, 6}
    assert checkpoint.load_checkpoint(path)["extra"]["step"] == 8
    steps_on_disk.clear()
    off = config(steps=8, log_every=2, checkpoint_every=500, checkpoint_minutes=0)
    loop.train(make_model(), mse, BatchStream(Regression(), batch_size=4, seed=7), off,
               checkpoint_path=tmp_path / "off.pt", normalization=NORMALIZATION,
               callback=lambda record, model: steps_on_disk.append((tmp_path / "off.pt").exists()))
    assert steps_on_disk == [False, False, False, False]
    with pytest.raises(ValueError, match="checkpoint_minutes"):
        loop.TrainConfig(checkpoint_minutes=-1)
