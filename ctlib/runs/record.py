"""``run.json``: the record of one run, written and read here only.

A record says what ran (notebook, parameter set), how it ended (status, error, times) and where (git,
packages, device). ``run_notebook`` writes it at the start and the end of a run, ``current_run_dir``
for an interactive run; the index, the archive, run lookups and benchmarks read it through
:meth:`RunRecord.from_file`. Unknown keys are kept (``extra``), so records of older or newer
versions read and write back unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from ctlib import atomic, provenance

RECORD_FILE = "run.json"
Status = Literal["running", "completed", "failed", "interactive"]
HEARTBEAT_S = 30.0  # a running run refreshes ``heartbeat_utc`` this often
STALE_AFTER_S = 5 * HEARTBEAT_S  # a heartbeat older than this means the run is dead
LEGACY_RUNNING = "running or killed"
OPTIONAL_KEYS = ("record", "pid", "host", "heartbeat_utc", "resumed_from")  # written only when set
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
    pid: int | None = None  # the process executing the run (the papermill driver)
    host: str | None = None
    heartbeat_utc: str | None = None  # refreshed every HEARTBEAT_S while the run is alive
    resumed_from: dict[str, Any] | None = None  # run id and checkpoint of the run this one continued
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
            pid=os.getpid(),
            host=socket.gethostname(),
            heartbeat_utc=provenance.iso(provenance.utc_now()),
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

    def effective_status(self, now: dt.datetime | None = None) -> str:
        """``status``, except that a ``running`` run which is dead reads ``killed``.

        Dead: on this host its pid is gone, or (any host, or a reused pid) its heartbeat is older than
        ``STALE_AFTER_S``. A record without pid and heartbeat (written before they existed) reads
        ``running or killed``: nothing tells. Nothing is written: the index and lookups only read records.
        """
        if self.status != "running":
            return self.status
        if self.pid is None and self.heartbeat_utc is None:
            return LEGACY_RUNNING
        now = now or provenance.utc_now()
        if self.heartbeat_utc:
            try:
                beat = dt.datetime.fromisoformat(self.heartbeat_utc.replace("Z", "+00:00"))
            except ValueError:
                beat = None
            if beat is not None and (now - beat).total_seconds() > STALE_AFTER_S:
                return "killed"
        if self.pid is not None and self.host == socket.gethostname() and not _process_alive(self.pid):
            return "killed"
        return self.status

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
        for key in OPTIONAL_KEYS:
            if data[key] is None:
                del data[key]
        return {**data, **self.extra}

    def to_file(self, path: str | Path) -> Path:
        """Write atomically to ``path`` (a ``run.json`` or the run folder); returns the file."""
        file = Path(path)
        file = file / RECORD_FILE if file.is_dir() else file
        atomic.write_json(file, self.to_dict())
        return file


def _process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def locked(run_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder (``flock`` on its directory) while a record is
    read, changed and written, so the heartbeat and the kernel never lose each other's fields."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def update_record(run_dir: str | Path, **fields: Any) -> RunRecord:
    """Set ``fields`` in the ``run.json`` of ``run_dir`` (read, change, write atomically, under the lock)."""
    with locked(run_dir):
        record = read_record(run_dir)
        for key, value in fields.items():
            if key in {f.name for f in dataclasses.fields(RunRecord)} - {"extra"}:
                setattr(record, key, value)
            else:
                record.extra[key] = value
        record.to_file(run_dir)
    return record


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
