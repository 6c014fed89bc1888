"""TensorBoard logging with tensorboardX, created lazily.

tensorboardX creates the event file when a SummaryWriter is constructed, so the writer is
built at the first log step: a run that fails before logging leaves no event file at all.
(tb_lazy starts TensorBoard only once a file gains data, so a header-only file would start
nothing either.) ``flush()`` right after ``add_scalar`` can run before tensorboardX's writer
thread has taken the scalar; with ``flush_secs=1`` that thread flushes it within a second, so
the first scalars reach the disk — and TensorBoard comes up — without waiting for the next log step.

tensorboardX names event files ``events.out.tfevents.<unix seconds>.<hostname>``, so two writers
started in the same second in one folder would write one file and lose a run's scalars. Ours
adds ``.<pid>.<random hex>`` (`event_file_suffix`): every writer has a file of its own. (Two runs
in one folder still show as one TensorBoard run, mixed; give each run its own folder.)"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

__all__ = ["TBLogger", "autostart_tensorboard", "event_file_suffix"]


def event_file_suffix() -> str:
    """``.<pid>.<8 random hex>``: appended to the event file's name, unique per writer."""
    return f".{os.getpid()}.{secrets.token_hex(4)}"


class TBLogger:
    """Scalars and text into ``logdir`` (nothing at all when ``logdir`` is None)."""

    def __init__(self, logdir: str | Path | None):
        self.logdir = None if logdir is None else Path(logdir)
        self._writer: Any = None

    def _get(self) -> Any:
        if self._writer is None and self.logdir is not None:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(logdir=str(self.logdir), flush_secs=1,
                                         filename_suffix=event_file_suffix())
        return self._writer

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``values`` (tag -> number) at ``step`` and flush."""
        writer = self._get()
        if writer is None:
            return
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
        writer.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        """Log a text sample at ``step``."""
        writer = self._get()
        if writer is not None:
            writer.add_text(tag, text, step)
            writer.flush()

    def close(self) -> None:
        """Flush and close the writer; safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TBLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def autostart_tensorboard(logdir: str | Path | None) -> Any:
    """``tb_lazy.autostart(logdir)`` when logging and TB_AUTO is not "0"; else None.

    Returns the handle (stop it at the end). Without tb_lazy installed, nothing happens and
    nothing is printed.
    """
    if logdir is None:  # (TB_AUTO and the rank guard are tb_lazy.autostart's to honour)
        return None
    try:
        import tb_lazy
        autostart = tb_lazy.autostart
    except (ImportError, AttributeError):
        return None
    try:
        return autostart(os.fspath(logdir))
    except Exception as e:  # TensorBoard is a convenience: never let it stop training
        print(f"[warn] TensorBoard auto-start failed: {e}", file=sys.stderr)
        return None
