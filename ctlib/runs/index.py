"""EXPERIMENTS_INDEX.md: a table of every run in ``runs/`` and ``experiments/``, regenerated, notes kept.

Everything from the ``## Notes`` heading to the end of the file is written by people and preserved
verbatim; everything above it is generated from the run directories (``runs/``, local and not in
git) and the run archive (``experiments/``, in git), so a fresh clone loses no row.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ctlib import atomic, paths
from ctlib.runs import archive
from ctlib.runs import record as record_io

NOTES_HEADING = "## Notes"
MAX_METRICS = 6
MAX_ERROR_CHARS = 200
_NOTES = re.compile(r"^## Notes[ \t]*$", re.MULTILINE)
BEGIN = "<!-- BEGIN GENERATED TABLE: do not edit by hand; regenerate with `ctlib index` or `make index` -->"
END = "<!-- END GENERATED TABLE -->"
DEFAULT_NOTES = (
    f"{NOTES_HEADING}\n\nHand-written notes about the runs above (what was learned, which run ids matter). "
    "This section\nis kept verbatim when the table is regenerated.\n"
)


def default_index_path() -> Path:
    """``<repo>/EXPERIMENTS_INDEX.md``: the committed index (``ctlib index``, ``ctlib archive``)."""
    return paths.repo_root() / "EXPERIMENTS_INDEX.md"


def local_index_path() -> Path:
    """``<runs>/INDEX.md``: this machine's index, refreshed after every ``ctlib run`` and ``ctlib demo``.

    It lists the same archive rows as the committed index plus this machine's runs, so running a
    notebook or the demo never changes a tracked file; ``ctlib index`` or ``ctlib archive`` update
    ``EXPERIMENTS_INDEX.md`` when a run should be kept.
    """
    return paths.runs_dir() / "INDEX.md"


def write_local_index() -> Path:
    """Write ``local_index_path()`` with the Notes of the committed index."""
    return write_index(local_index_path(), notes_from=default_index_path())


def build_index(
    runs_dir: Path | None = None, archive_dir: Path | None = None, *, include_interactive: bool = False
) -> list[dict[str, Any]]:
    """One entry per run in ``runs_dir`` (default ``runs/``) or ``archive_dir`` (default ``experiments/``).

    A run in both appears once, read from ``runs_dir`` and marked as archived too. An unreadable
    ``run.json`` gives an entry with status ``unreadable`` and the reason as error. Interactive runs
    (a notebook run by hand, or by nbval) are left out unless asked for: they have no parameter set
    and nobody chose to record them. Newest first.
    """
    archive_root = Path(archive_dir or archive.archive_dir())
    archived = {e["run_id"]: e for e in _entries(archive_root, "archive")}
    entries = {}
    for entry in _entries(Path(runs_dir or paths.runs_dir()), "runs"):
        entry["kept"] = ("runs", "archive") if entry["run_id"] in archived else ("runs",)
        entries[entry["run_id"]] = entry
    for run_id, entry in archived.items():
        entries.setdefault(run_id, entry)
    chosen = [e for e in entries.values() if include_interactive or e["status"] != "interactive"]
    chosen.sort(key=lambda e: (e["started_utc"] or "", e["run_id"]), reverse=True)
    return chosen


def _entries(root: Path, kept: str) -> list[dict[str, Any]]:
    """The index entries of the run folders directly under ``root`` (``kept``: ``runs`` or ``archive``)."""
    entries = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith(".") or not record_io.has_record(folder):  # atomic-write temporaries
            continue
        try:
            record = record_io.read_record(folder)
        except (OSError, ValueError, TypeError) as exc:
            record = record_io.RunRecord(
                folder.name, "unreadable", error=f"{record_io.RECORD_FILE}: {type(exc).__name__}: {exc}"
            )
        entries.append(
            {
                "run_id": record.run_id or folder.name,
                "run_dir": folder,
                "notebook": record.notebook,
                "parameter_set": record.parameter_set,
                "git_commit": record.git_commit,
                "git_dirty": record.git_dirty,
                "status": record.effective_status(),
                "resumed_from": (record.resumed_from or {}).get("run_id"),
                "started_utc": record.started_utc,
                "duration_s": record.duration_s,
                "error": record.error,
                "params": record_io.read_json_object(folder / "params.json").get("parameters", {}),
                "metrics": record_io.read_json_object(folder / "metrics.json"),
                "metrics_left_out": int(record.extra.get("metrics_left_out") or 0),
                "lost": record.lost,
                "kept": ("lost",) if record.lost else (kept,),
            }
        )
    return entries


COLUMNS = ("Run", "Notebook", "Set", "Git", "Status", "Duration", "Kept in", "Key metrics")
KEPT_LABELS = {
    ("runs",): "runs/",
    ("archive",): "experiments/",
    ("runs", "archive"): "runs/, experiments/",
    ("lost",): "**lost**",
}


def render_table(entries: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`build_index` entries."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    for e in entries:
        status = e["status"] or "unknown"
        if e.get("resumed_from"):
            status = f"{status} (resumed from {e['resumed_from']})"
        if e["error"]:
            status = f"{status}: {_truncate(e['error'])}"
        metrics = format_metrics(e["metrics"])
        if e.get("metrics_left_out"):
            metrics += f", (+{e['metrics_left_out']} more)"
        cells = [
            f"`{e['run_id']}`",
            _notebook_label(e["notebook"]),
            e["parameter_set"] or "defaults",
            _git_label(e["git_commit"], e["git_dirty"]),
            status,
            format_duration(e["duration_s"]),
            KEPT_LABELS.get(tuple(e.get("kept") or ()), "runs/"),
            metrics,
        ]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render_sweeps(runs_dir: Path) -> str:
    """The sweeps (``ctlib sweep``) of the runs folder and the archive: grid, members per status, table."""
    from ctlib.runs import sweep as sweeps

    found = sweeps.list_sweeps(runs_dir)
    if not found:
        return ""
    lines = ["", f"Sweeps ({len(found)}): members are the runs above; the table of each is `sweep_table.csv` "
             "beside its `sweep.json`.", "", "| Sweep | Notebook | Set | Grid | Members | Table |",
             "| --- | --- | --- | --- | --- | --- |"]
    for sweep in found:
        info = sweeps.summary(sweep)
        grid = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in info["grid"].items())
        grid += f"; seeds: {info['seeds']}" if info["seeds"] else ""
        counts = ", ".join(f"{n} {s}" for s, n in info["status"].items())
        table = _display(Path(info["table"]).parent) + sweeps.TABLE_FILE
        cells = [f"`{info['sweep_id']}`", _notebook_label(info["notebook"]),
                 info["parameter_set"] or "defaults", grid, f"{info['members']} ({counts})", table]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_index(
    path: Path | None = None,
    runs_dir: Path | None = None,
    archive_dir: Path | None = None,
    *,
    notes_from: Path | None = None,
) -> Path:
    """Regenerate the index file atomically from ``runs/`` and ``experiments/``, keeping ``## Notes``
    verbatim.

    A new file gets the Notes of ``notes_from`` when given and present, else a placeholder. An
    existing file with neither a Notes section nor the generated-table marker is refused rather than
    overwritten: it was written by hand.
    """
    path = Path(path or default_index_path())
    root = Path(runs_dir or paths.runs_dir())
    archive_root = Path(archive_dir or archive.archive_dir())
    notes = DEFAULT_NOTES
    if not path.exists() and notes_from is not None and Path(notes_from).is_file():
        committed = Path(notes_from).read_text()
        match = _NOTES.search(committed)
        notes = committed[match.start() :] if match else notes
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
    entries = build_index(root, archive_root)
    text = "# Experiments index\n\n" + f"{BEGIN}\n\n" + _summary(entries, root, archive_root)
    text += render_table(entries) + render_sweeps(root) + f"\n{END}\n\n" + notes
    atomic.write_text(path, text)
    return path


def _summary(entries: list[dict[str, Any]], root: Path, archive_root: Path) -> str:
    """The generated paragraph above the table: sources, counts, and the lost runs by name."""
    states = ("completed", "failed", "running", "killed", record_io.LEGACY_RUNNING)
    count = {s: sum(e["status"] == s for e in entries) for s in states}
    archived = sum("archive" in e["kept"] for e in entries)
    lost = [e["run_id"] for e in entries if e["lost"]]
    unknown = count[record_io.LEGACY_RUNNING]
    legacy = f", {unknown} running or killed (recorded before runs had a heartbeat)" if unknown else ""
    text = (
        f"Generated from `{_display(root)}` (run folders on this machine, not in git) and "
        f"`{_display(archive_root, archive.ARCHIVE_ENV_VAR)}` (light records kept in git by `ctlib "
        f"archive`): {len(entries)} runs ({count['completed']} completed, {count['failed']} failed, "
        f"{count['running']} running, {count['killed']} killed{legacy}; {archived} archived, {len(lost)} "
        "lost), newest "
        f"first. Key metrics are up to {MAX_METRICS} numeric values of each run's `metrics.json`, 4 "
        "significant digits.\n\n"
    )
    if lost:
        text += (
            f"Lost runs ({len(lost)}, **lost** in 'Kept in'): their run folders exist nowhere any more; "
            "`experiments/<run_id>/` keeps only a record rebuilt from an earlier version of this table "
            "(status, duration, git commit, the key metrics shown then): "
            + ", ".join(f"`{run_id}`" for run_id in lost)
            + ".\n\n"
        )
    return text


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


def _display(root: Path, env_var: str = paths.RUNS_ENV_VAR) -> str:
    try:
        return root.resolve().relative_to(paths.repo_root()).as_posix() + "/"
    except ValueError:
        return f"${env_var} ({root.name}/)"


# --------------------------------------------------------------------------- reading a table back
_DURATION = re.compile(r"^(?:(\d+) h )?(?:(\d+) min)?(?: ?(\d+(?:\.\d+)?) s)?$")
_MORE = re.compile(r"^\(\+(\d+) more\)$")


def parse_table(text: str) -> list[dict[str, Any]]:
    """The rows of a generated table (this version's or the earlier one without 'Kept in'), as facts.

    The inverse of :func:`render_table` as far as the table shows them: the Git cell gives an 8-digit
    commit prefix, durations are rounded, metrics have 4 significant digits and only the first
    :data:`MAX_METRICS` are there (``metrics_left_out`` counts the rest). Used to keep the runs of an
    earlier index whose folders are lost (``ctlib.runs.archive.write_lost_record``).
    """
    rows, header = [], None
    for line in text.splitlines():
        if header is not None and not line.startswith("|"):
            break  # the end of the runs table (the sweeps table below it has other columns)
        if not line.startswith("|") or line.startswith("| ---"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if header is None:
            header = cells
            continue
        row = dict(zip(header, cells, strict=True))
        status, _, error = row["Status"].partition(": ")
        status = re.sub(r" \(resumed from [^)]*\)$", "", status)
        commit, _, dirty = row["Git"].partition("-")
        metrics, left_out = {}, 0
        for item in filter(None, row["Key metrics"].split(", ")):
            more = _MORE.match(item)
            if more:
                left_out = int(more.group(1))
                continue
            name, _, value = item.partition("=")
            metrics[name] = _parse_number(value)
        rows.append(
            {
                "run_id": row["Run"].strip("`"),
                "notebook": (
                    None if row["Notebook"] == "(interactive)" else f"notebooks/{row['Notebook']}.ipynb"
                ),
                "parameter_set": None if row["Set"] == "defaults" else row["Set"],
                "git_commit": None if row["Git"] == "no git" else commit,
                "git_dirty": None if row["Git"] == "no git" else dirty == "dirty",
                "status": status,
                "error": error or None,
                "duration_s": parse_duration(row["Duration"]),
                "metrics": metrics,
                "metrics_left_out": left_out,
            }
        )
    return rows


def parse_duration(text: str) -> float | None:
    """Seconds of a :func:`format_duration` text (to its rounding); ``None`` for an empty cell."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + (float(seconds) if seconds else 0.0)


def _parse_number(value: str) -> float | int | str:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value
