"""Child program of tests/test_kill_writers.py: a zygote that forks writers for the test to SIGKILL.

Started once (imports paid once), it reads lines ``<kind> <target> <first version> <fallback 0|1>`` from
stdin. For each it forks a writer that rewrites ``<target>`` with versions n, n+1, ... for ever, prints
the writer's pid, waits for the test to kill it and prints ``reaped``. ``content``/``nifti_volume`` give
what version n holds, for the test to check against.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ctlib import atomic
from ctlib.io import nifti
from ctlib.io.volume import Volume

FOLDER_FILES = 5
NIFTI_SHAPE = (16, 48, 48)  # (z, y, x), 72 KB int16


def json_object(n: int) -> dict:
    """Version ``n`` of the JSON target (about 100 KB, so a kill often lands mid-write)."""
    return {"version": n, "data": [n] * 20000}


def folder_file(n: int, i: int) -> str:
    """File ``i`` of version ``n`` of the folder target (about 60 KB each)."""
    return f"{n}:{i}\n" * 8000


def nifti_volume(n: int) -> Volume:
    """Version ``n`` of the NIfTI target: a ramp offset by n (integers, so int16 and exact)."""
    ramp = np.arange(np.prod(NIFTI_SHAPE), dtype=np.float64).reshape(NIFTI_SHAPE) % 1000
    return Volume(ramp + n, spacing=(2.0, 1.0, 1.0))


def write(kind: str, target: Path, n: int) -> None:
    if kind == "json":
        atomic.write_json(target, json_object(n))
    elif kind == "folder":
        with atomic.atomic_path(target) as tmp:
            tmp.mkdir()
            for i in range(FOLDER_FILES):
                (tmp / f"part_{i}.txt").write_text(folder_file(n, i))
    elif kind == "nifti":
        nifti.write_nifti(nifti_volume(n), target)
    else:
        raise ValueError(kind)


def _writer(kind: str, target: Path, n: int, fallback: bool) -> None:
    if fallback:  # the two-rename folder replacement of systems without renameat2
        atomic._exchange = lambda a, b: False
    while True:
        write(kind, target, n)
        n += 1


def main() -> None:
    for line in sys.stdin:
        kind, target, first, fallback = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                _writer(kind, Path(target), int(first), fallback == "1")
            finally:
                os._exit(1)
        print(pid, flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)


if __name__ == "__main__":
    main()
