"""Where a run's outputs are: the lines ``ctlib run`` and ``ctlib demo`` end with."""

from __future__ import annotations

from pathlib import Path

from ctlib import paths
from ctlib.runs import record as record_io

FIGURE_SUFFIXES = (".png", ".svg")


def display_path(path: Path) -> str:
    """``path`` relative to the repository root when inside it (so it can be pasted there), else absolute."""
    try:
        return Path(path).resolve().relative_to(paths.repo_root()).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def figures_of(run_dir: Path) -> list[Path]:
    """The figures a run saved (``figures/*.png`` / ``.svg``; each has a PDF and a JSON sidecar beside it)."""
    folder = Path(run_dir) / "figures"
    return sorted(p for p in folder.rglob("*") if p.suffix in FIGURE_SUFFIXES) if folder.is_dir() else []


def output_lines(run_dir: Path) -> list[str]:
    """Run folder, executed notebook, metrics and figures of one run, one line each, paths pasteable."""
    run_dir = Path(run_dir)
    record = record_io.read_record(run_dir)
    notebook = run_dir / (record.output_notebook or "")
    metrics = run_dir / "metrics.json"
    n_metrics = len(record_io.read_json_object(metrics))
    figures = figures_of(run_dir)
    status = record.effective_status() + (f": {record.error}" if record.error else "")
    rows = [
        ("run folder", f"{display_path(run_dir)}/"),
        (
            "executed notebook",
            display_path(notebook) if record.output_notebook and notebook.is_file() else "none",
        ),
        (
            "metrics",
            f"{display_path(metrics)} ({n_metrics} value{'s' if n_metrics != 1 else ''})"
            if n_metrics
            else "none saved",
        ),
        ("figures", ", ".join(display_path(f) for f in figures) or "none"),
    ]
    return [f"run {record.run_id}: {status}"] + [f"  {label + ':':<19}{value}" for label, value in rows]
