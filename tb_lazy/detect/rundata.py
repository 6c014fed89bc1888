"""Which event files hold data written during this run.

The trigger is not "an event file exists": writers create the file (a header, no data)
when they are constructed, and old runs leave theirs behind. A file counts once it holds
a complete data record written since the run began. Each event says when it was written
(its ``wall_time``), which neither ``touch``, ``cp -p`` nor a file copied in can change:
a record counts when that time is not before the run began. For the rare record that
doesn't say, file times decide: a file first seen with a modification time before the
run began is old, and only a record ending beyond what it held then counts.

A file is read once, record by record, as it grows. One replaced under the same name, or
rewritten in place (shrunk and grown again, a new header, or changed without growing:
event files only ever grow), is read again from its start.

``since=None`` makes every file count at its first data record (``--existing``).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from typing import BinaryIO

from tb_lazy.detect.tfrecord import Progress, is_record_start

CLOCK_SLACK = 0.05  # seconds: file times are coarser than time.time() (a kernel tick)
_HEAD = 64  # bytes: the header record, with its wall time, tells a rewritten file from the old one


@dataclasses.dataclass
class _Seen:
    identity: tuple[int, int]  # device and inode: a file replaced under the same name starts over
    baseline: int  # bytes written before the run began (by file times; for records without a wall time)
    progress: Progress
    head: bytes  # the first bytes, to notice the file being rewritten in place
    stamp: tuple[int, int]  # size and modification time (ns) when last read


class RunData:
    """Decides, file by file, whether event data was written during this run."""

    def __init__(self, since: float | None) -> None:
        self.since = since
        self._seen: dict[str, _Seen] = {}
        self._clock = _wall_minus_boot()

    def check(self, path: str) -> bool:
        """True if ``path`` now holds a data record written during this run."""
        try:
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    return False
                seen = self._track(path, info, handle)
                if info.st_size <= seen.baseline:
                    return False
                if seen.baseline and seen.progress.offset == 0:
                    seen.progress = self._resume_point(handle, seen.baseline, info.st_size)
                return seen.progress.data_after(handle, info.st_size, after=seen.baseline, since=self._since())
        except OSError:  # gone, unreadable, a dangling link, a folder: nothing to count
            return False

    def _since(self) -> float | None:
        """When the run began, as the wall clock reads it now: a step of the clock back
        since the wait began moves it back as much (events are stamped by that clock)."""
        if self.since is None:
            return None
        return self.since + min(0.0, _wall_minus_boot() - self._clock)

    def _track(self, path: str, info: os.stat_result, handle: BinaryIO) -> _Seen:
        identity, stamp = (info.st_dev, info.st_ino), (info.st_size, info.st_mtime_ns)
        seen = self._seen.get(path)
        rewritten = seen is not None and (
            seen.identity != identity
            or info.st_size < seen.progress.offset
            or (stamp != seen.stamp and info.st_size <= seen.stamp[0])  # changed without growing
            or not self._same_head(seen, handle)
        )
        if seen is None or rewritten:
            old = self.since is not None and info.st_mtime < self.since - CLOCK_SLACK
            baseline = info.st_size if old and not rewritten else 0  # what it held before the run began
            seen = _Seen(identity, baseline, Progress(), head=_read_head(handle), stamp=stamp)
            self._seen[path] = seen
        else:
            if len(seen.head) < _HEAD:
                seen.head = _read_head(handle)
            seen.stamp = stamp
        return seen

    @staticmethod
    def _same_head(seen: _Seen, handle: BinaryIO) -> bool:
        return _read_head(handle)[: len(seen.head)] == seen.head

    @staticmethod
    def _resume_point(handle: BinaryIO, baseline: int, size: int) -> Progress:
        """Start reading at the baseline when a record starts there (the usual case);
        otherwise from the beginning, so records are framed correctly."""
        return Progress(baseline if is_record_start(handle, baseline, size) else 0)


def _read_head(handle: BinaryIO) -> bytes:
    handle.seek(0)
    return handle.read(_HEAD)


def _wall_minus_boot() -> float:
    """The wall clock less a clock no one steps: its change is how far the wall clock was stepped."""
    steady = time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()
    return time.time() - steady
