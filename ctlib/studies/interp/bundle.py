"""Everything inference needs from a latent-diffusion run, loaded once: ``Interpolator``.

A diffusion run holds ``checkpoints/diffusion.pt`` (the U-Net, its EMA, the ``DiffusionSpec``, the HU
window and ``extra = {vae_run_id, preprocess_run_id, scale_factor}``); its VAE lives in the run named
by ``extra["vae_run_id"]`` (``checkpoints/vae.pt``). Checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctlib import checkpoint as checkpoint_io
from ctlib import runs
from ctlib.data import windows
from ctlib.device import resolve_device  # re-exported: bundle.resolve_device
from ctlib.errors import CTInputError
from ctlib.models import latent_unet
from ctlib.models import vae as vae_module
from ctlib.studies.interp.latent_diffusion import InterpDiffusionSpec

DIFFUSION_CHECKPOINT = Path("checkpoints") / "diffusion.pt"
VAE_CHECKPOINT = Path("checkpoints") / "vae.pt"


@dataclasses.dataclass
class Interpolator:
    """A frozen per-slice VAE and 3D latent U-Net with how they were trained (spec, scale, window)."""

    vae: nn.Module
    unet: nn.Module
    spec: InterpDiffusionSpec
    scale_factor: float
    window: windows.HUWindow
    depth_multiple: int  # every latent size the U-Net sees is a multiple of this
    device: torch.device
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # run ids, checkpoint paths, weights

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.vae = self.vae.to(self.device).eval().requires_grad_(False)
        self.unet = self.unet.to(self.device).eval().requires_grad_(False)

    @property
    def vae_factor(self) -> int:
        """In-plane downsampling of the VAE (``vae.downsampling_factor``)."""
        return vae_module.downsampling_factor(self.vae)

    @property
    def inplane_multiple(self) -> int:
        """Image height and width must be multiples of this (VAE factor times the U-Net's multiple)."""
        return self.vae_factor * self.depth_multiple


def _run_checkpoint(run_id: str, relative: Path, what: str) -> Path:
    """``<run dir>/<relative>`` of a completed run, or ``CTInputError`` naming the run."""
    try:
        run_dir = runs.run_dir_of(run_id)
    except (FileNotFoundError, RuntimeError) as err:
        raise CTInputError(None, f"{what} run {run_id!r}: {err}") from None
    return run_dir / relative


def checkpoint_path(run_id_or_path: str | os.PathLike, relative: Path, what: str) -> Path:
    """The checkpoint named by a run id (``<run dir>/<relative>``), a run folder, or a ``.pt`` file."""
    candidate = Path(run_id_or_path)
    if candidate.is_file() or candidate.suffix == ".pt":
        return candidate
    if candidate.is_dir():
        return candidate / relative
    return _run_checkpoint(str(run_id_or_path), relative, what)


def diffusion_checkpoint_path(run_id_or_path: str | os.PathLike) -> Path:
    """The diffusion checkpoint named by a run id, a run folder, or a ``.pt`` file."""
    return checkpoint_path(run_id_or_path, DIFFUSION_CHECKPOINT, "diffusion")


def _checked(ckpt: dict[str, Any], path: Path, keys: tuple[str, ...]) -> None:
    for key in keys:
        node: Any = ckpt
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise CTInputError(path, f"checkpoint lacks {key!r}: not a diffusion checkpoint of this suite?")
            node = node[part]


def _unet_state(ckpt: dict[str, Any], use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    """The U-Net's state dict (keys without ``unet.``), with the EMA shadow weights when asked and present."""
    state = {k[len("unet."):]: v for k, v in ckpt["model_state"].items() if k.startswith("unet.")}
    if not state:
        state = dict(ckpt["model_state"])
    ema = ckpt.get("ema_state")
    if not use_ema:
        return state, "model"
    if not ema or not ema.get("shadow"):
        warnings.warn("the diffusion checkpoint holds no EMA weights: sampling with the raw weights", stacklevel=3)
        return state, "model"
    # The EMA tracks the LatentDiffusionLoss module, so its names carry the "unet." prefix; buffers
    # (not averaged) keep the model's values.
    for name, value in ema["shadow"].items():
        key = name[len("unet."):] if name.startswith("unet.") else name
        if key not in state:
            raise ValueError(f"EMA weight {name!r} matches no U-Net parameter")
        state[key] = value.to(state[key].dtype)
    return state, "ema"


def load_interpolator(
    diffusion_run_id_or_checkpoint: str | os.PathLike,
    *,
    vae_checkpoint: str | os.PathLike | None = None,
    use_ema: bool = True,
    device: str | torch.device = "auto",
) -> Interpolator:
    """Load a latent-diffusion interpolator from a diffusion run id (or run folder, or ``.pt`` file).

    The VAE comes from ``vae_checkpoint`` when given, else from the run named by the checkpoint's
    ``extra["vae_run_id"]``. ``use_ema`` samples with the EMA weights (the usual choice). A missing run,
    a missing or corrupt checkpoint, or one of another kind raises ``CTInputError``.
    """
    path = diffusion_checkpoint_path(diffusion_run_id_or_checkpoint)
    ckpt = checkpoint_io.load_checkpoint(path)
    _checked(ckpt, path, ("config.model.unet", "config.model.spec", "extra.scale_factor"))
    try:
        unet_config = latent_unet.LatentUNetConfig.from_dict(ckpt["config"]["model"]["unet"])
        spec = InterpDiffusionSpec.from_dict(ckpt["config"]["model"]["spec"])
        window = windows.window_from_record(ckpt["normalization"])
        unet = latent_unet.build_latent_unet(unet_config)
        state, weights = _unet_state(ckpt, use_ema)
        unet.load_state_dict(state)
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise CTInputError(path, f"unusable diffusion checkpoint ({type(err).__name__}: {err})") from None

    extra = ckpt["extra"]
    if vae_checkpoint is None:
        if not extra.get("vae_run_id"):
            raise CTInputError(path, "checkpoint names no vae_run_id: pass vae_checkpoint")
        vae_path = _run_checkpoint(str(extra["vae_run_id"]), VAE_CHECKPOINT, "VAE")
    else:
        vae_path = Path(vae_checkpoint)
    vae_ckpt = checkpoint_io.load_checkpoint(vae_path)
    try:
        vae, _ = vae_module.load_vae(vae_ckpt)
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise CTInputError(vae_path, f"unusable VAE checkpoint ({type(err).__name__}: {err})") from None
    vae_window = windows.window_from_record(vae_ckpt["normalization"])
    if (vae_window.low, vae_window.high) != (window.low, window.high):
        raise CTInputError(
            path, f"HU window {window} differs from the VAE's {vae_window} ({vae_path}): not trained together"
        )
    return Interpolator(
        vae=vae,
        unet=unet,
        spec=spec,
        scale_factor=float(extra["scale_factor"]),
        window=window,
        depth_multiple=latent_unet.required_depth_multiple(unet_config),
        device=resolve_device(device),
        meta={
            "diffusion_checkpoint": str(path),
            "vae_checkpoint": str(vae_path),
            "vae_run_id": extra.get("vae_run_id"),
            "preprocess_run_id": extra.get("preprocess_run_id"),
            "weights": weights,
        },
    )
