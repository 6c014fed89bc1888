"""Which event files hold data written during this run.

The trigger is not "an event file exists": writers create the file (a header, no data)
when they are constructed, and old runs leave theirs behind. A file counts once it holds
a complete data record that was written since the run began:

- a file first seen with a modification time before the run began is old: what it holds
  is its baseline, and only a data record ending beyond that baseline counts (a resumed
  run appending to it);
- any other file counts at its first data record.

``since=None`` makes every file count at its first data record (``--existing``).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import BinaryIO

from tb_lazy.tfrecord import Progress, is_record_start

CLOCK_SLACK = 0.05  # seconds: file times are coarser than time.time() (a kernel tick)


_HEAD = 64  # bytes: the header record, with its wall time, tells a rewritten file from the old one


@dataclasses.dataclass
class _Seen:
    identity: tuple[int, int]  # device and inode: a file replaced under the same name starts over
    baseline: int  # bytes written before the run began
    progress: Progress
    head: bytes = b""  # the first bytes of an old file, to notice it being rewritten in place


class RunData:
    """Decides, file by file, whether event data was written during this run."""

    def __init__(self, since: float | None) -> None:
        self.since = since
        self._seen: dict[str, _Seen] = {}

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
                return seen.progress.data_after(handle, info.st_size, after=seen.baseline)
        except OSError:  # gone, unreadable, a dangling link, a folder: nothing to count
            return False

    def _track(self, path: str, info: os.stat_result, handle: BinaryIO) -> _Seen:
        identity = (info.st_dev, info.st_ino)
        seen = self._seen.get(path)
        rewritten = seen is not None and (
            seen.identity != identity or info.st_size < seen.progress.offset or not self._same_head(seen, handle)
        )
        if seen is None or rewritten:
            old = self.since is not None and info.st_mtime < self.since - CLOCK_SLACK
            if old and not rewritten:  # what it holds was written before the run: the baseline
                seen = _Seen(identity, info.st_size, Progress(), head=_read_head(handle))
            else:  # new, or replaced or rewritten since we last looked: all of it is this run's
                seen = _Seen(identity, 0, Progress())
            self._seen[path] = seen
        return seen

    @staticmethod
    def _same_head(seen: _Seen, handle: BinaryIO) -> bool:
        return not seen.head or _read_head(handle)[: len(seen.head)] == seen.head

    @staticmethod
    def _resume_point(handle: BinaryIO, baseline: int, size: int) -> Progress:
        """Start reading at the baseline when a record starts there (the usual case);
        otherwise from the beginning, so records are framed correctly."""
        return Progress(baseline if is_record_start(handle, baseline, size) else 0)


def _read_head(handle: BinaryIO) -> bytes:
    handle.seek(0)
    return handle.read(_HEAD)
