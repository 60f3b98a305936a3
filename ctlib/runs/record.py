"""``run.json``: the record of one run, written and read here only.

A record says what ran (notebook, parameter set), how it ended (status, error, times) and where (git,
packages, device). ``run_notebook`` writes it at the start and the end of a run, ``current_run_dir``
for an interactive run; the index, the archive, run lookups and benchmarks read it through
:meth:`RunRecord.from_file`. Unknown keys are kept (``extra``), so records of older or newer
versions read and write back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from ctlib import atomic, provenance

RECORD_FILE = "run.json"
Status = Literal["running", "completed", "failed", "interactive"]
LOST_NOTE = "reconstructed from EXPERIMENTS_INDEX.md; the run directory is lost"


@dataclasses.dataclass
class RunRecord:
    """The fields of ``run.json``; ``record`` is set only on a record not written by its run."""

    run_id: str
    status: str
    notebook: str | None = None
    notebook_stem: str | None = None
    output_notebook: str | None = None
    parameter_set: str | None = None
    error: str | None = None
    error_traceback: str | None = None
    kernel: str | None = None
    started_utc: str | None = None
    ended_utc: str | None = None
    duration_s: float | None = None
    git: dict[str, Any] = dataclasses.field(default_factory=dict)
    python: str | None = None
    python_executable: str | None = None
    packages: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: dict[str, Any] = dataclasses.field(default_factory=dict)
    record: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ----------------------------------------------------------------------------- creation
    @classmethod
    def started(
        cls,
        run_id: str,
        *,
        notebook: str | None,
        notebook_stem: str,
        output_notebook: str | None = None,
        parameter_set: str | None = None,
        kernel: str | None = None,
        status: Status = "running",
    ) -> RunRecord:
        """A record opened now, with this process's git state, package versions and device."""
        env = provenance.environment()
        return cls(
            run_id=run_id,
            status=status,
            notebook=notebook,
            notebook_stem=notebook_stem,
            output_notebook=output_notebook,
            parameter_set=parameter_set,
            kernel=kernel,
            started_utc=provenance.iso(provenance.utc_now()),
            git=env["git"],
            python=env["python"],
            python_executable=env["python_executable"],
            packages=env["packages"],
            device=env["device"],
        )

    def finish(self, duration_s: float, error: BaseException | None = None) -> None:
        """Close the record: ``completed``, or ``failed`` with the error's one line and traceback tail."""
        self.status = "failed" if error is not None else "completed"
        self.ended_utc = provenance.iso(provenance.utc_now())
        self.duration_s = duration_s
        if error is not None:
            self.error, self.error_traceback = provenance.describe_error(error)

    # --------------------------------------------------------------------------------- facts
    @property
    def git_commit(self) -> str | None:
        return (self.git or {}).get("commit")

    @property
    def git_dirty(self) -> bool | None:
        return (self.git or {}).get("dirty")

    @property
    def lost(self) -> bool:
        """True for a record rebuilt after its run directory was lost (see ``ctlib.runs.archive``)."""
        return bool(self.extra.get("lost"))

    # ------------------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, run_id: str = "") -> RunRecord:
        """A record from the JSON object of ``run.json``; ``run_id`` fills a record that lacks one."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        known.setdefault("run_id", run_id)
        known.setdefault("status", "unknown")
        for key in ("git", "packages", "device"):
            known[key] = known.get(key) or {}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def from_file(cls, path: str | Path) -> RunRecord:
        """Read ``path`` (a ``run.json`` or the run folder holding one);
        ``ValueError`` if it is not a record."""
        file = Path(path)
        file = file / RECORD_FILE if file.is_dir() else file
        data = json.loads(file.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{file}: expected a JSON object, found {type(data).__name__}")
        return cls.from_dict(data, run_id=file.parent.name)

    # ------------------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``run.json``: the fields (``record`` only when set), then the extra keys."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if data["record"] is None:
            del data["record"]
        return {**data, **self.extra}

    def to_file(self, path: str | Path) -> Path:
        """Write atomically to ``path`` (a ``run.json`` or the run folder); returns the file."""
        file = Path(path)
        file = file / RECORD_FILE if file.is_dir() else file
        atomic.write_json(file, self.to_dict())
        return file


def read_record(run_dir: str | Path) -> RunRecord:
    """The record of the run in ``run_dir``."""
    return RunRecord.from_file(Path(run_dir) / RECORD_FILE)


def has_record(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a ``run.json`` (a folder without one is not a run)."""
    return (Path(run_dir) / RECORD_FILE).is_file()


def read_json_object(file: Path) -> dict[str, Any]:
    """A run file's JSON object (params, metrics, upstream); ``{}`` when it is missing or broken."""
    try:
        data = json.loads(Path(file).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
