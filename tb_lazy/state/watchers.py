"""Watchers of one folder, or of nested folders, agree on who launches TensorBoard.

Each watcher announces itself with a small file it keeps locked while it runs (a watcher
that dies drops the lock however it dies); the watcher of the wider folder, or the
earlier one of the same folder, launches; reuse-or-launch happens under one lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from tb_lazy.atomic import temp_path
from tb_lazy.state.statefiles import private_dir, remove_old_tmp, state_dir


def watchers_dir() -> Path:
    return state_dir() / "watchers"


@contextlib.contextmanager
def watching(logdir: Path) -> Iterator[int]:
    """Announce, while the block runs, that this process watches ``logdir``; yields when
    it began (for ``covering_watch``).

    The announcement is a small JSON file that this process keeps locked: a watcher that
    dies, however it dies, drops the lock, so others can tell a live watcher from a stale file.
    """
    folder = private_dir("watchers")
    remove_old_tmp(folder)
    path = folder / f"{os.getpid()}.json"
    ready_marker(folder).unlink(missing_ok=True)  # a dead watcher's of the same PID
    tmp = temp_path(path)
    entry = {"pid": os.getpid(), "logdir": os.fspath(logdir), "since": time.time_ns()}
    with open(tmp, "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # the lock is on the file itself: it moves with the rename
        try:
            handle.write(json.dumps(entry))
            handle.flush()
            with _folder_lock(folder):  # not while a reader removes a stale file of the same name
                os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        try:
            yield entry["since"]
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            ready_marker(folder).unlink(missing_ok=True)


def ready_marker(folder: Path | None = None) -> Path:
    """``<pid>.ready`` beside this watcher's announcement: made once its watches are placed
    (`mark_ready`), so that whoever starts a watcher can wait for that instead of guessing."""
    return (folder or watchers_dir()) / f"{os.getpid()}.ready"


def mark_ready() -> None:
    """This watcher now sees any data written (its watches are placed)."""
    ready_marker().touch()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Held while an announcement is put in place or a stale one removed: a stale file is
    removed only while its name still holds the very file found unlocked, never a fresh
    announcement that a new watcher (perhaps given the same PID) just put there."""
    with open(folder / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _live_watchers() -> list[dict]:
    """Announcements of this user's watchers still running (stale ones are removed on the way)."""
    found = []
    folder = watchers_dir()
    remove_old_tmp(folder)
    for path in sorted(folder.glob("*.json")):
        try:
            with open(path, encoding="utf-8") as handle:
                info = os.fstat(handle.fileno())
                if info.st_uid != os.getuid():
                    continue  # another user's: never trusted
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    found.append(json.loads(handle.read()))  # locked: its watcher is alive
                    continue
                with _folder_lock(folder):  # nobody holds it: a watcher killed without cleanup
                    now = os.stat(path)
                    if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
                        path.unlink()
                        path.with_suffix(".ready").unlink(missing_ok=True)  # its readiness mark too
        except (OSError, ValueError, RecursionError):
            continue
    return found


def covering_watch(logdir: Path, *, since: int) -> str | None:
    """The log folder of another live watcher that will start TensorBoard for ``logdir``.

    A watcher on a parent folder sees every event file we see, so it starts TensorBoard
    (on the wider folder, serving us too) instead of two side by side; between two
    watchers of the same folder, the one that began watching first does.
    """
    logdir = Path(os.path.realpath(logdir))
    for entry in _live_watchers():
        try:
            pid, theirs, their_since = int(entry["pid"]), Path(os.path.realpath(entry["logdir"])), int(entry["since"])
        except (KeyError, TypeError, ValueError):
            continue
        if pid == os.getpid():
            continue
        if theirs in logdir.parents or (theirs == logdir and (their_since, pid) < (since, os.getpid())):
            return os.fspath(theirs)
    return None


@contextlib.contextmanager
def launch_lock(timeout: float = 120.0) -> Iterator[None]:
    """Serialise reuse-or-launch, so two watchers triggered together start one TensorBoard."""
    folder = private_dir()
    deadline = time.monotonic() + timeout
    with open(folder / "launch.lock", "a+b") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
