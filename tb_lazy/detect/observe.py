"""The watchdog observer behind detection: inotify where it works, polling where it can't.

Polling is chosen for network file systems (inotify never hears other machines' writes)
and whenever inotify runs out: no instance left, the watch limit reached on the root, or
on any folder below it — watchdog skips those silently, so we check what it watches.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from tb_lazy.messages import warn

# watchdog logs races of its own shutdown (an emitter read after its thread stopped) as errors;
# with no handler configured Python would print them on stderr, in the middle of our one line.
# The application's own logging configuration, if any, still receives them.
logging.getLogger("watchdog").addHandler(logging.NullHandler())

FALLBACK_POLL = 1.0  # seconds between scans when inotify can't be used
LIMIT_ERRORS = (errno.ENOSPC, errno.EMFILE, errno.ENOMEM)

NETWORK_FILE_SYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
                        "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "virtiofs"}


class InotifyShort(Exception):
    """inotify can't watch all it must; ``where`` is the folder it missed."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def file_system_type(path: Path, mounts: Iterable[tuple[str, str]] | None = None) -> str | None:
    """The type of the file system ``path`` lives on (None if unknown).

    ``mounts`` are (mount point, type) pairs; by default the system's, through psutil
    (the mount table on Linux, the same facts on macOS).
    """
    if mounts is None:
        try:
            mounts = [(part.mountpoint, part.fstype) for part in psutil.disk_partitions(all=True)]
        except (OSError, RuntimeError):
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for point, fstype in mounts:
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def make_observer(poll: float | None) -> BaseObserver:
    """inotify (or the platform's native API) unless a polling interval is given."""
    return PollingObserver(timeout=poll) if poll else Observer()


def is_limit(error: OSError) -> bool:
    """True if ``error`` is inotify running out (instances, watches or kernel memory)."""
    return error.errno in LIMIT_ERRORS


def warn_polling(where: str, reason: str) -> None:
    warn(f"can't watch {where} with inotify ({reason}); polling every {FALLBACK_POLL:g}s")


def started(factory: Callable[[float | None], BaseObserver], poll: float | None, where: Path) -> BaseObserver:
    """A started observer; a polling one (after a warning) when inotify has no instance left."""
    try:
        observer = factory(poll)
        observer.start()
    except OSError as error:
        if poll or not is_limit(error):
            raise
        warn_polling(os.fspath(where), error.strerror or str(error))
        observer = factory(FALLBACK_POLL)
        observer.start()
    return observer


def unwatched(observer: BaseObserver, watch: ObservedWatch, folders: Iterable[str]) -> str | None:
    """A folder of ``folders`` that inotify should watch under ``watch`` but doesn't.

    watchdog skips subfolders it can't watch (watch limit reached) without a word. What
    inotify really watches is read from the kernel (``/proc/self/fdinfo`` of this process's
    inotify instances: the device and inode of every watched folder), not from watchdog's
    private state, which differs between its versions. None when all are watched, or when
    the observer isn't inotify (nothing to check).
    """
    if isinstance(observer, PollingObserver):
        return None
    watched = inotify_watched()
    if watched is None:
        return None
    for folder in folders:
        try:
            info = os.stat(folder)
        except OSError:
            continue  # gone again: nothing to watch there
        if stat.S_ISDIR(info.st_mode) and not os.path.islink(folder) and (info.st_dev, info.st_ino) not in watched:
            return folder
    return None


def inotify_watched(proc: Path = Path("/proc/self")) -> set[tuple[int, int]] | None:
    """(device, inode) of every folder watched by this process's inotify instances; None
    where that can't be read (not Linux, or no inotify instance)."""
    try:
        fds = os.listdir(proc / "fd")
    except OSError:
        return None
    watched: set[tuple[int, int]] = set()
    instances = 0
    for fd in fds:
        try:
            if os.readlink(proc / "fd" / fd) != "anon_inode:inotify":
                continue
            text = (proc / "fdinfo" / fd).read_text()
        except OSError:
            continue
        instances += 1
        for line in text.splitlines():
            if line.startswith("inotify "):
                fields = dict(part.split(":", 1) for part in line.split()[1:] if ":" in part)
                try:
                    device = int(fields["sdev"], 16)  # the kernel's encoding: major << 20 | minor
                    watched.add((os.makedev(device >> 20, device & 0xFFFFF), int(fields["ino"], 16)))
                except (KeyError, ValueError):
                    continue
    return watched if instances else None
