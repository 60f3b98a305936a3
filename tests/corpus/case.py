"""One corpus case: what to run, what must happen, and the registry the category modules fill.

Expected outcomes (issue 11):

- ``loads``: exit status 0, nothing on stderr, the first stdout line strict JSON (no NaN) holding the
  case's ``info`` values; where the case names an ``array`` (.npz), the volume read in-process equals it
  voxel for voxel.
- ``refused``: exit status 2 and exactly one stderr line that contains every string of ``names`` (the
  offending file's name, or the argument) and one of ``keywords`` (the problem; case-insensitive).

Both: no ``Traceback`` on stderr, wall time under ``timeout_s``, peak RSS under ``max_rss_mb``, CPU time
under ``max_cpu_s`` where set (cheap CLI refusals: under a second, however loaded the machine is).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

Expected = Literal["loads", "refused"]
CATEGORIES = ("dicom", "nifti", "openkbp", "checkpoint", "cli", "params")
CTLIB = "@CTLIB@"  # argv[0]: the ctlib console script of this interpreter
PYTHON = "@PYTHON@"  # argv[0]: this interpreter
ROOT = "@ROOT@"  # the corpus root, for arguments that must be absolute (notebook paths)
LIGHT_RSS_MB = 400.0  # a child that imports numpy, pydicom and nibabel but not torch
TORCH_RSS_MB = 1000.0  # a child that imports torch


@dataclasses.dataclass
class Case:
    """A corpus case. Paths in ``argv`` are relative to the corpus root (the child's working folder)."""

    id: str
    category: str
    argv: list[str]
    expected: Expected
    note: str = ""
    names: list[str] = dataclasses.field(default_factory=list)
    keywords: list[str] = dataclasses.field(default_factory=list)
    forbid: list[str] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped: list[str] | None = None
    array: str | None = None  # expected/<id>.npz: the exact volume, key 'hu'
    array_read: list[Any] | None = None  # [path, series_uid or None] read in-process for ``array``
    params: dict[str, Any] | None = None  # a `ctlib run` case: parameters expected in params.json
    absent: list[str] = dataclasses.field(default_factory=list)
    timeout_s: float = 30.0
    max_rss_mb: float = LIGHT_RSS_MB
    max_cpu_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest entry (``cases.json``)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Ctx:
    """Where a builder writes: the corpus ``root`` and the case's own empty folder ``dir``."""

    id: str
    root: Path
    dir: Path

    def rel(self, path: Path) -> str:
        """``path`` relative to the corpus root (the children run there)."""
        return str(Path(path).relative_to(self.root))

    def expect_array(self, array: Any) -> str:
        """Save the exact expected volume ``(z, y, x)`` HU in ``expected/<id>.npz``; its relative path."""
        import numpy as np

        path = self.root / "expected" / f"{self.id}.npz"
        path.parent.mkdir(exist_ok=True)
        np.savez_compressed(path, hu=np.asarray(array, dtype=np.float32))
        return self.rel(path)


Builder = Callable[[Ctx], Case]
REGISTRY: dict[str, tuple[str, Builder]] = {}


def case(category: str) -> Callable[[Builder], Builder]:
    """Register a builder ``case_<name>(ctx) -> Case``; its id is ``<category>-<name>``."""
    assert category in CATEGORIES, category

    def register(fn: Builder) -> Builder:
        case_id = f"{category}-{fn.__name__.removeprefix('case_')}"
        assert case_id not in REGISTRY, case_id
        REGISTRY[case_id] = (category, fn)
        return fn

    return register


def refused(argv: list[str], names: list[str], keywords: list[str], note: str = "", **kw: Any) -> Case:
    """A case that must end with exit 2 and one stderr line naming ``names`` and one of ``keywords``."""
    return Case(
        id="", category="", argv=argv, expected="refused", names=names, keywords=keywords, note=note, **kw
    )


def loads(argv: list[str], info: dict[str, Any] | None = None, note: str = "", **kw: Any) -> Case:
    """A case that must end with exit 0, a clean stderr and the JSON facts ``info``."""
    return Case(id="", category="", argv=argv, expected="loads", info=info or {}, note=note, **kw)


def info(path: str | Path, *extra: str) -> list[str]:
    """``ctlib info <path>`` argv."""
    return [CTLIB, "info", str(path), *extra]
