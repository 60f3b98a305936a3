"""Released slice-interpolation models: export a trained run to ``weights/<name>/``, load it back.

- ``export_interpolator`` / ``export_regressor`` read a run (``run_kinds.DiffusionRun`` with its
  ``VAERun``, or ``RegressorRun``), measure whether float16 weights change the output (max |HU| on a
  test volume, same seed, against a tolerance), and write a release through ``ctlib.release``:
  ``model.safetensors``, ``config.json``, ``MODEL_CARD.md`` (``model_card``) and ``SHA256SUMS``, within
  a size budget for all released models.
- ``load_released_interpolator`` / ``load_released_regressor`` check the sums, read JSON and
  safetensors (never a pickle) and rebuild a ``bundle.Interpolator`` / ``regression.RegressorBundle``.

Command line: ``python -m ctlib.studies.interp.release export --diffusion-run ID --regressor-run ID
--out weights/`` and ``... verify [NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

import ctlib
from ctlib import paths, provenance
from ctlib import release as core
from ctlib.data import phantom, windows
from ctlib.errors import CTInputError
from ctlib.io.volume import Volume
from ctlib.models import latent_unet, regressor, run_checkpoint
from ctlib.models import vae as vae_module
from ctlib.studies.interp import bundle, model_card, pipeline, regression, run_kinds, thick_slices
from ctlib.studies.interp.latent_diffusion import InterpDiffusionSpec

DEFAULT_INTERPOLATOR = "slice_interp_diffusion"  # weights/<name>/ that `ctlib interpolate` uses without --run
DEFAULT_REGRESSOR = "slice_interp_regressor"
KIND_INTERPOLATOR = "slice_interp.latent_diffusion"
KIND_REGRESSOR = "slice_interp.residual_regressor"
DEFAULT_TOLERANCE_HU = 1.0  # largest max |HU difference| float16 weights may cause on the test volume
MEASURE_STEPS = 10  # DDIM steps (eta 0, seed 0) of the float16 measurement
Precision = Literal["auto", "float16", "float32"]


# ------------------------------------------------------------------------------- shared pieces
def measurement_volume(
    test_input: Volume | str | os.PathLike | None, factor: int, mode: str
) -> tuple[Volume, str]:
    """The thick volume the float16 measurement runs on, and its description for the card.

    Default: a synthetic chest phantom (seed 0), 8 thick slices simulated at the model's factor and mode.
    """
    if isinstance(test_input, Volume):
        return test_input, f"a given thick volume {list(test_input.shape)}"
    if test_input is not None:
        from ctlib.io import reader

        volume = reader.read_volume(test_input)
        return volume, f"{Path(test_input).name} {list(volume.shape)} at {volume.spacing[0]:g} mm"
    thin = phantom.ct_phantom(shape=(8 * factor, 64, 64), spacing_mm=(1.0, 1.5, 1.5), seed=0)
    thick = thick_slices.simulate_thick(thin, factor, mode)  # type: ignore[arg-type]
    return thick, f"chest phantom (ctlib.data.phantom, seed 0) 64 x 64, 8 thick slices (x{factor} {mode})"


def _decide(
    state: dict[str, torch.Tensor], evaluate: Callable[[dict[str, torch.Tensor]], np.ndarray],
    precision: Precision, tolerance_hu: float, window: windows.HUWindow, described: str, settings: str,
) -> core.PrecisionDecision:
    metric = f"outputs with float16-rounded vs float32 weights ({settings})"
    if precision not in ("auto", "float16", "float32"):
        raise ValueError(f"precision must be 'auto', 'float16' or 'float32', got {precision!r}")
    if precision == "float32":
        return core.PrecisionDecision("float32", "float32 asked for (not measured)", metric, "HU",
                                      tolerance_hu)
    decision = core.decide_precision(state, evaluate, tolerance=tolerance_hu, metric=metric, unit="HU",
                                     peak=window.width, test_input=described)
    if precision == "float16" and decision.dtype != "float16":
        decision.dtype, decision.reason = "float16", f"float16 asked for although {decision.reason}"
    return decision


def _source(path: Path, **fields: Any) -> dict[str, Any]:
    """Where a model came from: run id (or checkpoint file name), the run record's facts, ``fields``."""
    folder = run_checkpoint.run_folder(path)
    facts = model_card.run_facts(path)
    return {"run_id": None if folder is None else folder.name, "checkpoint": path.name, **facts, **fields}


def _exported() -> dict[str, Any]:
    git = provenance.git_state()
    return {"ctlib_version": ctlib.__version__, "git_commit": git["commit"], "git_dirty": git["dirty"],
            "torch_version": torch.__version__, "utc": provenance.iso(provenance.utc_now())}


def _load_into(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def _millions(module: nn.Module) -> str:
    return f"{sum(v.numel() for v in module.state_dict().values()) / 1e6:.2f} M parameters"


def _window_line(record: dict[str, Any]) -> str:
    low, high = record["low_hu"], record["high_hu"]
    return f"- Normalization: HU window {record['name']!r} [{low:g}, {high:g}] HU -> [-1, 1]"


# ----------------------------------------------------------------------------- the interpolator
def prepare_interpolator(
    diffusion_run_id_or_checkpoint: str | os.PathLike, *, vae_checkpoint: str | os.PathLike | None = None,
    name: str = DEFAULT_INTERPOLATOR, card: Any = None, use_ema: bool = True, precision: Precision = "auto",
    fp16_tolerance_hu: float = DEFAULT_TOLERANCE_HU, test_input: Volume | str | os.PathLike | None = None,
    steps: int = MEASURE_STEPS, device: str | torch.device = "cpu",
) -> core.Release:
    """The release of a latent-diffusion run (VAE and U-Net in one file: ``vae.*``, ``unet.*``), unwritten."""
    info = model_card.card_info(card)  # a bad card file is refused before the models are read
    run = run_kinds.DiffusionRun.load(diffusion_run_id_or_checkpoint, use_ema=use_ema)
    vae_run = run.load_vae(vae_checkpoint)
    reg_run = run.load_regressor() if run.spec.baseline == "regressor" else None
    interp = bundle.Interpolator(vae=vae_run.vae, unet=run.unet, spec=run.spec, scale_factor=run.scale_factor,
                                 window=run.window, depth_multiple=run.depth_multiple,
                                 device=bundle.resolve_device(device),
                                 regressor=None if reg_run is None else reg_run.model)
    state = {**{f"vae.{k}": v for k, v in interp.vae.state_dict().items()},
             **{f"unet.{k}": v for k, v in interp.unet.state_dict().items()}}
    if interp.regressor is not None:
        state.update({f"regressor.{k}": v for k, v in interp.regressor.state_dict().items()})
    state = core.to_dtype(state, "float32")
    thick, described = measurement_volume(test_input, run.spec.factor, run.spec.mode)

    def evaluate(tensors: dict[str, torch.Tensor]) -> np.ndarray:
        _load_into(interp.vae, tensors, "vae.")
        _load_into(interp.unet, tensors, "unet.")
        if interp.regressor is not None:
            _load_into(interp.regressor, tensors, "regressor.")
        out = pipeline.interpolate_volume(thick, interp, steps=steps, seed=0, progress=False,
                                          data_consistency=False)
        return out.mean.array

    settings = f"ddim {steps} steps, eta 0, seed 0, no data consistency"
    decision = _decide(state, evaluate, precision, fp16_tolerance_hu, run.window, described, settings)
    sources = {"diffusion": _source(run.path, step=run.step, weights=run.weights,
                                    preprocess_run_id=run.preprocess_run_id),
               "vae": _source(vae_run.path, step=vae_run.step, preprocess_run_id=vae_run.preprocess_run_id)}
    components = {"vae": {"prefix": "vae.", "network": "monai AutoencoderKL (2D)",
                          "config": vae_run.config.to_dict()},
                  "unet": {"prefix": "unet.", "network": "monai DiffusionModelUNet (3D)",
                           "config": run.unet_config.to_dict()}}
    if reg_run is not None:
        sources["regressor"] = _source(reg_run.path, step=reg_run.step, weights=reg_run.weights,
                                       preprocess_run_id=reg_run.preprocess_run_id)
        components["regressor"] = {"prefix": "regressor.", "network": "monai BasicUNet (3D), residual",
                                   "config": reg_run.config.to_dict()}
    spec = run.spec
    config = {
        "kind": KIND_INTERPOLATOR,
        "components": components,
        "normalization": run.normalization, "scale_factor": run.scale_factor, "spec": spec.to_dict(),
        "factor": spec.factor, "mode": spec.mode, "depth_multiple": run.depth_multiple,
        "weights": run.weights, "precision": decision.to_dict(), "source": sources, "exported": _exported(),
    }
    vae_cfg, unet_cfg = vae_run.config, run.unet_config
    architecture = [
        f"- VAE: MONAI `AutoencoderKL` (2D, per axial slice), channels {list(vae_cfg.channels)}, "
        f"{vae_cfg.num_res_blocks} res block(s), {vae_cfg.latent_channels} latent channels, in-plane "
        f"x{vae_module.downsampling_factor(vae_cfg)} downsampling; {_millions(interp.vae)}",
        f"- Denoiser: MONAI `DiffusionModelUNet` (3D) over the latent stack, channels "
        f"{list(unet_cfg.channels)}, attention {list(unet_cfg.attention_levels)}, "
        f"{unet_cfg.num_res_blocks} res block(s), input = noisy "
        f"latents + condition latents; {_millions(interp.unet)} ({run.weights} weights)",
        f"- Diffusion: {spec.prediction}-prediction, {spec.schedule} schedule, {spec.num_train_timesteps} "
        f"timesteps, min-SNR gamma {spec.min_snr_gamma}; trained for x{spec.factor}, thick slices by "
        f"{spec.mode}",
        _condition_line(spec, reg_run),
        _window_line(run.normalization) + f"; latent scale factor {run.scale_factor:.6g}",
    ]
    usage = ["```python", "from ctlib.studies.interp import release",
             f"interpolator = release.load_released_interpolator({name!r})  # a bundle.Interpolator",
             "```", "",
             f"Command line: `ctlib interpolate THICK THIN --factor {spec.factor}`"
             + (" (the default release)" if name == DEFAULT_INTERPOLATOR else f" --run weights/{name}")]
    text = model_card.render(info, name=name, kind=KIND_INTERPOLATOR,
                             title=f"Latent-diffusion slice interpolation x{spec.factor} ({name})",
                             architecture=architecture, sources=sources, steps=run.step,
                             precision=decision.to_dict(), usage=usage)
    return core.Release(name=name, tensors=core.to_dtype(state, decision.dtype), config=config, card=text,
                        report={"precision": decision.to_dict(), "card_fields_not_given": info.missing})


def _condition_line(spec: InterpDiffusionSpec, reg_run: run_kinds.RegressorRun | None) -> str:
    """The card's line on what the denoiser is conditioned on and what it models."""
    if not spec.residual:
        return ("- Condition: VAE latents of the linear z-interpolation of the thick slices on the thin grid "
                "(thin slices centred in each thick slab)")
    base = ("the linear z-interpolation of the thick slices" if reg_run is None else
            "the residual regressor's estimate (MONAI `BasicUNet`, features "
            f"{list(reg_run.config.features)}, shipped in this release)")
    return (f"- Residual formulation: condition = VAE latents of B = {base}; the denoiser models the latent "
            f"difference z(thin) - z(B) times {spec.residual_scale:.4g}, decoded as "
            "B + D(z(B) + x0 / scale) - D(z(B)), so x0 = 0 returns B")


def load_released_interpolator(
    name_or_dir: str | os.PathLike = DEFAULT_INTERPOLATOR, *, device: str | torch.device = "auto"
) -> bundle.Interpolator:
    """A released latent-diffusion interpolator, checksums checked, weights read from safetensors."""
    loaded = core.read_release(name_or_dir, kind=KIND_INTERPOLATOR)
    cfg = loaded.config
    try:
        vae_config = vae_module.VAEConfig.from_dict(cfg["components"]["vae"]["config"])
        unet_config = latent_unet.LatentUNetConfig.from_dict(cfg["components"]["unet"]["config"])
        spec = InterpDiffusionSpec.from_dict(cfg["spec"])
        window = windows.window_from_record(cfg["normalization"])
        vae, unet = vae_module.build_vae(vae_config), latent_unet.build_latent_unet(unet_config)
        _load_into(vae, loaded.tensors, cfg["components"]["vae"]["prefix"])
        _load_into(unet, loaded.tensors, cfg["components"]["unet"]["prefix"])
        reg = None
        if "regressor" in cfg["components"]:
            reg_config = regressor.RegressorConfig.from_dict(cfg["components"]["regressor"]["config"])
            reg = regressor.build_regressor(reg_config)
            _load_into(reg, loaded.tensors, cfg["components"]["regressor"]["prefix"])
        scale_factor = float(cfg["scale_factor"])
        interpolator = bundle.Interpolator(
            vae=vae, unet=unet, spec=spec, scale_factor=scale_factor, window=window,
            depth_multiple=latent_unet.required_depth_multiple(unet_config),
            device=bundle.resolve_device(device), regressor=reg,
            meta={"release": str(loaded.path), "name": cfg.get("name"), "dtype": cfg.get("dtype"),
                  "weights": cfg.get("weights"), "source": cfg.get("source")},
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CTInputError(loaded.path, f"unusable release ({type(err).__name__}: {err})") from None
    return interpolator


# ------------------------------------------------------------------------------- the regressor
def prepare_regressor(
    run_id_or_checkpoint: str | os.PathLike, *, name: str = DEFAULT_REGRESSOR, card: Any = None,
    use_ema: bool = True, precision: Precision = "auto", fp16_tolerance_hu: float = DEFAULT_TOLERANCE_HU,
    test_input: Volume | str | os.PathLike | None = None, device: str | torch.device = "cpu",
) -> core.Release:
    """The release of a residual-regressor run, not written."""
    info = model_card.card_info(card)
    run = run_kinds.RegressorRun.load(run_id_or_checkpoint, use_ema=use_ema)
    model_bundle = regression.RegressorBundle(model=run.model, window=run.window, factor=run.factor,
                                              mode=run.mode, device=bundle.resolve_device(device))
    state = core.to_dtype(model_bundle.model.state_dict(), "float32")
    thick, described = measurement_volume(test_input, run.factor, run.mode)

    def evaluate(tensors: dict[str, torch.Tensor]) -> np.ndarray:
        model_bundle.model.load_state_dict(tensors)
        return regression.interpolate_regression(thick, model_bundle, run.factor).array

    decision = _decide(state, evaluate, precision, fp16_tolerance_hu, run.window, described,
                       "Gaussian-blended sliding windows")
    sources = {"regressor": _source(run.path, step=run.step, weights=run.weights,
                                    preprocess_run_id=run.preprocess_run_id)}
    config = {
        "kind": KIND_REGRESSOR, "network": "ctlib ResidualRegressor (MONAI BasicUNet, 3D)",
        "config": run.config.to_dict(), "normalization": run.normalization, "factor": run.factor,
        "mode": run.mode, "weights": run.weights, "precision": decision.to_dict(), "source": sources,
        "exported": _exported(),
    }
    architecture = [
        f"- Network: MONAI `BasicUNet` (3D), features {list(run.config.features)}, {run.config.norm} norm, "
        f"{run.config.upsample} upsampling; {_millions(run.model)} ({run.weights} weights)",
        "- Residual learning (Kim et al. 2016): the output corrects the linear z-interpolation of the thick "
        "slices on the thin grid; applied in Gaussian-blended sliding windows",
        f"- Trained for x{run.factor}, thick slices by {run.mode}",
        _window_line(run.normalization),
    ]
    usage = ["```python", "from ctlib.studies.interp import regression, release",
             f"model = release.load_released_regressor({name!r})  # a regression.RegressorBundle",
             f"thin = regression.interpolate_regression(thick, model, {run.factor})", "```"]
    text = model_card.render(info, name=name, kind=KIND_REGRESSOR,
                             title=f"Residual regressor slice interpolation x{run.factor} ({name})",
                             architecture=architecture, sources=sources, steps=run.step,
                             precision=decision.to_dict(), usage=usage)
    return core.Release(name=name, tensors=core.to_dtype(state, decision.dtype), config=config, card=text,
                        report={"precision": decision.to_dict(), "card_fields_not_given": info.missing})


def load_released_regressor(
    name_or_dir: str | os.PathLike = DEFAULT_REGRESSOR, *, device: str | torch.device = "auto"
) -> regression.RegressorBundle:
    """A released residual regressor, checksums checked, weights read from safetensors."""
    loaded = core.read_release(name_or_dir, kind=KIND_REGRESSOR)
    cfg = loaded.config
    try:
        model = regressor.build_regressor(regressor.RegressorConfig.from_dict(cfg["config"]))
        model.load_state_dict(loaded.tensors)
        window = windows.window_from_record(cfg["normalization"])
        factor, mode = int(cfg["factor"]), str(cfg["mode"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CTInputError(loaded.path, f"unusable release ({type(err).__name__}: {err})") from None
    return regression.RegressorBundle(
        model=model, window=window, factor=factor, mode=mode, device=bundle.resolve_device(device),
        meta={"release": str(loaded.path), "name": cfg.get("name"), "dtype": cfg.get("dtype"),
              "weights": cfg.get("weights"), "source": cfg.get("source")},
    )


# ------------------------------------------------------------------------------------ exporting
def export_interpolator(
    diffusion_run_id_or_checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
    card: Any = None, budget_mb: float = core.DEFAULT_BUDGET_MB, **options: Any,
) -> dict[str, Any]:
    """Write the release of a diffusion run to ``out_dir`` (default ``weights/``); sizes and decision."""
    item = prepare_interpolator(diffusion_run_id_or_checkpoint, card=card, **options)
    return _write([item], out_dir, budget_mb)


def export_regressor(
    run_id_or_checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
    card: Any = None, budget_mb: float = core.DEFAULT_BUDGET_MB, **options: Any,
) -> dict[str, Any]:
    """Write the release of a regressor run to ``out_dir`` (default ``weights/``); sizes and decision."""
    item = prepare_regressor(run_id_or_checkpoint, card=card, **options)
    return _write([item], out_dir, budget_mb)


def _write(
    items: Sequence[core.Release], out_dir: str | os.PathLike | None, budget_mb: float
) -> dict[str, Any]:
    out = paths.weights_dir() if out_dir is None else out_dir
    return core.write_releases(out, items, budget_mb=budget_mb)


# ---------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctlib.studies.interp.release", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write releases of trained runs (checked against the size budget)")
    export.add_argument("--diffusion-run", help="diffusion run id, run folder or diffusion.pt")
    export.add_argument("--vae", help="VAE checkpoint (default: the VAE run the diffusion run names)")
    export.add_argument("--regressor-run", help="regressor run id, run folder or regressor.pt")
    export.add_argument("--out", help="weights folder (default: $CTLIB_WEIGHTS_DIR or <repo>/weights)")
    export.add_argument("--diffusion-card", help="JSON / YAML of CardInfo fields (data, metrics, ...)")
    export.add_argument("--regressor-card", help="JSON / YAML of CardInfo fields for the regressor")
    export.add_argument("--diffusion-name", default=DEFAULT_INTERPOLATOR)
    export.add_argument("--regressor-name", default=DEFAULT_REGRESSOR)
    export.add_argument("--budget-mb", type=float, default=core.DEFAULT_BUDGET_MB, help="all models together")
    export.add_argument("--precision", choices=("auto", "float16", "float32"), default="auto")
    export.add_argument("--fp16-tolerance-hu", type=float, default=DEFAULT_TOLERANCE_HU,
                        help="largest max |HU difference| float16 weights may cause (default 1)")
    export.add_argument("--test-input", help="thick CT (NIfTI / DICOM) for the float16 measurement")
    export.add_argument("--steps", type=int, default=MEASURE_STEPS, help="DDIM steps of the measurement")
    export.add_argument("--device", default="cpu", help="where the measurement runs (cpu, cuda, auto)")
    verify = sub.add_parser("verify", help="check every file of releases against their SHA256SUMS")
    verify.add_argument("names", nargs="*", help="release names or folders (default: all in the weights dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``export`` or ``verify``; bad input ends with one line on stderr and exit status 2."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "verify":
            names = args.names or core.released_names(paths.weights_dir())
            folders = [core.release_dir(n) for n in names]
            print(json.dumps({str(f): core.verify_release(f) for f in folders}))
            return 0
        if not (args.diffusion_run or args.regressor_run):
            raise ValueError("expected --diffusion-run RUN_ID and/or --regressor-run RUN_ID")
        common = {"precision": args.precision, "fp16_tolerance_hu": args.fp16_tolerance_hu,
                  "test_input": args.test_input, "device": args.device}
        items = []
        if args.diffusion_run:
            items.append(prepare_interpolator(args.diffusion_run, vae_checkpoint=args.vae, steps=args.steps,
                                              name=args.diffusion_name, card=args.diffusion_card, **common))
        if args.regressor_run:
            items.append(prepare_regressor(args.regressor_run, name=args.regressor_name,
                                           card=args.regressor_card, **common))
        print(json.dumps(_write(items, args.out, args.budget_mb), indent=2))
    except (CTInputError, ValueError, OSError) as err:
        print(f"release {args.command}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
