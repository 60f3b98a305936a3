"""EXPERIMENTS_INDEX.md: a table of every run in ``runs/``, regenerated, with hand-written notes kept.

Everything from the ``## Notes`` heading to the end of the file is written by people and preserved
verbatim; everything above it is generated from the run directories.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ctlib import atomic, paths

NOTES_HEADING = "## Notes"
MAX_METRICS = 6
MAX_ERROR_CHARS = 200
_NOTES = re.compile(r"^## Notes[ \t]*$", re.MULTILINE)
BEGIN = "<!-- BEGIN GENERATED TABLE: do not edit by hand; regenerate with `ctlib index` or `make index` -->"
END = "<!-- END GENERATED TABLE -->"
DEFAULT_NOTES = (
    f"{NOTES_HEADING}\n\n"
    "Hand-written notes about the runs above (what was learned, which run ids matter). This section\n"
    "is kept verbatim when the table is regenerated.\n"
)


def default_index_path() -> Path:
    """``<repo>/EXPERIMENTS_INDEX.md``."""
    return paths.repo_root() / "EXPERIMENTS_INDEX.md"


def build_index(runs_dir: Path | None = None, *, include_interactive: bool = False) -> list[dict[str, Any]]:
    """One entry per ``<runs_dir>/*/run.json`` with its params and metrics, newest first.

    An unreadable ``run.json`` gives an entry with status ``unreadable`` and the reason as error.
    Interactive runs (a notebook run by hand, or by nbval) are left out unless asked for: they have
    no parameter set and nobody chose to record them.
    """
    root = Path(runs_dir or paths.runs_dir())
    entries = []
    for file in root.glob("*/run.json") if root.is_dir() else []:
        if file.parent.name.startswith("."):  # atomic-write temporaries
            continue
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            record = {"status": "unreadable", "error": f"run.json: {type(exc).__name__}: {exc}"}
        if record.get("status") == "interactive" and not include_interactive:
            continue
        git = record.get("git") or {}
        entries.append(
            {
                "run_id": record.get("run_id") or file.parent.name,
                "run_dir": file.parent,
                "notebook": record.get("notebook"),
                "parameter_set": record.get("parameter_set"),
                "git_commit": git.get("commit"),
                "git_dirty": git.get("dirty"),
                "status": record.get("status"),
                "started_utc": record.get("started_utc"),
                "duration_s": record.get("duration_s"),
                "error": record.get("error"),
                "params": _read_json(file.parent / "params.json").get("parameters", {}),
                "metrics": _read_json(file.parent / "metrics.json"),
            }
        )
    entries.sort(key=lambda e: (e["started_utc"] or "", e["run_id"]), reverse=True)
    return entries


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def render_table(entries: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`build_index` entries."""
    lines = [
        "| Run | Notebook | Set | Git | Status | Duration | Key metrics |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        status = e["status"] or "unknown"
        if e["error"]:
            status = f"{status}: {_truncate(e['error'])}"
        cells = [
            f"`{e['run_id']}`",
            _notebook_label(e["notebook"]),
            e["parameter_set"] or "defaults",
            _git_label(e["git_commit"], e["git_dirty"]),
            status,
            format_duration(e["duration_s"]),
            format_metrics(e["metrics"]),
        ]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_index(path: Path | None = None, runs_dir: Path | None = None) -> Path:
    """Regenerate the index file atomically, keeping its ``## Notes`` section verbatim.

    A new file gets a placeholder Notes section. An existing file with neither a Notes section
    nor the generated-table marker is refused rather than overwritten: it was written by hand.
    """
    path = Path(path or default_index_path())
    root = Path(runs_dir or paths.runs_dir())
    notes = DEFAULT_NOTES
    if path.exists():
        old = path.read_text()
        match = _NOTES.search(old)
        if match:
            notes = old[match.start() :]
        elif BEGIN not in old:
            raise ValueError(
                f"{path} has no '{NOTES_HEADING}' section and no generated table: refusing to overwrite "
                f"hand-written text; move it under a '{NOTES_HEADING}' heading first"
            )
    entries = build_index(root)
    counts = {s: sum(e["status"] == s for e in entries) for s in ("completed", "failed", "running")}
    header = (
        "# Experiments index\n\n"
        f"{BEGIN}\n\n"
        f"Generated from `{_display(root)}`: {len(entries)} runs ({counts['completed']} completed, "
        f"{counts['failed']} failed, {counts['running']} running or killed), newest first. Key metrics "
        f"are up to {MAX_METRICS} numeric values of each run's `metrics.json`, 4 significant digits.\n\n"
    )
    text = header + render_table(entries) + f"\n{END}\n\n" + notes
    atomic.write_text(path, text)
    return path


def format_metrics(metrics: dict[str, Any], limit: int = MAX_METRICS) -> str:
    """``name=value`` for the scalar numeric metrics, 4 significant digits, at most ``limit``."""
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    shown = [f"{k}={_number(v)}" for k, v in scalars[:limit]]
    if len(scalars) > limit:
        shown.append(f"(+{len(scalars) - limit} more)")
    return ", ".join(shown)


def _number(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def format_duration(seconds: float | None) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _notebook_label(notebook: str | None) -> str:
    if not notebook:
        return "(interactive)"
    if Path(notebook).is_absolute():  # outside the repository
        return Path(notebook).stem
    return notebook.removeprefix("notebooks/").removesuffix(".ipynb")


def _git_label(commit: str | None, dirty: bool | None) -> str:
    if not commit:
        return "no git"
    return commit[:8] + ("-dirty" if dirty else "")


def _truncate(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _display(root: Path) -> str:
    try:
        return root.resolve().relative_to(paths.repo_root()).as_posix() + "/"
    except ValueError:
        return f"${paths.RUNS_ENV_VAR} ({root.name}/)"
