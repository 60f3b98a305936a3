"""``ctlib interpolate``: a thick CT series in, a thin one out, by the released latent-diffusion model
(``weights/slice_interp_diffusion``) or a trained run (``--run``)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
SAMPLER_NAMES = ("ddim", "ddpm")  # the keys of ctlib.diffusion.samplers.SAMPLERS (a test keeps them equal)
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")  # what --device may name (torch.device syntax)
DEFAULT_RELEASE = "slice_interp_diffusion"  # release.DEFAULT_INTERPOLATOR (a test keeps them equal)
PLACEMENT = """\
Where the thin slices go: n_thick * factor thin slices at spacing (thick spacing) / factor, centred
within each thick slab. Thick slice k sits at thin index (factor - 1) / 2 + k * factor of the output
(between two thin slices when factor is even), so the output starts (factor - 1) / 2 thin spacings
before the first thick slice centre, along the slice normal:
    output origin = first thick centre - (factor - 1) / 2 * thin spacing.
Example: --factor 6 on 5 mm slices gives 0.833 mm slices; thick slice k lies at thin index 2.5 + 6 k,
halfway between thin slices 6 k + 2 and 6 k + 3, and the output starts 2.083 mm before it. With data
consistency (the default) the mean of thin slices 6 k .. 6 k + 5 equals thick slice k (a box slab; up to
the rounding of the output to integer HU).

Model: without --run, the released model in weights/slice_interp_diffusion ($CTLIB_WEIGHTS_DIR sets
the weights folder; see weights/README.md); --run takes a diffusion run id, its folder or a checkpoint,
or a release folder (weights/NAME).
"""


class _BadInput(Exception):
    """One line for stderr: what was expected, what was found, where."""


def _list_samplers() -> int:
    from ctlib.diffusion import samplers

    for name, fn in sorted(samplers.SAMPLERS.items()):
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"{name:<8} {doc[0] if doc else ''}")
    return 0


def _output_kind(path: str, overwrite: bool, what: str) -> str:
    """``"nifti"`` for ``.nii`` / ``.nii.gz``, ``"dicom"`` for a folder
    (existing, ending in '/', or no suffix)."""
    target = Path(path)
    if path.endswith((".nii", ".nii.gz")):
        kind = "nifti"
    elif path.endswith(("/", "\\")) or target.is_dir() or not target.suffix:
        kind = "dicom"
    else:
        raise _BadInput(f"{path}: {what} must end with .nii or .nii.gz (NIfTI) or be a folder (DICOM series)")
    if target.exists() and not overwrite and (target.is_file() or any(target.iterdir())):
        raise _BadInput(f"{path}: {what} exists; pass --overwrite to replace it")
    if kind == "nifti" and target.is_dir():
        raise _BadInput(f"{path}: {what} is a folder but its name ends with .nii/.nii.gz")
    _check_writable(target, what)
    return kind


def _check_writable(target: Path, what: str) -> None:
    """The output is written next to itself then renamed (``ctlib.atomic``), creating missing folders: the
    nearest existing folder above it must be a folder this process may write in."""
    folder = target.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise _BadInput(f"{target}: {what} cannot be created: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _BadInput(f"{target}: {what} cannot be written: no write permission in {folder}")


def _reference_file(volume: Any) -> Any:
    """A file of the input DICOM series, so the output joins its study and frame of reference."""
    import pydicom

    if volume.meta.get("format") != "dicom":
        return None
    for file in sorted(Path(volume.meta["source"]).iterdir()):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:  # not every file in a series folder is DICOM
            continue
        if str(ds.get("SeriesInstanceUID", "")) == volume.meta.get("series_uid"):
            return ds
    return None


def _write_volume(volume: Any, path: str, kind: str, description: str, reference: Any) -> None:
    from ctlib.io import dicom_write, nifti

    if kind == "nifti":
        nifti.write_nifti(volume, path)
    else:
        dicom_write.write_dicom_series(volume, path.rstrip("/\\"), series_description=description,
                                       reference=reference)


def _check_arguments(args: argparse.Namespace) -> Path | None:
    """The checks that need no model and no volume: argument values, input and model present.

    Returns the release folder to load (the default one without ``--run``), or None for a run."""
    if not args.input or not args.output:
        raise _BadInput("expected IN and OUT: ctlib interpolate IN OUT [--run RUN_ID] [--factor N]")
    if args.factor is not None and args.factor < 2:
        raise _BadInput(f"--factor must be at least 2 (thin slices per thick slice), got {args.factor}")
    if args.samples < 1:
        raise _BadInput(f"--samples must be at least 1, got {args.samples}")
    if args.steps < 1:
        raise _BadInput(f"--steps must be at least 1, got {args.steps}")
    if args.std and args.samples < 2:
        raise _BadInput(f"{args.std}: an uncertainty map needs --samples 2 or more, got {args.samples}")
    if args.sampler not in SAMPLER_NAMES:
        raise _BadInput(f"unknown sampler {args.sampler!r}; expected one of {list(SAMPLER_NAMES)}")
    _check_sampling_numbers(args)
    if not Path(args.input).exists():
        raise _BadInput(f"{args.input}: no such file or folder (IN: a DICOM folder or a NIfTI file)")
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise _BadInput(f"{args.output}: OUT is the input; write the thin volume elsewhere")
    if args.std and Path(args.std).resolve() in (Path(args.output).resolve(), Path(args.input).resolve()):
        raise _BadInput(f"{args.std}: --std names IN or OUT; write the uncertainty map elsewhere")
    if args.run and not _is_release(args.run):
        _check_run(args.run)
        if args.vae and not Path(args.vae).is_file():
            raise _BadInput(f"{args.vae}: no such checkpoint file (--vae)")
        return None
    if args.vae:
        raise _BadInput(f"{args.vae}: --vae goes with a diffusion run; a released model holds its own VAE")
    if args.no_ema:
        raise _BadInput("--no-ema goes with a diffusion run; a released model holds one set of weights")
    return Path(args.run) if args.run else _check_release()


def _is_release(run: str) -> bool:
    """``--run`` names a release folder (``weights/<name>``, with its ``SHA256SUMS``)."""
    from ctlib import release

    return Path(run).is_dir() and (Path(run) / release.SUMS_FILE).is_file()


def _check_release() -> Path:
    """The default release must be present (its files are checked against their sums when loaded)."""
    from ctlib import paths, release
    from ctlib.errors import CTInputError

    folder = paths.weights_dir() / DEFAULT_RELEASE
    try:
        return release.check_present(folder)
    except CTInputError as err:
        raise _BadInput(
            f"{folder}: no released interpolation model yet ({err.problem}); pass --run RUN_ID (a diffusion "
            "run, its folder or diffusion.pt), or train one (ctlib run "
            "notebooks/slice_interp/2026-11-23_03_diffusion.ipynb -p gpu) and export it (python -m "
            "ctlib.studies.interp.release export --diffusion-run RUN_ID --out weights/); "
            f"${paths.WEIGHTS_ENV_VAR} sets the weights folder"
        ) from None


def _check_checkpoint_files(args: argparse.Namespace) -> None:
    """A checkpoint named directly (``--run X.pt``, ``--vae``) must be the zip archive ``torch.save`` writes:
    an empty, truncated or foreign file is refused here, not after importing torch (seconds, 400 MB)."""
    for option, path in (("--run", args.run), ("--vae", args.vae)):
        if path and Path(path).is_file() and not zipfile.is_zipfile(path):
            raise _BadInput(
                f"{path}: not a readable checkpoint ({option}): not the zip archive torch.save writes "
                "(empty, truncated or another format)"
            )


def _check_sampling_numbers(args: argparse.Namespace) -> None:
    """Ranges of the sampling options, checked here rather than minutes later inside the pipeline."""
    if not (math.isfinite(args.eta) and args.eta >= 0):
        raise _BadInput(f"--eta must be a finite number >= 0 (0: deterministic DDIM), got {args.eta}")
    if args.chunk < 1:
        raise _BadInput(f"--chunk must be at least 1 (slices per VAE call), got {args.chunk}")
    if args.window_depth is not None and args.window_depth < 1:
        raise _BadInput(f"--window-depth must be at least 1 (slices per window), got {args.window_depth}")
    if args.overlap is not None and args.overlap < 0:
        raise _BadInput(f"--overlap must be at least 0, got {args.overlap}")
    if args.overlap is not None and args.window_depth is not None and args.overlap >= args.window_depth:
        raise _BadInput(
            f"--overlap {args.overlap} must be less than --window-depth {args.window_depth} "
            "(slices shared by neighbouring windows)"
        )
    if args.seed < 0:
        raise _BadInput(f"--seed must be at least 0, got {args.seed}")
    if not DEVICE_PATTERN.fullmatch(args.device):
        raise _BadInput(f"unknown --device {args.device!r}; expected auto, cpu, cuda, cuda:N or mps")


def _check_run(run: str) -> None:
    """``--run`` names a file or folder, or a run folder with a record under the runs folder."""
    from ctlib import paths

    if Path(run).exists():
        return
    if run.endswith(".pt"):
        raise _BadInput(f"{run}: no such checkpoint file (--run)")
    if not (paths.runs_dir() / run / "run.json").is_file():
        raise _BadInput(
            f"--run {run!r}: no such run in {paths.runs_dir()} and no such file or folder "
            f"(${paths.RUNS_ENV_VAR} sets the runs folder)"
        )


def interpolate_file(args: argparse.Namespace) -> dict[str, Any]:
    """``ctlib interpolate``: read, check, interpolate, write; ``_BadInput`` for unusable input."""
    release_folder = _check_arguments(args)  # every cheap check first: a refusal imports no torch, < 1 s
    out_kind = _output_kind(args.output, args.overwrite, "OUT")
    std_kind = _output_kind(args.std, args.overwrite, "--std") if args.std else None
    _check_checkpoint_files(args)

    import numpy as np

    from ctlib.io import reader
    from ctlib.studies.interp import bundle, pipeline

    thick = reader.read_volume(args.input, series_uid=args.series)
    if thick.modality != "CT":
        raise _BadInput(f"{args.input}: modality is {thick.modality!r}, expected 'CT'")
    if thick.shape[0] < 2:
        raise _BadInput(
            f"{args.input}: {thick.shape[0]} slice(s); need at least 2 thick slices to interpolate"
        )
    if release_folder is None:
        model = str(args.run)
        interpolator = bundle.load_interpolator(args.run, vae_checkpoint=args.vae, use_ema=not args.no_ema,
                                                device=args.device)
    else:
        from ctlib.studies.interp import release

        model = str(release_folder)
        interpolator = release.load_released_interpolator(release_folder, device=args.device)
    factor = interpolator.spec.factor if args.factor is None else args.factor
    if factor != interpolator.spec.factor and not args.force_factor:
        raise _BadInput(
            f"{model}: the model was trained at factor {interpolator.spec.factor}, asked for {factor}; "
            "pass --force-factor to use it anyway"
        )
    result = pipeline.interpolate_volume(
        thick,
        interpolator,
        factor=factor,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        samples=args.samples,
        window_depth=args.window_depth,
        overlap=args.overlap,
        data_consistency=not args.no_data_consistency,
        seed=args.seed,
        progress=not args.quiet,
        chunk=args.chunk,
        bf16=args.bf16,
    )
    reference = _reference_file(thick) if "dicom" in (out_kind, std_kind) else None
    description = f"ctlib interpolate x{factor}"
    mean = result.mean.with_array(np.rint(result.mean.array))  # integer HU, stored as int16 where they fit
    _write_volume(mean, args.output, out_kind, description, reference)
    if args.std:
        _write_volume(result.std, args.std, std_kind, f"{description} std (HU)", reference)
    return {
        "output": args.output,
        "std_output": args.std,
        "shape": list(mean.shape),
        "spacing_mm": [round(s, 6) for s in mean.spacing],
        "factor": factor,
        "model": model,
        "residual_before_hu": round(result.residual_before_hu, 3),
        "residual_after_hu": round(result.residual_after_hu, 3),
        "seconds": round(result.seconds, 2),
        "seconds_per_step": round(result.seconds_per_step, 4),
    }


def _cmd_interpolate(args: argparse.Namespace) -> int:
    if args.list_samplers:
        return _list_samplers()
    from ctlib.errors import CTInputError

    try:
        summary = interpolate_file(args)
    except (_BadInput, CTInputError) as err:
        line = str(err)
    except Exception as err:  # unreadable input surfaces in many types; still one line, no traceback
        line = f"{args.input}: {type(err).__name__}: {err}"
    else:
        print(json.dumps(summary))
        return 0
    print(f"ctlib interpolate: {' '.join(line.split())}", file=sys.stderr)
    return EXIT_BAD_INPUT


def add_subcommands(sub: Any) -> None:
    """Register ``ctlib interpolate`` on the ``ctlib`` command's subparsers."""
    interp = sub.add_parser(
        "interpolate", help="thick CT in, thin CT out, by the released latent-diffusion model or a run",
        description="Thick CT in (DICOM folder or NIfTI), thin CT out, by latent diffusion.",
        epilog=PLACEMENT, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    interp.add_argument("input", nargs="?", help="thick CT: DICOM folder or NIfTI file")
    interp.add_argument(
        "output", nargs="?", help="thin CT: .nii / .nii.gz file, or a folder for a DICOM series"
    )
    interp.add_argument(
        "--run", help="diffusion run id, its folder or diffusion.pt, or a release folder (default: weights/)"
    )
    interp.add_argument("--vae", help="VAE checkpoint, instead of the run named by the diffusion checkpoint")
    interp.add_argument("--factor", type=int, help="thin slices per thick slice (default: the model's)")
    interp.add_argument("--force-factor", action="store_true", help="allow a factor other than the model's")
    interp.add_argument("--sampler", default="ddim", help="a name from --list-samplers (default ddim)")
    interp.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    interp.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    interp.add_argument("--samples", type=int, default=1, help="samples averaged; >= 2 for --std")
    interp.add_argument("--std", metavar="OUT_STD", help="write the per-voxel std over the samples (HU) here")
    interp.add_argument("--window-depth", type=int, help="thin slices per z-window (default 48)")
    interp.add_argument("--overlap", type=int, help="slices shared by neighbouring windows (default 1/4)")
    interp.add_argument(
        "--no-data-consistency", action="store_true", help="keep slab means off the thick slices"
    )
    interp.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    interp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    interp.add_argument("--chunk", type=int, default=16, help="slices per VAE call (default 16)")
    interp.add_argument("--bf16", action="store_true", help="run the networks under bfloat16 autocast (GPU)")
    interp.add_argument("--series", help="SeriesInstanceUID, when a DICOM folder holds several series")
    interp.add_argument("--no-ema", action="store_true", help="sample with the raw weights, not the EMA")
    interp.add_argument("--overwrite", action="store_true", help="replace OUT (and OUT_STD) if they exist")
    interp.add_argument("--quiet", action="store_true", help="no progress bar")
    interp.add_argument("--list-samplers", action="store_true", help="print the registered samplers and exit")
    interp.set_defaults(func=_cmd_interpolate)
