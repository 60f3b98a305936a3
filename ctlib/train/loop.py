"""One resumable training loop for the VAE, the latent diffusion U-Net and the regressor.

``train`` runs AdamW (Loshchilov & Hutter 2019) with gradient accumulation, optional bf16 autocast,
``torch.compile``, gradient clipping, an LR multiplier (``LambdaLR``), an EMA object and DDP. Every
``checkpoint_every`` steps it writes one self-describing checkpoint (model, optimizer, scheduler,
EMA, RNG of every rank, data position, history); started again with the same path it resumes there,
and the rest of the run is the one an uninterrupted run would have done (same data order, same
noise, same updates).

``loss_fn(batch, model) -> (loss, metrics)`` must call ``model(...)`` itself -- the model it gets may
be DDP- or compile-wrapped, and DDP synchronizes gradients only through the wrapper's forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from ctlib import checkpoint
from ctlib.config import ConfigDict, to_plain
from ctlib.train import distributed
from ctlib.train.streams import BatchStream

Amp = Literal["none", "bf16"]
AMP_MODES: tuple[str, ...] = get_args(Amp)
RESERVED_EXTRA = ("step", "history", "data_state")
LossFn = Callable[[Any, nn.Module], tuple[torch.Tensor, dict[str, Any]]]


@dataclasses.dataclass
class TrainConfig(ConfigDict):
    """Optimization settings; stored in every checkpoint under ``config["train"]``."""

    steps: int = 1000  # optimizer steps in total (a resumed run continues up to this)
    batch_size: int = 8  # samples per micro-batch and rank
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    amp: Amp = "none"  # "bf16": torch.autocast to bfloat16 (CUDA with bf16 support, or CPU -- slow)
    compile: bool = False  # torch.compile the model
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    log_every: int = 10  # steps per history record (metrics averaged over them)
    checkpoint_every: int = 100  # steps per checkpoint (one file, replaced atomically)
    # also checkpoint at the first log step this many minutes after the last checkpoint (or the start), so
    # a run killed early can resume even when checkpoint_every exceeds its steps; 0 = steps only
    checkpoint_minutes: float = 0.25
    seed: int = 0
    device: str = "auto"  # "auto": cuda:LOCAL_RANK if available, else cpu
    # wall-clock budget: stop (after a checkpoint) at the first log step past it; 0 = none
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"TrainConfig.amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        for name in ("batch_size", "grad_accum_steps", "log_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        times = (self.max_minutes, self.checkpoint_minutes)
        if self.steps < 0 or self.lr <= 0 or self.grad_clip < 0 or min(times) < 0:
            raise ValueError(
                "TrainConfig: need steps >= 0, lr > 0, grad_clip >= 0, max_minutes >= 0, "
                "checkpoint_minutes >= 0; "
                f"got {self}"
            )
        self.betas = tuple(float(b) for b in self.betas)


def forward_loss(batch: Any, model: nn.Module) -> tuple[torch.Tensor, dict[str, Any]]:
    """``model(batch)``: the loss function for modules whose forward returns ``(loss, metrics)``."""
    return model(batch)


def batch_stream(
    dataset: Any, config: TrainConfig, world: distributed.WorldInfo | None = None, **kwargs: Any
) -> BatchStream:
    """A ``BatchStream`` with the config's batch size and seed, sharded for this rank."""
    world = world or distributed.world_from_env()
    return BatchStream(
        dataset,
        batch_size=config.batch_size,
        seed=config.seed,
        rank=world.rank,
        world_size=world.world_size,
        **kwargs,
    )


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def autocast_context(amp: Amp, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 for ``amp="bf16"``, else a no-op; refuses a GPU without bf16."""
    if amp == "none":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"amp='bf16' but {torch.cuda.get_device_name(device)} does not support bfloat16; use amp='none'"
        )
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _check_resumable(
    ckpt: dict[str, Any], config: TrainConfig, model_config: dict[str, Any] | None,
    world: distributed.WorldInfo, path: Path,
) -> None:
    """Refuse to resume a checkpoint whose run would not continue into this one."""
    saved = ckpt["config"].get("train", {})
    problems = [
        f"{key}={saved[key]!r} (this run: {getattr(config, key)!r})"
        for key in ("seed", "batch_size", "grad_accum_steps")
        if key in saved and saved[key] != getattr(config, key)
    ]
    if ckpt["extra"].get("world_size", 1) != world.world_size:
        problems.append(f"world_size={ckpt['extra'].get('world_size')} (this run: {world.world_size})")
    if (
        model_config is not None
        and ckpt["config"].get("model")
        and ckpt["config"]["model"] != to_plain(model_config)
    ):
        problems.append("a different model config")
    if problems:
        raise ValueError(
            f"{path}: cannot resume, the checkpoint was written with " + "; ".join(problems)
            + ". Use a new checkpoint path, or resume=False to start over."
        )


def train(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    config: TrainConfig,
    *,
    checkpoint_path: str | os.PathLike,
    normalization: dict[str, Any],
    model_config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    ema: Any = None,
    lr_schedule: Callable[[int], float] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    resume: bool = True,
    callback: Callable[[dict[str, float], nn.Module], bool | None] | None = None,
    world: distributed.WorldInfo | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.steps`` optimizer steps; returns the history (one dict per log step).

    ``data`` yields one micro-batch per ``next`` and should have ``state_dict`` / ``load_state_dict``
    (``BatchStream`` does) so a resumed run continues the same data order. ``normalization`` is the
    HU-window record stored with the checkpoints; ``model_config`` and ``extra`` (e.g. the latent
    scale factor) are stored too. ``ema`` is any object with ``update(model)``, ``state_dict()`` and
    ``load_state_dict()``. Metrics must be scalars. ``lr_schedule`` is a multiplier ``step -> factor`` (see
    ``lr_schedules``). ``callback(record, model)`` runs at every log step; returning ``True`` stops
    after a checkpoint, and so does ``config.max_minutes`` of wall time in this call (the LR schedule is then
    not finished; started again, the run resumes up to ``config.steps``). ``resume=False`` starts over and
    replaces an existing checkpoint. Under ``torchrun`` (``WORLD_SIZE`` > 1) a process that has not joined
    the process group yet joins it here (``distributed.setup_distributed``), so a notebook's training cell
    runs as one rank of a DDP job unchanged.
    """
    extra = dict(extra or {})
    clash = [k for k in RESERVED_EXTRA if k in extra]
    if clash:
        raise ValueError(f"train: extra must not use the reserved key(s) {clash}")
    world = world or distributed.world_from_env()
    if world.world_size > 1 and not world.distributed:  # launched by torchrun: join its process group here
        world = distributed.setup_distributed()
    if (
        getattr(data, "world_size", world.world_size) != world.world_size
        or getattr(data, "rank", world.rank) != world.rank
    ):
        raise ValueError(
            f"train: data is sharded for rank {data.rank} of {data.world_size}, this is rank {world.rank} of "
            f"{world.world_size}"
        )
    if getattr(data, "batch_size", config.batch_size) != config.batch_size:
        raise ValueError(
            f"train: data batch_size={data.batch_size} but config.batch_size={config.batch_size}"
        )
    device = distributed.resolve_device(config.device, world)
    autocast_context(config.amp, device)  # fail early on an unsupported combination
    base = model.to(device)
    if optimizer is None:
        params = [p for p in base.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule) if lr_schedule is not None else None
    stored_config = {"model": to_plain(model_config or {}), "train": config.to_dict()}
    path = Path(checkpoint_path)
    step, history = 0, []
    if resume and path.exists():
        ckpt = checkpoint.load_checkpoint(path, map_location="cpu")
        _check_resumable(ckpt, config, model_config, world, path)
        base.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        if scheduler is not None and ckpt["scheduler_state"] is not None:
            scheduler.load_state_dict(ckpt["scheduler_state"])
        if ema is not None:
            if ckpt["ema_state"] is None:
                raise ValueError(f"{path}: the checkpoint has no EMA state but this run has an EMA")
            ema.load_state_dict(ckpt["ema_state"])
        if hasattr(data, "load_state_dict") and "data_state" in ckpt["extra"]:
            data.load_state_dict(ckpt["extra"]["data_state"])
        else:
            warnings.warn("train: data has no load_state_dict: the resumed data order differs", stacklevel=2)
        rng = ckpt["rng"]
        if rng is not None:
            checkpoint.restore_rng(rng[world.rank] if isinstance(rng, list) else rng)
        step, history = int(ckpt["extra"]["step"]), list(ckpt["extra"]["history"])
    else:
        checkpoint.seed_everything(config.seed + world.rank)
    if step >= config.steps:
        return history

    ddp = distributed.wrap_model(base, world, device)
    net = torch.compile(ddp) if config.compile else ddp
    provenance = checkpoint.provenance() if world.is_main else None

    saved = {"at": time.perf_counter(), "seconds": 0.0}

    def save() -> None:
        started = time.perf_counter()
        rngs = distributed.gather_objects(checkpoint.capture_rng(), world)
        if world.is_main:
            checkpoint.save_checkpoint(
                path,
                model_state=base.state_dict(),
                config=stored_config,
                normalization=normalization,
                extra={
                    **extra, "step": step, "history": history, "world_size": world.world_size,
                    **({"data_state": data.state_dict()} if hasattr(data, "state_dict") else {}),
                },
                optimizer_state=optimizer.state_dict(),
                scheduler_state=None if scheduler is None else scheduler.state_dict(),
                ema_state=None if ema is None else ema.state_dict(),
                rng_state=rngs if world.distributed else rngs[0],
                provenance_record=provenance,
            )
        distributed.barrier(world)
        saved["at"] = time.perf_counter()
        saved["seconds"] = saved["at"] - started

    def checkpoint_due(now: float) -> bool:
        """Time for a checkpoint by the clock: ``checkpoint_minutes`` since the last one, and at least
        20 times the last save's duration, so saving never takes more than about 5% of the run."""
        if config.checkpoint_minutes <= 0:
            return False
        return now - saved["at"] >= max(60.0 * config.checkpoint_minutes, 20.0 * saved["seconds"])

    accum = config.grad_accum_steps
    sums: dict[str, torch.Tensor] = {}
    n_logged, t_log, stop, save_by_clock = 0, time.perf_counter(), False, False
    deadline = t_log + 60.0 * config.max_minutes if config.max_minutes > 0 else float("inf")
    while step < config.steps and not stop:
        net.train()
        optimizer.zero_grad(set_to_none=True)
        for micro in range(accum):
            batch = _to_device(next(data), device)
            last = micro == accum - 1
            sync = (
                ddp.no_sync()
                if isinstance(ddp, nn.parallel.DistributedDataParallel) and not last
                else contextlib.nullcontext()
            )
            with sync:
                with autocast_context(config.amp, device):
                    loss, metrics = loss_fn(batch, net)
                (loss / accum).backward()
            for key, value in {"loss": loss, **metrics}.items():
                value = torch.as_tensor(value).detach().float().to(device)
                sums[key] = sums.get(key, 0.0) + value / accum
        if not torch.isfinite(sums["loss"]):
            raise FloatingPointError(f"train: loss is not finite at step {step + 1}; last checkpoint: {path}")
        if config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(base.parameters(), config.grad_clip)
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + norm.detach().float()
        lr = float(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(base)
        step += 1
        n_logged += 1
        if step % config.log_every == 0 or step == config.steps:
            now = time.perf_counter()
            # reduced with the metrics: every rank stops together
            clock = {"_past_deadline": float(now > deadline), "_checkpoint_due": float(checkpoint_due(now))}
            means = distributed.all_reduce_mean(
                {**{k: float(v) / n_logged for k, v in sums.items()}, **clock}, world
            )
            out_of_time = means.pop("_past_deadline") > 0
            save_by_clock = means.pop("_checkpoint_due") > 0
            record = {"step": step, "lr": lr, **means, "seconds_per_step": (now - t_log) / n_logged}
            history.append(record)
            sums, n_logged, t_log = {}, 0, now
            if callback is not None and callback(record, base) is True:
                stop = True
            if out_of_time:
                stop = True
        if stop or step % config.checkpoint_every == 0 or step == config.steps or save_by_clock:
            save()
            save_by_clock = False
    return history
