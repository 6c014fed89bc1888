"""``autostart``: lazy TensorBoard from inside a training script.

The watching runs in a separate watcher process (``python -m tb_lazy watch DIR
--exit-with <this pid> --json``), not in the training thread: the training loop pays
for one process start and nothing per step. The watcher ends on its own within a
second of this process ending, so nothing is orphaned even after a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from types import TracebackType

from tb_lazy.config import UsageError, other_rank, parse_bool
from tb_lazy.launch import START_TIMEOUT, Served, tensorboard_command
from tb_lazy.messages import tunnel


def _flag(name: str, default: bool) -> bool:
    """A yes/no variable; a bad value keeps the default (the watcher reports it in one line)."""
    value = os.environ.get(name, "").strip()
    try:
        return parse_bool(name, value) if value else default
    except UsageError:
        return default


class Board:
    """Handle on a lazily started TensorBoard: ``url`` is None until it serves."""

    def __init__(self, logdir: str | os.PathLike[str], command: list[str] | None, *, announce_reuse: bool) -> None:
        self.logdir = os.fspath(logdir)
        self.info: dict | None = None
        self._served = threading.Event()
        self._announce_reuse = announce_reuse
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        if command is not None:
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            self._reader = threading.Thread(target=self._read, name="tb_lazy-autostart", daemon=True)
            self._reader.start()
        else:
            self._served.set()  # nothing will ever be served: wait() returns at once

    @property
    def url(self) -> str | None:
        """TensorBoard's URL once it answers; None before, or if nothing was logged."""
        return None if self.info is None else self.info["url"]

    @property
    def reused(self) -> bool:
        return bool(self.info and self.info.get("reused"))

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                info = json.loads(line)
            except ValueError:
                continue
            self.info = info
            if not info.get("reused") or self._announce_reuse:
                served = Served.from_json(info)
                print(served.line(), flush=True)
                if info.get("tunnel"):
                    tunnel(info["tunnel"], served.port)
            self._served.set()
        self._proc.wait()
        self._served.set()

    def wait(self, timeout: float | None = None) -> str | None:
        """Block until TensorBoard serves or the watcher ends (at most ``timeout`` s); return ``url``."""
        self._served.wait(timeout)
        return self.url

    def stop(self) -> None:
        """Stop watching. TensorBoard itself follows ``keep``/``TB_KEEP``; safe to call twice.

        A watcher that already saw an event file finishes starting TensorBoard first.
        """
        if self._proc is not None and self.info is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)  # a watcher that has served is about to end by itself
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # it finishes a launch in progress, then ends
            try:
                self._proc.wait(timeout=START_TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> Board:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def autostart(
    logdir: str | os.PathLike[str],
    *,
    host: str | None = None,
    port: int | None = None,
    keep: bool | None = None,
    poll: float | None = None,
    existing: bool = False,
    quiet_reuse: bool | None = None,
) -> Board:
    """Start TensorBoard on ``logdir`` as soon as this process writes event data there.

    Data counts once written since this process started (event files of earlier runs and
    header-only files don't); ``existing=True`` makes data already there count too.

    Returns at once. Honours ``TB_AUTO`` (0: do nothing), ``TB_HOST``, ``TB_PORT``,
    ``TB_KEEP`` and the rank guard (only rank 0 watches). The URL line is printed when
    TensorBoard serves; a reused one is announced unless ``quiet_reuse`` (default:
    ``TB_LAZY_QUIET_REUSE``, set by the pipelines, whose own watcher already announced it).
    """
    if not _flag("TB_AUTO", True) or other_rank():
        return Board(logdir, None, announce_reuse=False)
    if quiet_reuse is None:
        quiet_reuse = _flag("TB_LAZY_QUIET_REUSE", False)
    if quiet_reuse and tensorboard_command() is None:
        return Board(logdir, None, announce_reuse=False)  # the pipeline's watcher already warned
    command = watch_command(logdir, host=host, port=port, poll=poll, keep=keep, existing=existing)
    return Board(logdir, command, announce_reuse=not quiet_reuse)


def watch_command(
    logdir: str | os.PathLike[str],
    *,
    host: str | None = None,
    port: int | None = None,
    poll: float | None = None,
    keep: bool | None = None,
    existing: bool = False,
) -> list[str]:
    """The watcher process for this process's data under ``logdir``: ``tb_lazy watch`` with
    ``--exit-with`` this process and ``--json`` (one JSON line once served); options left as
    None are the watcher's to resolve from ``TB_*``."""
    command = [sys.executable, "-m", "tb_lazy", "watch", os.fspath(logdir), "--exit-with", str(os.getpid()), "--json"]
    for flag, value in (("--host", host), ("--port", port), ("--poll", poll)):
        if value is not None:
            command += [flag, str(value)]
    if keep is not None:
        command.append("--keep" if keep else "--no-keep")
    if existing:
        command.append("--existing")
    return command
