"""Atomic, unique writes and the cleanup of what interrupted ones leave behind: the one scheme
for tb_lazy's state files and mlx_train's checkpoints, caches and data files.

A temporary is a hidden sibling of its target, ``.tmp_<target name>_<pid>_<8 hex>``: two
processes writing the same target never share one, and a rename (``os.replace`` for a file)
puts it into place whole. The PID in the name lets the next run tell a leftover of a dead writer
from one a live writer is still filling. PIDs are reused, so a PID alone proves nothing: a live
process counts as the writer only if it started before the leftover was last modified
(`tb_lazy.process.start_wall_time`, on the boot clock where there is one), which any real
writer did.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tb_lazy.process import START_TIME_SLACK, pid_alive, start_wall_time

__all__ = ["Leftover", "atomic_file", "clean_leftovers", "find_leftovers", "is_stale", "remove", "temp_path",
           "writer_gone"]

# .tmp_<name>_<pid>_<token>; older checkpoint saves wrote .tmp_<name>_<pid> (no token)
LEFTOVER_RE = re.compile(r"\.(?P<kind>tmp|old|del)_(?P<name>.+?)_(?P<pid>\d{1,10})(?:_(?P<token>[0-9a-f]{8}))?")


def temp_path(target: Path, *, kind: str = "tmp") -> Path:
    """A fresh hidden sibling of ``target`` that names this process: ``.tmp_NAME_PID_TOKEN``."""
    target = Path(target)
    return target.with_name(f".{kind}_{target.name}_{os.getpid()}_{secrets.token_hex(4)}")


@contextmanager
def atomic_file(target: Path, *, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Write text to ``target`` all at once: a unique temporary, fsynced, then ``os.replace``.

    Readers see the old file or the new one, never a part; an exception removes the temporary.
    A failed write (a full disk) is an ``OSError`` naming ``target``.
    """
    target = Path(target)
    tmp = temp_path(target)
    try:
        with tmp.open("x", encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None and e.errno is not None:     # write() and flush() don't say which file
            raise OSError(e.errno, e.strerror, str(target)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Leftover:
    """A temporary (``tmp``), set-aside (``old``) or being-deleted (``del``) entry of ours, parsed
    from its name."""

    path: Path
    kind: str       # "tmp", "old" or "del"
    name: str       # the target's name
    pid: int        # the writer


def find_leftovers(folder: Path, *, names: re.Pattern[str] | None = None) -> list[Leftover]:
    """Our temporaries in ``folder`` (whose target name fully matches ``names``, if given)."""
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for path in entries:
        m = LEFTOVER_RE.fullmatch(path.name)
        if m and (names is None or names.fullmatch(m["name"])):
            found.append(Leftover(path, m["kind"], m["name"], int(m["pid"])))
    return sorted(found, key=lambda leftover: leftover.path.name)


def writer_gone(pid: int, *, modified: float) -> bool:
    """True when no live process with ``pid`` can be the writer of something last modified
    at ``modified`` (a Unix time): the PID is free, a zombie, or a process started later."""
    if not pid_alive(pid):        # a free PID (or out of range), or a zombie
        return True
    start = start_wall_time(pid)
    return start is not None and start > modified + START_TIME_SLACK   # None: can't tell, keep it


def is_stale(leftover: Leftover, *, max_age: float | None = None) -> bool:
    """Whether ``leftover`` may be removed: its writer is gone, or (with ``max_age``) it was
    untouched for ``max_age`` seconds."""
    try:
        modified = leftover.path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if max_age is not None and time.time() - modified > max_age:
        return True
    return writer_gone(leftover.pid, modified=modified)


def remove(path: Path) -> None:
    """Remove a file or a folder tree; one already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(folder: Path, *, names: re.Pattern[str] | None = None,
                    max_age: float | None = None) -> list[Path]:
    """Remove the stale temporaries of ours in ``folder`` (see `is_stale`); return them."""
    removed = []
    for leftover in find_leftovers(folder, names=names):
        if is_stale(leftover, max_age=max_age):
            remove(leftover.path)
            removed.append(leftover.path)
    return removed
