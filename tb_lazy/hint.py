"""The "waiting for data" hint: a writer that buffers looks like a dead watcher.

tensorboardX and PyTorch's ``SummaryWriter`` flush every 120 s by default: the run's
event file exists (tensorboardX's is even 0 bytes) but holds no data for two minutes,
and nothing starts. When an event file written during this run still has no data
record ``after`` seconds after we first saw it (default 10, ``TB_LAZY_HINT_AFTER``),
we say once on stderr what is probably happening and how to flush sooner.

The check runs in a thread of its own beside the wait, scanning the log folder at most
once a second (less often when a scan is slow, but at least every 5 s), and ends with the wait.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tb_lazy.detect.detect import Tree
from tb_lazy.detect.rundata import CLOCK_SLACK, RunData
from tb_lazy.messages import note

DEFAULT_AFTER = 10.0  # seconds an event file of this run may stay without data before we say why
INTERVAL = 1.0  # seconds between scans, at least
MAX_INTERVAL = 5.0  # ... and at most
BUFFERING = (
    "the writer probably buffers: tensorboardX's and PyTorch's SummaryWriter write to disk only every "
    "120 s by default; to see curves sooner, create it with flush_secs=5 (or call writer.flush() after logging)"
)


def hint_after() -> float:
    """Seconds before the hint (``TB_LAZY_HINT_AFTER``; a bad or missing value: the default)."""
    try:
        value = float(os.environ.get("TB_LAZY_HINT_AFTER", ""))
    except ValueError:
        return DEFAULT_AFTER
    return value if value >= 0 else DEFAULT_AFTER


class BufferHint:
    """Decides when the hint is due: an event file of this run seen without data for ``after`` s."""

    def __init__(self, logdir: str | os.PathLike[str], *, since: float | None, after: float) -> None:
        self.logdir = Path(logdir)
        self.since = since
        self.after = after
        self._run = RunData(since)
        self._empty_since: dict[str, float] = {}  # event file -> when first seen without data (monotonic)

    def check(self, *, now: float) -> str | None:
        """Scan once; the hint (one line) if it is due at ``now`` (a time.monotonic() value)."""
        files = Tree(os.path.realpath(self.logdir)).files if self.logdir.is_dir() else []
        for path in files:
            if not self._this_run(path) or self._run.check(path):
                self._empty_since.pop(path, None)
                continue
            first = self._empty_since.setdefault(path, now)
            if now - first >= self.after:
                return f"{path} has held no data for {now - first:.0f}s: {BUFFERING}"
        return None

    def _this_run(self, path: str) -> bool:
        """Created or written since the run began (a file left by an earlier run is not ours)."""
        if self.since is None:
            return True
        try:
            return os.stat(path).st_mtime >= self.since - CLOCK_SLACK
        except OSError:
            return False


@contextlib.contextmanager
def while_waiting(
    logdir: str | os.PathLike[str], *, since: float | None, say: Callable[[str], None] = note
) -> Iterator[None]:
    """Run the buffering check beside the ``with`` body (the wait); the hint is said at most once."""
    done = threading.Event()
    hint = BufferHint(logdir, since=since, after=hint_after())

    def loop() -> None:
        while not done.is_set():
            began = time.monotonic()
            message = hint.check(now=began)
            if message and not done.is_set():
                say(message)
                return
            # a slow scan (a large tree) spaces the next one out, but never by more than MAX_INTERVAL:
            # one scan stalled on a busy machine must not put the hint off by minutes
            done.wait(min(MAX_INTERVAL, max(INTERVAL, 20 * (time.monotonic() - began))))

    thread = threading.Thread(target=loop, name="tb_lazy-hint", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()  # not joined: a scan of a large tree in progress must not hold up the launch
