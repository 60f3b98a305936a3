"""ctlib.atomic: file and folder replacement, cleanup on error, fsync, the sweep of dead writers' temporaries
and the recovery of a folder left absent by a kill between two renames (issue 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctlib import atomic

ROOT = Path(__file__).resolve().parents[1]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _write_folder(target: Path, files: dict[str, str]) -> None:
    with atomic.atomic_path(target) as tmp:
        tmp.mkdir()
        for name, text in files.items():
            (tmp / name).write_text(text)


def _folder(target: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(target.iterdir())}


def _tag(pid: int, start: int = 0, host: str | None = None) -> str:
    """A writer tag as ``atomic`` names its temporaries (random part fixed)."""
    return f"w{pid}-{start}-0123abcd@{host or atomic._host()}"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_file_replaced_and_nothing_left(tmp_path):
    target = tmp_path / "a" / "state.json"
    atomic.write_json(target, {"v": 1})
    atomic.write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert _hidden(target.parent) == []


def test_temporary_is_a_hidden_sibling(tmp_path):
    """Readers skip dotfiles, so a temporary is never taken for data."""
    with atomic.atomic_path(tmp_path / "ct.nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".ct.nii.gz.") and tmp.name.endswith(".tmp")
        assert not tmp.exists()
        tmp.write_bytes(b"x")


def test_folder_replaced_by_one_swap(tmp_path, monkeypatch):
    """An existing folder is swapped with the new one in one renameat2(RENAME_EXCHANGE) on Linux."""
    swaps = []
    exchange = atomic._exchange
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: swaps.append(exchange(a, b)) or swaps[-1])
    target = tmp_path / "series"
    _write_folder(target, {"a.dcm": "old a", "b.dcm": "old b"})
    _write_folder(target, {"c.dcm": "new c"})
    assert _folder(target) == {"c.dcm": "new c"}
    assert _hidden(tmp_path) == []
    assert swaps == ([True] if sys.platform == "linux" else [False])


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux")
def test_exchange_swaps_two_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("from a")
    (tmp_path / "b").write_text("b was a file")
    assert atomic._exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "x").read_text() == "from a" and (tmp_path / "a").read_text() == "b was a file"


def test_folder_replaced_by_two_renames_where_no_swap(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "series"
    _write_folder(target, {"a.dcm": "old"})
    _write_folder(target, {"b.dcm": "new"})
    assert _folder(target) == {"b.dcm": "new"}
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_exception_leaves_target_and_no_temporary(tmp_path, kind):
    target = tmp_path / ("t.json" if kind == "file" else "series")
    if kind == "file":
        atomic.write_text(target, "old")
    else:
        _write_folder(target, {"a": "old"})
    with pytest.raises(OSError, match="disk full"), atomic.atomic_path(target) as tmp:
        if kind == "file":
            tmp.write_text("half")
        else:
            tmp.mkdir()
            (tmp / "a").write_text("half")
        raise OSError(28, "disk full")
    if kind == "file":
        assert target.read_text() == "old"
    else:
        assert _folder(target) == {"a": "old"}
    assert _hidden(tmp_path) == []


def test_contents_and_folder_are_fsynced(tmp_path, monkeypatch):
    """The temporary (each file of a folder, and the folder) is fsynced before the rename, the parent after;
    before issue 11 nothing was fsynced."""
    events = []
    fsync_path, replace = atomic._fsync_path, os.replace

    def record_fsync(path):
        events.append(("fsync", Path(path).name))
        fsync_path(path)

    def record_replace(a, b):
        events.append(("rename", Path(b).name))
        replace(a, b)

    monkeypatch.setattr(atomic, "_fsync_path", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    atomic.write_text(tmp_path / "f.txt", "x")
    rename = events.index(("rename", "f.txt"))
    assert any(e[0] == "fsync" and e[1].startswith(".f.txt.") for e in events[:rename])
    assert ("fsync", tmp_path.name) in events[rename:]
    events.clear()
    _write_folder(tmp_path / "s", {"one": "1", "two": "2"})
    fsynced = {name for op, name in events if op == "fsync"}
    assert {"one", "two", tmp_path.name} <= fsynced and any(n.startswith(".s.") for n in fsynced)


def test_sweep_removes_dead_writers_temporaries_only(tmp_path):
    """A dead writer's temporaries of the target (plain, suffixed, folder, ``.old``) and a reused pid's are
    swept by the next write; a live writer's, another target's, a fresh one from another host stay."""
    target = tmp_path / "ct.nii.gz"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.05)
        live_start = atomic._start_ticks(live.pid)
        dead = _dead_pid()
        swept = [
            f".ct.nii.gz.{_tag(dead)}.tmp",
            f".ct.nii.gz.{_tag(dead, 123)}.tmp.nii.gz",  # nibabel's suffixed second temporary
            f".ct.nii.gz.{_tag(dead)}.old",
            f".ct.nii.gz.{_tag(os.getpid(), 1)}.tmp",  # this pid, another start time: a reused pid
        ]
        kept = [
            f".ct.nii.gz.{_tag(live.pid, live_start or 0)}.tmp",
            f".ct.nii.gz.{_tag(dead, host='elsewhere')}.tmp",  # fresh, written on another host
            f".ct.nii.json.{_tag(dead)}.tmp",  # another target's
            ".ct.nii.gz.notes",
        ]
        for name in swept + kept:
            (tmp_path / name).write_text("partial")
        (tmp_path / f".ct.nii.gz.{_tag(dead, 7)}.tmp").mkdir()  # a dead writer's half-written series folder
        (tmp_path / f".ct.nii.gz.{_tag(dead, 7)}.tmp" / "slice_0000.dcm").write_text("partial")
        atomic.write_text(target, "new")
        assert target.read_text() == "new"
        assert _hidden(tmp_path) == sorted(kept)
    finally:
        live.kill()
        live.wait()


def test_sweep_by_age_where_the_writer_cannot_be_asked(tmp_path):
    """Temporaries from another host or in the old unnamed ``mkstemp`` form go once STALE_AGE_S old."""
    old = time.time() - atomic.STALE_AGE_S - 60
    names = [f".t.json.{_tag(1, host='elsewhere')}.tmp", ".t.json.ab_cd123.tmp"]
    names.append(".t.json.x9y8z7w6.tmp.nii.gz")  # the old NIfTI writer's suffixed second temporary
    for name in names:
        (tmp_path / name).write_text("partial")
        os.utime(tmp_path / name, (old, old))
    (tmp_path / ".t.json.fresh123.tmp").write_text("a writer of the old form may still be at it")
    atomic.write_text(tmp_path / "t.json", "{}")
    assert _hidden(tmp_path) == [".t.json.fresh123.tmp"]


def test_zombie_writer_counts_as_dead(tmp_path):
    """A killed writer not yet reaped by its parent (a zombie) answers kill(pid, 0); it is still dead."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = atomic._start_ticks(proc.pid)
    proc.send_signal(signal.SIGKILL)
    time.sleep(0.2)
    try:
        (tmp_path / f".t.txt.{_tag(proc.pid, start or 0)}.tmp").write_text("partial")
        atomic.write_text(tmp_path / "t.txt", "x")
        assert _hidden(tmp_path) == []
    finally:
        proc.wait()


_KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from ctlib import atomic
atomic._exchange = lambda a, b: False  # a system without renameat2: two renames
replace, calls = os.replace, []
def replace_then_die(a, b):
    calls.append(b)
    if len(calls) == 2:  # the target has just become .old; die before the new folder is renamed in
        os.kill(os.getpid(), signal.SIGKILL)
    replace(a, b)
os.replace = replace_then_die
with atomic.atomic_path(sys.argv[1]) as tmp:
    tmp.mkdir()
    (tmp / "a.dcm").write_text("new")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX kill")
@pytest.mark.parametrize("then", ["recover", "next write"])
def test_kill_between_two_renames_is_recovered(tmp_path, then):
    """The kill leaves the target absent beside ``.series.<writer>.old``; ``recover`` puts the old folder
    back, the next write writes the new one; no temporary remains either way."""
    target = tmp_path / "series"
    _write_folder(target, {"a.dcm": "old"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_RENAMES, str(target)], env=env, timeout=30)
    assert run.returncode == -signal.SIGKILL
    assert not target.exists() and any(n.endswith(".old") for n in _hidden(tmp_path))
    if then == "recover":
        atomic.recover(target)
        assert _folder(target) == {"a.dcm": "old"}
    else:
        _write_folder(target, {"b.dcm": "new"})
        assert _folder(target) == {"b.dcm": "new"}
    assert _hidden(tmp_path) == []


def test_recover_restores_an_unnamed_old_folder(tmp_path):
    """``.series.old`` beside an absent target is what the writer before issue 11 left when killed
    between its two renames."""
    (tmp_path / ".series.old").mkdir()
    (tmp_path / ".series.old" / "a.dcm").write_text("old")
    atomic.recover(tmp_path / "series")
    assert _folder(tmp_path / "series") == {"a.dcm": "old"} and _hidden(tmp_path) == []
