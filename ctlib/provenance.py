"""What a run record says about where it ran: git commit, package versions, device, errors, times.

Each probe tolerates a missing tool (no git, no commits, no CUDA, a package not installed) and
answers ``None`` for what it cannot know, so recording never makes a run fail.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
import traceback
from importlib import metadata
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

from ctlib import paths

PACKAGES = ("torch", "monai", "numpy", "pydicom", "nibabel", "papermill", "ctlib")
TRACEBACK_TAIL_LINES = 20
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


def iso(t: dt.datetime) -> str:
    """ISO 8601 with a ``Z`` suffix, e.g. ``2026-11-23T14:15:03.123456Z``."""
    return t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def git_state(root: Path | None = None) -> dict[str, Any]:
    """``{"commit", "dirty", "branch"}`` of the repository at ``root``; ``None`` where git cannot say.

    Dirty means any tracked change or untracked, non-ignored file (``git status --porcelain``).
    """
    root = Path(root or paths.repo_root())
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:  # no git, not a repository, or no commit yet
        return {"commit": None, "dirty": None, "branch": None}
    status = _git(root, "status", "--porcelain")
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    return {"commit": commit, "dirty": None if status is None else bool(status), "branch": branch}


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions; ``ctlib`` falls back to its ``__version__`` when not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions.get("ctlib") is None and "ctlib" in names:
        import ctlib

        versions["ctlib"] = ctlib.__version__
    return versions


def device_info() -> dict[str, Any]:
    """CPU count, platform and, when torch is installed, CUDA availability and the first GPU's name."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "cuda_available": None,
        "cuda_device_count": None,
        "device_name": None,
        "cuda_version": None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if importlib_util.find_spec("torch") is None:
        return info
    try:
        import torch

        available = bool(torch.cuda.is_available())
        info.update(
            cuda_available=available,
            cuda_device_count=torch.cuda.device_count() if available else 0,
            device_name=torch.cuda.get_device_name(0) if available else None,
            cuda_version=torch.version.cuda,
        )
    except Exception as exc:  # a broken driver must not break the run record
        info["cuda_error"] = f"{type(exc).__name__}: {exc}"
    return info


def environment() -> dict[str, Any]:
    """Everything about the software and hardware a run record stores."""
    return {
        "git": git_state(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "packages": package_versions(),
        "device": device_info(),
    }


def describe_error(exc: BaseException) -> tuple[str, str]:
    """``(one line "Type: message (where)", traceback tail)`` of an exception.

    A papermill ``PapermillExecutionError`` describes the failing notebook cell: its exception type
    and message, its execution count, and the tail of the kernel's traceback.
    """
    ename = getattr(exc, "ename", None)
    if ename is not None:  # raised inside the kernel
        evalue = str(getattr(exc, "evalue", ""))
        where = f" (notebook cell In [{getattr(exc, 'exec_count', '?')}])"
        lines = "\n".join(getattr(exc, "traceback", []) or []).splitlines()
    else:
        ename, evalue, where = type(exc).__name__, str(exc), ""
        lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    first = evalue.strip().splitlines()[0] if evalue.strip() else ""
    one_line = f"{ename}: {first}{where}" if first else f"{ename}{where}"
    tail = "\n".join(_ANSI.sub("", line).rstrip() for line in lines[-TRACEBACK_TAIL_LINES:])
    return one_line, tail


def environment_summary() -> str:
    """A few lines on where this kernel runs (git, versions, device), for a notebook's setup cell."""
    env = environment()
    git = env.get("git") or {}
    commit = (git.get("commit") or "no commit")[:10] + ("-dirty" if git.get("dirty") else "")
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
    device = env.get("device") or {}
    return f"git: {commit}\npackages: {versions}\ndevice: {device}"


def machine_info(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """Where a benchmark ran: platform, CPUs and their load, Python, package versions, CUDA device."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_available": cpus,
        "python": platform.python_version(),
        "packages": package_versions(tuple(dict.fromkeys((*packages, "ctlib")))),
        "device": device_info(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
