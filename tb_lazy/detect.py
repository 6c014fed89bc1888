"""Wait for the first TensorBoard event file under a folder that may not exist yet.

A watchdog observer does the waiting. While the log folder is missing we watch its
nearest existing ancestor (not recursively: that could be a home folder) and move
down as the folders on the way appear; once the log folder exists we watch it
recursively. Every time a watch is placed we scan, place it, and scan again, so a
file created in between is never missed.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from tb_lazy.messages import note, warn

SLICE = 0.2  # seconds between checks of stop conditions while waiting
_FALLBACK_POLL = 1.0  # seconds between scans when inotify can't be used
_LIMIT_ERRORS = (errno.ENOSPC, errno.EMFILE, errno.ENOMEM)
# Only the events the handler uses. Without a filter inotify also reports every folder
# opened and closed, and our own scan of a large tree overflows its queue.
_EVENTS = [FileCreatedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent, DirDeletedEvent]


def is_event_file(name: str | os.PathLike[str]) -> bool:
    """TensorBoard's own rule: the file name contains ``tfevents``."""
    return "tfevents" in os.path.basename(os.fspath(name))


def find_event_file(root: Path) -> Path | None:
    """The first event file found at any depth under ``root`` (None if none or no root)."""
    stack = [os.fspath(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif is_event_file(entry.name) and entry.is_file():
                            return Path(entry.path)
                    except OSError:
                        continue
        except OSError:  # gone, not a folder, or unreadable: nothing to find there
            continue
    return None


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it is a folder, else its nearest ancestor that exists."""
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


class _Handler(FileSystemEventHandler):
    """Turns file-system events into two signals: an event file seen, or the layout changed."""

    def __init__(self, logdir: Path, wake: threading.Event) -> None:
        self._logdir = os.fspath(logdir)
        self._wake = wake
        self.found: Path | None = None
        self.moved_on = False  # a folder on the way to (or the log folder itself) appeared or went

    def _saw(self, path: str | bytes, is_directory: bool) -> None:
        path = os.fsdecode(path)
        if not is_directory and is_event_file(path):
            if path == self._logdir or path.startswith(self._logdir + os.sep):
                self.found = Path(path)
                self._wake.set()
        elif is_directory and (self._logdir + os.sep).startswith(path.rstrip(os.sep) + os.sep):
            self.moved_on = True
            self._wake.set()

    def on_created(self, event: FileSystemEvent) -> None:
        self._saw(event.src_path, event.is_directory)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._saw(event.dest_path, event.is_directory)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if os.fsdecode(event.src_path) == self._logdir:
            self.moved_on = True
            self._wake.set()


NETWORK_FILE_SYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
                        "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "virtiofs"}


def file_system_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the file system ``path`` lives on, from ``/proc/mounts`` (None if unknown)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def make_observer(poll: float | None) -> BaseObserver:
    """inotify (or the platform's native API) unless a polling interval is given."""
    return PollingObserver(timeout=poll) if poll else Observer()


def _fall_back(error: OSError, where: Path, poll: float | None) -> bool:
    """True (after one warning) if ``error`` is an inotify limit we can poll around."""
    if poll or error.errno not in _LIMIT_ERRORS:
        return False
    warn(f"can't watch {where} with inotify ({error.strerror or error}); polling every {_FALLBACK_POLL:g}s")
    return True


def _started(factory: Callable[[float | None], BaseObserver], poll: float | None, where: Path) -> BaseObserver:
    """A started observer; a polling one when inotify's instance limit is reached."""
    try:
        observer = factory(poll)
        observer.start()
    except OSError as error:
        if not _fall_back(error, where, poll):
            raise
        observer = factory(_FALLBACK_POLL)
        observer.start()
    return observer


def wait_for_event_file(
    logdir: Path,
    *,
    poll: float | None = None,
    timeout: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    observer_factory: Callable[[float | None], BaseObserver] = make_observer,
) -> Path | None:
    """Block until an event file exists under ``logdir``; return its path.

    Returns None when ``timeout`` seconds pass or ``should_stop()`` turns true first
    (checked several times a second; a last scan then catches a file the events didn't
    bring yet). On a network file system, or if inotify can't be set up (watch or
    instance limit reached), polls once a second instead.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    if poll is None and (kind := file_system_type(nearest_existing(logdir))) in NETWORK_FILE_SYSTEMS:
        note(f"{logdir} is on {kind}, where inotify misses other machines' writes; polling every {_FALLBACK_POLL:g}s")
        poll = _FALLBACK_POLL
    wake = threading.Event()
    handler = _Handler(logdir, wake)
    observer = _started(observer_factory, poll, logdir)
    try:
        while True:
            anchor = nearest_existing(logdir)
            recursive = anchor == logdir
            if recursive and (found := find_event_file(logdir)):
                return found
            try:
                watch = observer.schedule(handler, os.fspath(anchor), recursive=recursive, event_filter=_EVENTS)
            except OSError as error:
                if not _fall_back(error, anchor, poll):
                    raise
                observer.stop()
                observer.join(timeout=5)
                poll = _FALLBACK_POLL
                observer = _started(observer_factory, poll, logdir)
                continue
            handler.moved_on = False
            if recursive and (found := find_event_file(logdir)):
                return found
            if not recursive and nearest_existing(logdir) != anchor:
                observer.unschedule(watch)
                continue
            while not (handler.found or handler.moved_on):
                if should_stop():  # one last look: a run that logged just before ending still counts
                    return find_event_file(logdir)
                remaining = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
                if remaining <= 0:
                    return None
                wake.wait(remaining)
                wake.clear()
            if handler.found:
                return handler.found
            observer.unschedule(watch)
    finally:
        observer.stop()
        observer.join(timeout=5)
