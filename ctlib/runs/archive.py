"""The run archive: light copies of the runs behind reported numbers, kept in git under ``experiments/``.

``runs/`` is local and not in git; a run whose numbers appear in README.md, ``bench/results`` or
``figures/`` is copied to ``experiments/<run_id>/`` without its weight: the record files
(``run.json``, ``params.json``, ``metrics.json``, ``upstream.json``, ``archive.json``), the executed
notebook, top-level tables (CSV) and figures (PNG, PDF, SVG, JSON sidecars), each at most
:data:`MAX_FILE_BYTES`. Checkpoints, caches and arrays are never copied; ``archive.json`` lists what
was left out and why. The copy goes to a temporary sibling folder renamed into place, so an entry is
complete or absent.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ctlib import atomic, paths, provenance
from ctlib.runs import record as record_io

ARCHIVE_ENV_VAR = "CTLIB_ARCHIVE_DIR"
MAX_FILE_BYTES = 2 * 1024 * 1024
ARCHIVE_FILE = "archive.json"
RECORD_FILES = ("run.json", "params.json", "metrics.json", "upstream.json")
TABLE_SUFFIXES = (".csv",)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".json")
HEAVY_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".npz", ".npy", ".nii", ".gz", ".h5", ".zarr")


class ArchiveRefused(ValueError):
    """A run that cannot be archived as asked: unknown, not completed, or already archived."""


@dataclasses.dataclass(frozen=True)
class Archived:
    """One archive entry written: where, the files copied (relative path -> bytes) and those left out."""

    run_id: str
    path: Path
    files: dict[str, int]
    skipped: list[dict[str, str]]


def archive_dir() -> Path:
    """Folder of archive entries: ``$CTLIB_ARCHIVE_DIR`` if set, else ``<repo>/experiments``."""
    env = os.environ.get(ARCHIVE_ENV_VAR)
    return Path(env).resolve() if env else paths.repo_root() / "experiments"


# ------------------------------------------------------------------------------ selecting files
def select_files(
    run_dir: Path, max_file_bytes: int = MAX_FILE_BYTES
) -> tuple[list[str], list[dict[str, str]]]:
    """``(kept, skipped)`` of a run folder: relative paths to copy, and ``{"path", "reason"}`` for the rest.

    Kept: the record files, the executed notebook and CSV tables at the top level, and figures under
    ``figures/``. A folder that is not ``figures/`` is left out whole (one line for it).
    """
    kept, skipped = [], []
    for item in sorted(run_dir.iterdir()):
        if item.is_dir() and item.name != "figures":
            size, count = _folder_size(item)
            skipped.append({"path": f"{item.name}/", "reason": f"folder of {count} files, {_mb(size)}: "
                            "not part of the light record (checkpoints, caches, arrays)"})
            continue
        for file in sorted(item.rglob("*")) if item.is_dir() else [item]:
            if not file.is_file():
                continue
            rel = file.relative_to(run_dir).as_posix()
            reason = _reason_to_skip(rel, file.stat().st_size, max_file_bytes)
            if reason:
                skipped.append({"path": rel, "reason": reason})
            else:
                kept.append(rel)
    return kept, skipped


def _reason_to_skip(rel: str, size: int, max_file_bytes: int) -> str | None:
    name = rel.rsplit("/", 1)[-1]
    if name.endswith(HEAVY_SUFFIXES):
        return "checkpoint or array"
    in_figures = rel.startswith("figures/")
    light = (
        in_figures and name.endswith(FIGURE_SUFFIXES)
        or not in_figures and (name in RECORD_FILES or name.endswith((".ipynb", *TABLE_SUFFIXES)))
    )
    if not light:
        return "not part of the light record"
    if size > max_file_bytes:
        return f"{_mb(size)}, over the {_mb(max_file_bytes)} cap per file"
    return None


def _folder_size(folder: Path) -> tuple[int, int]:
    files = [f for f in folder.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files), len(files)


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


# ------------------------------------------------------------------------------------ archiving
def check_archivable(run_id: str, *, force: bool = False, archive_root: Path | None = None) -> Path:
    """The run folder of ``run_id`` if it can be archived; :class:`ArchiveRefused` with one line if not."""
    run_dir = paths.runs_dir() / run_id
    if not record_io.has_record(run_dir) or "/" in run_id or run_id.startswith("."):
        raise ArchiveRefused(f"run {run_id!r} not found: no {run_dir / record_io.RECORD_FILE}")
    record = record_io.read_record(run_dir)
    if record.status != "completed":
        raise ArchiveRefused(
            f"run {run_id!r} has status {record.status!r}: only completed runs are archived"
        )
    target = Path(archive_root or archive_dir()) / run_id
    if target.exists() and not force:
        raise ArchiveRefused(f"{target} already exists: pass --force to replace it")
    return run_dir


def archive_run(
    run_id: str,
    *,
    force: bool = False,
    archive_root: Path | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> Archived:
    """Copy the light record of a completed run to ``<archive_root>/<run_id>/`` (temp folder, then rename)."""
    run_dir = check_archivable(run_id, force=force, archive_root=archive_root)
    target = Path(archive_root or archive_dir()) / run_id
    kept, skipped = select_files(run_dir, max_file_bytes)
    files = {rel: (run_dir / rel).stat().st_size for rel in kept}
    with atomic.atomic_path(target) as tmp:
        tmp.mkdir()
        for rel in kept:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / rel, tmp / rel)
        atomic.write_json(
            tmp / ARCHIVE_FILE,
            {
                "run_id": run_id,
                "archived_utc": provenance.iso(provenance.utc_now()),
                "archived_at_git_commit": provenance.git_state().get("commit"),
                "max_file_bytes": max_file_bytes,
                "files": files,
                "skipped": skipped,
            },
        )
    return Archived(run_id, target, files, skipped)


# ------------------------------------------------------------------------ runs known only by a row
_RUN_ID_TIME = re.compile(r"^(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})_")


def write_lost_record(row: dict[str, Any], source: str, *, archive_root: Path | None = None) -> Path:
    """An archive entry for a run whose folder is lost, from its row of an earlier index.

    ``row`` is one of ``ctlib.runs.index.parse_table``. The entry holds ``run.json`` (marked with
    ``record`` and ``lost``; the start time comes from the run id, the commit from ``git rev-parse``
    of the shown prefix when this repository has it) and ``metrics.json`` with the metrics shown.
    """
    run_id = row["run_id"]
    target = Path(archive_root or archive_dir()) / run_id
    if target.exists():
        raise ArchiveRefused(f"{target} already exists: a lost record never replaces an archive entry")
    notebook = row["notebook"]
    match = _RUN_ID_TIME.match(run_id)
    record = record_io.RunRecord(
        run_id,
        row["status"],
        notebook=notebook,
        notebook_stem=Path(notebook).stem if notebook else "interactive",
        parameter_set=row["parameter_set"],
        error=row["error"],
        started_utc="{}-{}-{}T{}:{}:{}Z".format(*match.groups()) if match else None,
        duration_s=row["duration_s"],
        git={"commit": _full_commit(row["git_commit"]), "dirty": row["git_dirty"], "branch": None}
        if row["git_commit"] else {},
        record=record_io.LOST_NOTE,
        extra={"lost": True, "reconstructed_from": source, "metrics_left_out": row["metrics_left_out"]},
    )
    with atomic.atomic_path(target) as tmp:
        tmp.mkdir()
        record.to_file(tmp / record_io.RECORD_FILE)
        atomic.write_json(tmp / "metrics.json", row["metrics"])
    return target


def _full_commit(prefix: str) -> str:
    """The full hash of a commit prefix when this repository knows it, else the prefix."""
    try:
        out = subprocess.run(
            ["git", "-C", str(paths.repo_root()), "rev-parse", "--verify", "--quiet", f"{prefix}^{{commit}}"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return prefix
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else prefix
