"""The released dose model: export a trained run (or an ensemble of runs) to ``weights/<name>/``, load it.

A release (``ctlib.release``: ``model.safetensors``, ``config.json``, ``MODEL_CARD.md``, ``SHA256SUMS``)
holds one or more members (several: a ``DoseEnsemble``, the voxel-wise mean). Each member's weights are
stored under ``m<i>.``; ``config.json`` holds per member everything ``DoseModelBundle`` needs: the model
config (``model_io.build_module``; it carries e.g. ``resolution_factor``), the input normalization (HU
window, ``sdf_clip_mm``, ``include_pdm``), the run id, steps and preprocessing run, and the inference
options: every field of the bundle besides the module and run (``window_options`` without the device,
``sample_steps``, ``sample_eta``, ``seed``, ``tta``, and whatever option a later bundle adds). The release
also records ``training_spacing_mm``, the voxel spacing the model was trained at (``predict`` resamples
DICOM CT to it).

Float16 weights are kept only when ``ctlib.release.decide_precision`` finds that they change the dose
predicted for one window of a real patient (an OpenKBP test patient when ``$CTLIB_DATA_DIR`` has one,
else the synthetic dose phantom) by at most ``fp16_tolerance_gy``. Loading checks every sum before it
parses anything and never unpickles.

Command line: ``python -m ctlib.studies.dose.release_model export RUN_DIR [RUN_DIR ...] --card CARD``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

import ctlib
from ctlib import paths, provenance
from ctlib import release as core
from ctlib.data import windows
from ctlib.errors import CTInputError
from ctlib.studies.dose import features, model_io, release_card, run_kind
from ctlib.studies.dose.evaluation import DoseModelBundle
from ctlib.studies.dose.patient_file import SDF_CLIP_MM, DosePatient, load_dose_patient

KIND = "dose.openkbp_predictor"
DEFAULT_NAME = "dose_unet"  # weights/<name>/ that `ctlib dose predict` uses without --model
DEFAULT_BUDGET_MB = 40.0  # all released models together (issue 16)
DEFAULT_TOLERANCE_GY = 0.1  # largest max |dose difference| float16 weights may cause on the test window
_BUNDLE_CORE = ("run_id", "variant", "module", "run")  # bundle fields that are not inference options
Precision = Literal["auto", "float16", "float32"]


@dataclasses.dataclass
class ReleasedDoseModel:
    """A loaded release: the model (a ``DoseModelBundle``, or a ``DoseEnsemble`` of several), its config and
    where it came from (``sha256`` of ``model.safetensors``)."""

    model: Any  # DoseModelBundle | ensemble.DoseEnsemble
    config: dict[str, Any]
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.path.name))

    @property
    def training_spacing_mm(self) -> tuple[float, float, float]:
        """``(dz, dy, dx)`` the model was trained at."""
        return tuple(float(s) for s in self.config["training_spacing_mm"])  # type: ignore[return-value]

    @property
    def members(self) -> list[DoseModelBundle]:
        return list(getattr(self.model, "members", [self.model]))


# --------------------------------------------------------------------------------------- helpers
def members_of(model: Any) -> list[DoseModelBundle]:
    """The bundles of a bundle, an ensemble (``.members``) or a sequence of bundles."""
    if isinstance(model, DoseModelBundle):
        return [model]
    if hasattr(model, "members"):
        return list(model.members)
    if isinstance(model, Sequence) and model and all(isinstance(m, DoseModelBundle) for m in model):
        return list(model)
    raise TypeError(f"expected a DoseModelBundle, a DoseEnsemble or bundles, got {type(model).__name__}")


def _plain(value: Any) -> Any:
    """JSON-ready copy (tuples -> lists, numpy -> Python); a value JSON cannot hold raises TypeError."""
    def default(obj: Any) -> Any:
        if hasattr(obj, "tolist"):
            return obj.tolist()
        raise TypeError(f"not JSON serializable: {type(obj).__name__}")

    return json.loads(json.dumps(value, default=default, allow_nan=False))


def inference_options(bundle: DoseModelBundle) -> dict[str, Any]:
    """Every field of ``bundle`` but the module and run, JSON-ready (the window device left out)."""
    out = {}
    for f in dataclasses.fields(bundle):
        if f.name in _BUNDLE_CORE:
            continue
        value = getattr(bundle, f.name)
        if f.name == "window_options":
            value = {k: v for k, v in value.items() if k != "sw_device"}
        out[f.name] = _plain(value)
    return out


def training_spacing_from(folder: str | os.PathLike) -> tuple[float, float, float]:
    """Median ``(dz, dy, dx)`` in mm of the OpenKBP patients (``.npz``, ``voxel_size_mm`` = (i, j, k)) or
    preprocessed dose patients (``spacing_mm``) in ``folder``."""
    spacings = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            if "spacing_mm" in data.files:
                spacings.append(np.asarray(data["spacing_mm"], dtype=np.float64))
            elif "voxel_size_mm" in data.files:
                i, j, k = np.asarray(data["voxel_size_mm"], dtype=np.float64)
                spacings.append(np.array([k, i, j]))
    if not spacings:
        raise ValueError(f"{folder}: no patient .npz files to take the training spacing from")
    return tuple(float(s) for s in np.median(np.stack(spacings), axis=0))  # type: ignore[return-value]


def _default_training_spacing() -> tuple[float, float, float]:
    root = paths.data_dir(required=False)
    if root is None or not (root / "openkbp" / "train").is_dir():
        raise ValueError("training_spacing_mm not given and $CTLIB_DATA_DIR/openkbp/train is missing: pass "
                         "the (dz, dy, dx) spacing the model was trained at")
    return training_spacing_from(root / "openkbp" / "train")


def measurement_patient(test_patient: DosePatient | str | os.PathLike | None) -> tuple[DosePatient, str]:
    """The patient the float16 measurement predicts one window of, and its description for the card."""
    if isinstance(test_patient, DosePatient):
        return test_patient, f"dose patient {test_patient.patient_id}"
    if test_patient is None:
        root = paths.data_dir(required=False)
        found = sorted((root / "openkbp" / "test").glob("*.npz")) if root is not None else []
        if not found:
            from ctlib.data import body_mask
            from ctlib.io.openkbp import OpenKBPPatient
            from ctlib.studies.dose import phantom

            ct, masks, dose = phantom.dose_phantom(shape=(40, 96, 96), spacing_mm=(2.5, 3.9, 3.9))
            patient = OpenKBPPatient("dose_phantom", ct, dose, body_mask.body_mask(ct), masks)
            return features.dose_patient_from_openkbp(patient, "test"), "synthetic dose phantom (seed 0)"
        test_patient = found[0]
    path = Path(test_patient)
    with np.load(path, allow_pickle=False) as data:
        preprocessed = "sdf_mm" in data.files
    if preprocessed:
        return load_dose_patient(path), f"dose patient file {path.name}"
    from ctlib.io import openkbp

    return features.dose_patient_from_openkbp(openkbp.read_openkbp(path), "test"), f"OpenKBP {path.name}"


def crop_window(patient: DosePatient, size: Sequence[int]) -> DosePatient:
    """The ``size`` (at most the patient's) box of ``patient`` centred on its targets (else its pdm)."""
    names = [str(n) for n in patient.roi_names]
    targets = [i for i, n in enumerate(names) if n.startswith("PTV") and patient.present[i]]
    region = patient.masks[targets].any(0) if targets else patient.possible_dose_mask
    centre = np.round(np.argwhere(region).mean(0)) if region.any() else np.array(patient.shape) // 2
    box = []
    for c, s, n in zip(centre.astype(int), size, patient.shape, strict=True):
        s = min(int(s), n)
        start = int(np.clip(c - s // 2, 0, n - s))
        box.append(slice(start, start + s))
    box3, box4 = tuple(box), (slice(None), *box)
    return dataclasses.replace(
        patient, ct_hu=patient.ct_hu[box3], dose_gy=patient.dose_gy[box3],
        possible_dose_mask=patient.possible_dose_mask[box3], masks=patient.masks[box4],
        sdf_mm=patient.sdf_mm[box4],
    )


def _load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    module.load_state_dict(state)


# ----------------------------------------------------------------------------------------- export
def prepare_dose_release(
    bundle_or_run_dir: Any,
    *,
    name: str = DEFAULT_NAME,
    card: release_card.DoseCard | dict[str, Any] | str | os.PathLike | None = None,
    training_spacing_mm: Sequence[float] | None = None,
    test_patient: DosePatient | str | os.PathLike | None = None,
    precision: Precision = "auto",
    fp16_tolerance_gy: float = DEFAULT_TOLERANCE_GY,
    **load_options: Any,
) -> core.Release:
    """The release of a bundle, an ensemble, bundles, or run folder(s) (``load_dose_run(**load_options)``),
    not yet written."""
    info = release_card.card_info(card)  # a bad card is refused before any model is read
    sources = bundle_or_run_dir if isinstance(bundle_or_run_dir, list | tuple) else [bundle_or_run_dir]
    if all(isinstance(s, str | os.PathLike) for s in sources):
        from ctlib.studies.dose.evaluation import load_dose_run

        members = [load_dose_run(_run_path(s), **load_options) for s in sources]
    else:
        members = members_of(bundle_or_run_dir)
    model = members[0] if len(members) == 1 else _ensemble(members)
    spacing = tuple(round(float(s), 4) for s in (training_spacing_mm or _default_training_spacing()))
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"training_spacing_mm must be three positive numbers (dz, dy, dx), got {spacing}")

    state = core.to_dtype({f"m{i}.{k}": v for i, m in enumerate(members)
                           for k, v in m.module.state_dict().items()}, "float32")
    decision = _decide(members, model, state, precision, fp16_tolerance_gy, test_patient)
    records = []
    for i, m in enumerate(members):
        run = m.run
        records.append(_plain({
            "prefix": f"m{i}.", "run_id": m.run_id, "variant": m.variant, "model_config": run.model_config,
            "normalization": run.normalization, "preprocess_run_id": run.preprocess_run_id,
            "patch_size": run.patch_size, "step": run.step, "weights": run.weights,
            "inference": inference_options(m), "run": release_card.run_facts(run),
        }))
    git = provenance.git_state()
    config = {
        "kind": KIND, "members": records, "training_spacing_mm": list(spacing),
        "roi_names": records[0]["model_config"]["roi_names"], "precision": decision.to_dict(),
        "exported": {"ctlib_version": ctlib.__version__, "git_commit": git["commit"],
                     "git_dirty": git["dirty"], "torch_version": torch.__version__,
                     "utc": provenance.iso(provenance.utc_now())},
    }
    text = release_card.render_for_release(info, name=name, members=members, records=records,
                                           spacing_mm=spacing, precision=decision.to_dict())
    return core.Release(name=name, tensors=core.to_dtype(state, decision.dtype), config=config, card=text,
                        report={"precision": decision.to_dict(), "card_fields_not_given": info.missing})


def _decide(
    members: list[DoseModelBundle], model: Any, state: dict[str, torch.Tensor], precision: Precision,
    tolerance_gy: float, test_patient: DosePatient | str | os.PathLike | None,
) -> core.PrecisionDecision:
    """Float16 or float32: ``core.decide_precision`` on one window of ``test_patient``
    (``measurement_patient``) as large as the members' sliding windows; the members keep float32 weights."""
    if precision not in ("auto", "float16", "float32"):
        raise ValueError(f"precision must be 'auto', 'float16' or 'float32', got {precision!r}")
    metric = "dose predicted for one window of a patient, float16-rounded vs float32 weights"
    if precision == "float32":
        return core.PrecisionDecision("float32", "float32 asked for (not measured)", metric, "Gy",
                                      tolerance_gy)
    patient, described = measurement_patient(test_patient)
    size = np.max([[int(r) * int(m.model_config.get("resolution_factor", 1)) for r in
                    m.window_options.get("roi_size", patient.shape)] for m in members], axis=0)
    window = crop_window(patient, size)

    def evaluate(tensors: dict[str, torch.Tensor]) -> np.ndarray:
        for i, m in enumerate(members):
            device = next(m.module.parameters()).device
            _load_into(m.module, {k: v.to(device) for k, v in tensors.items()}, f"m{i}.")
        return model.predict(window)

    decision = core.decide_precision(state, evaluate, tolerance=tolerance_gy, metric=metric, unit="Gy",
                                     peak=80.0, test_input=f"{described}, window {list(window.shape)}")
    if precision == "float16" and decision.dtype != "float16":
        decision.dtype, decision.reason = "float16", f"float16 asked for although {decision.reason}"
    evaluate(state)
    return decision


def export_dose_release(
    bundle_or_run_dir: Any,
    *,
    name: str = DEFAULT_NAME,
    card: release_card.DoseCard | dict[str, Any] | str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    budget_mb: float = DEFAULT_BUDGET_MB,
    **options: Any,
) -> dict[str, Any]:
    """Prepare (``prepare_dose_release(**options)``) and write ``<weights_dir>/<name>/`` within the weights
    folder's budget (default ``paths.weights_dir()``, 40 MB for all releases); returns the size report."""
    item = prepare_dose_release(bundle_or_run_dir, name=name, card=card, **options)
    out = Path(weights_dir) if weights_dir is not None else paths.weights_dir()
    return core.write_releases(out, [item], budget_mb=budget_mb)


def _run_path(run: str | os.PathLike) -> Path:
    path = Path(run)
    return path if path.exists() else paths.runs_dir() / str(run)


def _ensemble(members: list[DoseModelBundle]) -> Any:
    from ctlib.studies.dose.ensemble import DoseEnsemble

    return DoseEnsemble(members)


# ------------------------------------------------------------------------------------------- load
def open_dose_release(name_or_dir: str | os.PathLike = DEFAULT_NAME, *, device: str | torch.device = "cpu"
                      ) -> ReleasedDoseModel:
    """A release read and checked (``ctlib.release.read_release``: sums first, JSON and safetensors only),
    rebuilt as a ``DoseModelBundle`` (one member) or ``DoseEnsemble`` on ``device``."""
    from ctlib.device import resolve_device

    loaded = core.read_release(name_or_dir, kind=KIND)
    cfg, where = loaded.config, loaded.path / core.CONFIG_FILE
    target = resolve_device(device)
    known = {f.name for f in dataclasses.fields(DoseModelBundle)} - set(_BUNDLE_CORE)
    members = []
    floats = {k: v.float() if v.is_floating_point() else v for k, v in loaded.tensors.items()}
    try:
        for rec in cfg["members"]:
            unknown = sorted(set(rec["inference"]) - known)
            if unknown:
                raise CTInputError(where, f"inference options {unknown} are unknown to this ctlib "
                                          f"{ctlib.__version__}: update ctlib to use this release")
            module = model_io.build_module(rec["model_config"])
            _load_into(module, floats, rec["prefix"])
            norm = rec["normalization"]
            run = run_kind.DoseRun(
                module=module.to(target).eval().requires_grad_(False), model_config=rec["model_config"],
                normalization=norm, window=windows.window_from_record(norm),
                sdf_clip_mm=float(norm.get("sdf_clip_mm", SDF_CLIP_MM)),
                include_pdm=bool(norm.get("include_pdm", True)),
                preprocess_run_id=rec.get("preprocess_run_id"),
                patch_size=rec.get("patch_size"), step=rec.get("step"), has_ema=False,
                weights=str(rec.get("weights", "model")), parameters={}, path=loaded.path,
            )
            options = dict(rec["inference"])
            window_options = {**options.pop("window_options", {}), "sw_device": target}
            members.append(DoseModelBundle(run_id=str(rec["run_id"]), variant=str(rec["variant"]),
                                           module=run.module, run=run, window_options=window_options,
                                           **options))
        spacing = [float(s) for s in cfg["training_spacing_mm"]]
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"training_spacing_mm {spacing} is not three positive numbers")
    except CTInputError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CTInputError(loaded.path, f"unusable dose release ({type(err).__name__}: {err})") from None
    if not members:
        raise CTInputError(where, "the release holds no model (members is empty)")
    model = members[0] if len(members) == 1 else _ensemble(members)
    sha = core.read_sums(loaded.path)[core.WEIGHTS_FILE]
    return ReleasedDoseModel(model=model, config=cfg, path=loaded.path, sha256=sha)


def load_dose_release(
    name_or_dir: str | os.PathLike = DEFAULT_NAME, device: str | torch.device = "cpu"
) -> Any:
    """The released dose model (a ``DoseModelBundle``; a ``DoseEnsemble`` for an ensemble), checked."""
    return open_dose_release(name_or_dir, device=device).model


def load_dose_model(
    source: str | os.PathLike | None = None, *, device: str | torch.device = "cpu", **run_options: Any
) -> Any:
    """What evaluation uses by default: ``None`` or a release (name under ``weights/`` or folder with
    ``SHA256SUMS``) loads the release (default ``dose_unet``); anything else is a training run id or folder
    (``evaluation.load_dose_run(**run_options)``)."""
    if source is None:
        return load_dose_release(DEFAULT_NAME, device=device)
    folder = core.release_dir(source)
    if (folder / core.SUMS_FILE).is_file():
        return load_dose_release(folder, device=device)
    from ctlib.studies.dose.evaluation import load_dose_run

    return load_dose_run(_run_path(source), device=device, **run_options)


# ------------------------------------------------------------------------------------ command line
def main(argv: Sequence[str] | None = None) -> int:
    """``export RUN [RUN ...]`` and ``verify [NAME ...]``; exit 2 with one line on a refusal."""
    parser = argparse.ArgumentParser(prog="python -m ctlib.studies.dose.release_model")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write weights/<name>/ from trained run(s) (several: an ensemble)")
    export.add_argument("runs", nargs="+", help="run ids or run folders of the dose training notebook")
    export.add_argument("--name", default=DEFAULT_NAME)
    export.add_argument("--card", help="JSON / YAML file of model card fields (release_card.DoseCard)")
    export.add_argument("--out", help="weights folder (default: the repository's weights/)")
    export.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB)
    export.add_argument("--precision", default="auto", choices=["auto", "float16", "float32"])
    export.add_argument("--fp16-tolerance-gy", type=float, default=DEFAULT_TOLERANCE_GY)
    export.add_argument("--training-spacing-mm", type=float, nargs=3, metavar=("DZ", "DY", "DX"))
    export.add_argument("--test-patient", help="patient .npz of the float16 measurement")
    export.add_argument("--tta", action="store_true", help="release with mirror test-time augmentation on")
    verify = sub.add_parser("verify", help="check every file of releases against their SHA256SUMS")
    verify.add_argument("names", nargs="*", default=[DEFAULT_NAME])
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            for item in args.names:
                print(f"{item}: {len(core.verify_release(core.release_dir(item)))} files OK")
            return 0
        report = export_dose_release(
            list(args.runs), name=args.name, card=args.card, weights_dir=args.out, budget_mb=args.budget_mb,
            precision=args.precision, fp16_tolerance_gy=args.fp16_tolerance_gy,
            training_spacing_mm=args.training_spacing_mm, test_patient=args.test_patient, tta=args.tta,
        )
    except (CTInputError, core.BudgetExceeded, ValueError, FileNotFoundError) as err:
        print(f"release_model: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
