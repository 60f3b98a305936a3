"""``ctlib dose predict``: one patient in (OpenKBP ``.npz`` / CSV folder, or a DICOM-RT folder), its predicted
dose out (NIfTI, RTDOSE on the CT grid, DVH table, ``prediction.json``) by the released model
(``weights/dose_unet``) or another release (``--model``).

Every check that needs no model and no volume comes first (input present and of a known kind, release
folder complete, outputs free or ``--overwrite``, output folder writable): a refusal imports no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
DEFAULT_RELEASE = "dose_unet"  # release_model.DEFAULT_NAME (a test keeps them equal)
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")
EPILOG = """\
Outputs in --out (default: the current folder), <id> = --patient-id, else the file stem or folder name:
  <id>_dose_pred.nii.gz        predicted dose in Gy (float32) on the input CT grid
  <id>_dose_pred_rtdose.dcm    the same as an RT Dose object (DoseUnits GY, on the CT grid; the CT's frame of
                               reference and study for DICOM input); no patient identifiers unless
                               --keep-identifiers
  <id>_dvh.csv                 D99 / D95 / D1 of targets, D0.1cc / Dmean of organs at risk: predicted, and
                               planned when the input has a dose
  prediction.json              model (name, sha256), input, grids, warnings

DICOM CT is resampled to the spacing the model was trained at (CT linear, masks nearest) and the dose
back to the CT grid (linear), 0 outside the body. ROI names are mapped to the OpenKBP structures; a case
without a head-and-neck target runs, with a warning that the model is out of its domain.
"""


class _BadInput(Exception):
    """One line for stderr: what was expected, what was found, where."""


def _check_writable(folder: Path) -> None:
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise _BadInput(f"{folder}: --out cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise _BadInput(f"{folder}: --out cannot be written: no write permission in {probe}")


def check_arguments(args: argparse.Namespace) -> Path:
    """The checks that need neither torch nor the volume; returns the release folder."""
    from ctlib import release as core
    from ctlib.studies.dose import predict

    if not args.input:
        raise _BadInput("expected INPUT: ctlib dose predict INPUT [--out DIR] [--model NAME_OR_DIR]")
    if not DEVICE_PATTERN.fullmatch(args.device):
        raise _BadInput(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    predict.input_kind(args.input)  # CTInputError naming the input
    folder = core.release_dir(args.model)
    if not folder.is_dir() and args.model == DEFAULT_RELEASE:
        raise _BadInput(f"{folder}: the released dose model is missing (weights/{DEFAULT_RELEASE}; "
                        "$CTLIB_WEIGHTS_DIR sets the weights folder): pass --model NAME_OR_DIR")
    core.check_present(folder)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _BadInput(f"{out}: --out is a file, expected a folder")
    _check_writable(out)
    name = predict.case_id(args.input, args.patient_id)
    taken = [p for p in predict.output_paths(out, name).values() if p.exists()]
    if taken and not args.overwrite:
        raise _BadInput(f"{taken[0]}: exists; pass --overwrite to replace the outputs")
    return folder


def predict_command(args: argparse.Namespace) -> dict[str, Any]:
    """``ctlib dose predict``: check, then ``predict.predict_case``."""
    folder = check_arguments(args)
    import warnings

    from ctlib.studies.dose import predict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", predict.DosePredictionWarning)  # they are in the summary
        return predict.predict_case(args.input, args.out, model=folder, device=args.device,
                                    keep_identifiers=args.keep_identifiers, tta=True if args.tta else None,
                                    patient_id=args.patient_id, overwrite=args.overwrite)


def _cmd_predict(args: argparse.Namespace) -> int:
    from ctlib.errors import CTInputError

    try:
        summary = predict_command(args)
    except (_BadInput, CTInputError) as err:
        line = str(err)
    except Exception as err:  # unreadable input surfaces in many types; still one line, no traceback
        line = f"{args.input}: {type(err).__name__}: {err}"
    else:
        for warning in summary["warnings"]:
            print(f"ctlib dose predict: warning: {' '.join(warning.split())}", file=sys.stderr)
        print(json.dumps(summary))
        return 0
    print(f"ctlib dose predict: {' '.join(line.split())}", file=sys.stderr)
    return EXIT_BAD_INPUT


def add_subcommands(sub: Any) -> None:
    """Register ``ctlib dose predict`` on the ``ctlib`` command's subparsers."""
    dose = sub.add_parser("dose", help="radiotherapy dose prediction (OpenKBP head and neck)")
    dose_sub = dose.add_subparsers(dest="dose_command", required=True)
    pred = dose_sub.add_parser(
        "predict", help="predict the dose of one patient (OpenKBP or DICOM-RT) with the released model",
        description="Predict the dose of one patient: an OpenKBP patient (.npz, or a folder of the "
                    "challenge's CSVs) or a DICOM-RT folder (CT series + RTSTRUCT, optional RTDOSE, RTPLAN).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pred.add_argument("input", nargs="?", help="OpenKBP .npz or CSV folder, or a DICOM-RT folder")
    pred.add_argument("--out", default=".", help="output folder (default: the current folder)")
    pred.add_argument("--model", default=DEFAULT_RELEASE,
                      help=f"release name under weights/ or a release folder (default {DEFAULT_RELEASE})")
    pred.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    pred.add_argument("--keep-identifiers", action="store_true",
                      help="copy the CT's patient and study identifiers into the RTDOSE (default: anonymous)")
    pred.add_argument("--tta", action="store_true",
                      help="mirror test-time augmentation: the mean with the left-right mirrored prediction")
    pred.add_argument("--patient-id", help="case id naming the outputs (default: file stem or folder name)")
    pred.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    pred.set_defaults(func=_cmd_predict)
