"""The ``ctlib`` command: ``info``, ``run``, ``sweep``, ``index``, ``archive``, ``demo``, and the subcommands
of each study (``ctlib/studies/*/cli.py``).

Bad input ends with exit status 2 and one line on stderr that names the file and the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_BAD_INPUT = 2


def volume_info(path: str, series_uid: str | None = None) -> dict[str, Any]:
    """The facts ``ctlib info`` prints for one volume."""
    from ctlib.io import reader

    kind = reader.detect_format(path)
    volume = reader.read_volume(path, series_uid=series_uid)
    hu_min, hu_max = volume.hu_range()
    return {
        "path": str(path),
        "format": kind,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "hu_min": round(hu_min, 3),
        "hu_max": round(hu_max, 3),
        "modality": volume.modality,
        "origin_lps_mm": [round(o, 4) for o in volume.origin],
        "slice_thickness_mm": volume.slice_thickness_mm,
        # files of a DICOM folder left out as clearly not images (text, pictures, dotfiles, DICOMDIR)
        **({"skipped_files": volume.meta["skipped_files"]} if "skipped_files" in volume.meta else {}),
    }


def _cmd_info(args: argparse.Namespace) -> int:
    try:
        info = volume_info(args.path, series_uid=args.series)
        line = json.dumps(info, allow_nan=False)  # a NaN would make the line invalid JSON
    except Exception as err:  # any failure to read is bad input here: one line, no traceback
        from ctlib.errors import CTInputError

        line = str(err) if isinstance(err, CTInputError) else f"{args.path}: {type(err).__name__}: {err}"
        print(f"ctlib info: {' '.join(line.split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(line)
    return 0


def _check_runs_folder() -> None:
    """The runs folder (``$CTLIB_RUNS_DIR``, created if missing) must be creatable and writable: a
    ``ValueError`` here, before papermill is imported, rather than a traceback from ``mkdir``."""
    import os

    from ctlib import paths

    runs = paths.runs_dir()
    folder = runs
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{runs}: the runs folder cannot be created: {folder} is a file, not a folder "
                         f"(${paths.RUNS_ENV_VAR} sets the runs folder)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{runs}: the runs folder cannot be written: no write permission in {folder}")


def _cmd_run(args: argparse.Namespace) -> int:
    from ctlib.runs import params as run_params

    try:  # every check that needs no kernel first: a refusal takes well under a second
        overrides = dict(run_params.parse_override(item) for item in args.param)
        notebook = run_params.resolve_notebook_path(args.notebook)
        run_params.resolve_parameters(notebook, args.parameter_set, overrides)
        _check_runs_folder()
    except (FileNotFoundError, ValueError) as err:
        print(f"ctlib run: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from ctlib import runs
    from ctlib.runs import index as experiments_index
    from ctlib.runs import report, torchrun_ids

    run_id = args.run_id
    try:
        if torchrun_ids.under_torchrun():  # a rank of a DDP job: ids agreed without talking
            declared = run_params.notebook_defaults(notebook)
            run_id, resume = torchrun_ids.torchrun_run_id(
                run_id, run_params.notebook_stem(notebook), "resume_run_id" in declared)
            overrides = {**resume, **overrides}
        result = runs.run_notebook(
            args.notebook, parameter_set=args.parameter_set, overrides=overrides, run_id=run_id,
            raise_on_failure=False,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"ctlib run: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    local_index = experiments_index.write_local_index()
    print(json.dumps({"run_id": result.run_id, "status": result.status, "run_dir": str(result.run_dir)}))
    print("\n".join(report.output_lines(result.run_dir)), flush=True)
    print(f"  index of this machine's runs: {local_index}")
    print(f"  to keep it in git: ctlib archive {result.run_id} (adds it to EXPERIMENTS_INDEX.md)")
    if result.status != "completed":
        print(f"ctlib run: {result.run_id} failed: {result.error}", file=sys.stderr)
        return 1
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from ctlib.runs import index as experiments_index

    if args.committed:  # the tracked index of this checkout: what `ctlib archive` keeps
        path = experiments_index.write_index()
    elif args.output:
        committed = experiments_index.default_index_path()
        path = experiments_index.write_index(Path(args.output), notes_from=committed)
    else:  # next to the runs folder it describes: never a tracked file
        path = experiments_index.write_local_index()
    print(path)
    return 0


def _cmd_archive(args: argparse.Namespace) -> int:
    from ctlib.runs import archive
    from ctlib.runs import index as experiments_index
    from ctlib.runs import sweep as sweeps

    max_file_bytes = int(args.max_file_mb * 2**20)
    try:  # every id is checked before anything is copied
        for run_id in args.run_ids:
            if not sweeps.is_sweep_id(run_id):
                archive.check_archivable(run_id, force=args.force)
        for sweep_id in filter(sweeps.is_sweep_id, args.run_ids):  # a sweep: its members, record and table
            print(f"archived sweep {sweep_id} -> "
                  f"{sweeps.archive_sweep(sweep_id, force=args.force, max_file_bytes=max_file_bytes)}")
    except (archive.ArchiveRefused, FileNotFoundError) as err:
        print(f"ctlib archive: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for run_id in [r for r in args.run_ids if not sweeps.is_sweep_id(r)]:
        done = archive.archive_run(run_id, force=args.force, max_file_bytes=max_file_bytes)
        size = sum(done.files.values()) / 2**20
        print(f"archived {run_id} -> {done.path} ({len(done.files)} files, {size:.1f} MB)")
        for skipped in done.skipped:
            print(f"  left out {skipped['path']}: {skipped['reason']}")
    print(experiments_index.write_index())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ctlib import demo

    results = demo.run_demo()
    failed = [r for r in results if r.status != "completed"]
    for r in failed:
        print(f"ctlib demo: {r.run_id} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def _study_clis() -> list[Any]:
    """The ``cli`` module of every study package that has one (``ctlib/studies/<study>/cli.py``)."""
    import importlib
    import pkgutil

    from ctlib import studies

    names = sorted(m.name for m in pkgutil.iter_modules(studies.__path__) if m.ispkg)
    found = [importlib.util.find_spec(f"ctlib.studies.{name}.cli") for name in names]
    return [importlib.import_module(spec.name) for spec in found if spec is not None]


def _positive_mb(text: str) -> float:
    """``--max-file-mb``: a finite number of megabytes above 0 (``nan`` made ``int()`` raise a traceback)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megabytes, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of megabytes above 0, got {text!r}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2), not usage plus error."""

    def error(self, message: str) -> NoReturn:
        line = f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)"
        self.exit(EXIT_BAD_INPUT, line + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ctlib`` command (its subcommands' parsers are of the same class)."""
    from ctlib.runs import sweep_cli

    parser = OneLineParser(prog="ctlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print one JSON line describing a CT volume")
    info.add_argument("path", help="DICOM folder, NIfTI file, or OpenKBP patient (.npz or CSV folder)")
    info.add_argument("--series", help="SeriesInstanceUID, when a DICOM folder holds several series")
    info.set_defaults(func=_cmd_info)

    run = sub.add_parser("run", help="execute a notebook with papermill into runs/<run_id>/")
    run.add_argument("notebook", help="path of the notebook, e.g. notebooks/slice_interp/...ipynb")
    run.add_argument("-p", "--parameter-set", help="papermill_params/<notebook stem>/<SET>.yaml")
    run.add_argument("-P", "--param", action="append", default=[], metavar="KEY=VALUE", help="override")
    run.add_argument("--run-id", help="the run's id (default: new; `ctlib sweep` names its members' ids)")
    run.set_defaults(func=_cmd_run)

    sweep_cli.add_subcommand(sub)

    index = sub.add_parser(
        "index", help="write the index of runs/ and experiments/ (default: INDEX.md in the runs folder)"
    )
    where = index.add_mutually_exclusive_group()
    where.add_argument("--output", metavar="PATH", help="write the index here instead")
    where.add_argument(
        "--committed", action="store_true", help="regenerate this checkout's tracked EXPERIMENTS_INDEX.md"
    )
    index.set_defaults(func=_cmd_index)

    keep = sub.add_parser("archive", help="keep completed runs in git: a light copy in experiments/<run_id>/")
    keep.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="completed runs in runs/, or sweep ids")
    keep.add_argument("--force", action="store_true", help="replace an existing experiments/<run_id>/")
    keep.add_argument(
        "--max-file-mb", type=_positive_mb, default=2.0, help="files larger than this are left out"
    )
    keep.set_defaults(func=_cmd_archive)

    demo = sub.add_parser(
        "demo", help="the main job (the released model on a held-out thick series), then the notebook chain"
    )
    demo.set_defaults(func=_cmd_demo)

    for study_cli in _study_clis():
        study_cli.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctlib`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

