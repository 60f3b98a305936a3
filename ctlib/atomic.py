"""Atomic, durable writes: write a temporary sibling, fsync it, rename it over the target, fsync the folder.

A killed process leaves the target absent (never written), old or new, never half of one:

- Files are replaced by ``rename(2)``, atomic on POSIX.
- Folders (a DICOM series) are swapped with Linux ``renameat2(RENAME_EXCHANGE)``, one atomic step; where
  that is missing (other systems, some network file systems) the target is renamed to ``.{name}.<writer>.old``
  and the new folder onto the target. A kill between the two renames leaves the target absent with the old
  folder beside it; the next write of that target, or ``recover(target)``, puts it back.
- Durability (POSIX): the temporary's files and folders are fsynced before the rename, the parent after.

Temporaries are hidden siblings named ``.{name}.w{pid}-{start}-{random}@{host}.tmp`` (readers skip dotfiles).
Each write first sweeps the temporaries of its own target that a killed writer left: one whose writer
(pid, process start time, host) no longer runs on this host. The start time (Linux ``/proc/<pid>/stat``)
keeps a reused pid from passing for the dead writer. A temporary written on another host, or named in the
older ``mkstemp`` form without a writer, is swept once ``STALE_AGE_S`` old, as its writer cannot be asked
(a host is told by its short name, so containers sharing a folder need distinct host names). The writer tag
adds at most ~60 characters to the target's name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STALE_AGE_S = 24 * 3600  # age after which a temporary whose writer cannot be asked (other host) is swept

_WRITER = re.compile(r"w(\d+)-(\d+)-[0-9a-f]{8}@([A-Za-z0-9-]{1,16})")
_TEMP_REST = re.compile(rf"(?:{_WRITER.pattern}\.tmp|[a-z0-9_]{{8}}\.tmp)(?:\..+)?")  # + suffixed variants
_OLD_REST = re.compile(rf"(?:{_WRITER.pattern}\.)?old")
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _host() -> str:
    return (re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host")[:16]


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22); ``None`` where
    unknown, ``-1`` for a zombie (a killed process not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return -1 if fields[0] in (b"Z", b"X") else int(fields[19])


def _writer_tag() -> str:
    pid = os.getpid()
    return f"w{pid}-{max(_start_ticks(pid) or 0, 0)}-{secrets.token_hex(4)}@{_host()}"


def _alive(pid: int, start: int) -> bool:
    """Whether writer ``pid`` (started at ``start`` ticks; 0 when unknown) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        pass
    ticks = _start_ticks(pid)
    return ticks != -1 and not (start and ticks is not None and ticks != start)


def _stale(entry: Path, rest: str) -> bool:
    """Whether temporary ``entry`` (its name after ``.{target}.`` is ``rest``) belongs to no live writer."""
    match = _WRITER.match(rest)
    if match and match.group(3) == _host():
        return not _alive(int(match.group(1)), int(match.group(2)))
    try:
        return time.time() - entry.lstat().st_mtime > STALE_AGE_S
    except OSError:
        return False


def _leftovers(target: Path) -> tuple[list[Path], list[Path]]:
    """Temporaries and ``.old`` folders of ``target`` whose writers are gone (killed or long stale)."""
    prefix = f".{target.name}."
    target_exists = os.path.lexists(target)
    temps, olds = [], []
    try:
        names = [n for n in os.listdir(target.parent) if n.startswith(prefix)]
    except OSError:
        return [], []
    for name in names:
        rest, entry = name[len(prefix) :], target.parent / name
        if _TEMP_REST.fullmatch(rest) and _stale(entry, rest):
            temps.append(entry)
        elif _OLD_REST.fullmatch(rest) and (_stale(entry, rest) or (rest == "old" and not target_exists)):
            olds.append(entry)  # an unnamed .old beside an absent target: the older writer's two-rename gap
    return temps, olds


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def recover(path: str | os.PathLike) -> Path:
    """Restore and tidy ``path`` after a killed writer: put back the old folder a kill between the two
    renames of the fallback folder replacement left beside an absent target, then remove the dead
    writers' temporaries of ``path``. Cheap (one listing of the parent); returns ``path``."""
    target = Path(path)
    temps, olds = _leftovers(target)
    if olds and not os.path.lexists(target):
        newest = max(olds, key=lambda p: p.lstat().st_mtime)
        with contextlib.suppress(OSError):
            os.rename(newest, target)
            _fsync_dir(target.parent)
            olds.remove(newest)
    for entry in temps + olds:
        _remove(entry)
    return target


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder entry; file systems without fsync (EINVAL) are passed over."""
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    _fsync_path(folder)


def _fsync_tree(path: Path) -> None:
    """fsync every file and folder of ``path`` (a file or a folder), deepest first."""
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files + dirs:
                if not os.path.islink(os.path.join(root, name)):
                    _fsync_path(Path(root, name))
    if not path.is_symlink():
        _fsync_path(path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` if unsupported."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):  # no such call or not on this FS
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None)
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def _replace_folder(tmp: Path, target: Path, tag: str) -> None:
    """Put the folder ``tmp`` in place of the existing ``target``: one swap, else two renames."""
    if _exchange(tmp, target):  # tmp now holds the old folder
        _fsync_dir(target.parent)
        _remove(tmp)
        return
    old = target.with_name(f".{target.name}.{tag}.old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    _fsync_dir(target.parent)
    _remove(old)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it onto ``path``.

    Works for files and folders (a DICOM series is written as a folder). On error the temporary
    is removed and ``path`` is untouched. Dead writers' temporaries of ``path`` are swept first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tag = _writer_tag()
    tmp = target.with_name(f".{target.name}.{tag}.tmp")
    try:
        yield tmp
        _fsync_tree(tmp)
        if tmp.is_dir() and not tmp.is_symlink() and os.path.lexists(target):
            _replace_folder(tmp, target, tag)
        else:
            os.replace(tmp, target)
            _fsync_dir(target.parent)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (numpy scalars become Python numbers)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
