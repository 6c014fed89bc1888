"""``python -m mlx_train.launch [mlx.launch options] COMMAND...`` — ``mlx.launch`` with an honest
exit status, one line on failure, and no orphans.

``mlx.launch`` itself (mlx 0.32) exits 0 even when a rank fails: it stops the other ranks and
prints ``[WARN] Node with rank N exited with code X``. Scripts need the failure, so this wrapper
runs ``mlx.launch`` unchanged (same options: ``-n 2``, ``--backend ring``, ``--hostfile FILE``,
``--env``, ``-p``) and reads those lines: the exit status is the failing rank's own, or 128 +
signal for a rank killed by a signal, with one line naming it. When ranks fail one after the
other, the one blamed is the first that failed on its own: a rank killed by a signal (nothing
else kills a rank) before one that exited with an error (a peer losing its connection does),
and never one that ``mlx.launch`` stopped itself ("was killed", or SIGTERM after the first
failure). The survivors' tracebacks (a ``[ring] connection lost`` in a peer) and the ring
backend's own messages go to a log file,
``<temp>/mlx_train-launch.PID.log``, named in that line, not to the terminal.

The launcher and its local ranks run in a process group of their own: a SIGTERM or Ctrl-C to
this wrapper, or a failure, ends all of them (SIGTERM, then SIGKILL after a grace period) — no
rank is left waiting in a collective for a peer that is gone. A SIGKILL to this wrapper (a
scheduler's timeout) can't be caught, so ``mlx.launch`` runs with a guard: a thread reading a
pipe whose other end only this wrapper holds; when the wrapper dies, whatever killed it, the
pipe reads end-of-file and the guard SIGKILLs the group (ranks included) at once. The same on
Linux and macOS. Remote ranks (``ssh -tt``) lose their terminal and get SIGHUP.

``mlx.launch`` polls its stdin, so it is given a pipe that stays open (from /dev/null, as in a
background job, it would spin a core). Its temporary files (a pidfile and a hostfile per local
rank, which it leaves behind) go into a private folder, ``<temp>/mlx_train-launch.PID.XXXX``,
removed at the end, or by the next launch once the wrapper with that PID is gone. The ranks
keep the user's ``TMPDIR``.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tb_lazy.atomic import writer_gone

__all__ = ["RankExit", "blame", "clean_stale_launches", "main", "parse_rank_exit", "ring_port"]

GRACE = 10.0        # seconds the ranks get to end after SIGTERM before SIGKILL
GUARDED = "from mlx_train.launch import _guarded_mlx_launch; _guarded_mlx_launch()"
PREFIX = "mlx_train-launch."
_PRIVATE = re.compile(re.escape(PREFIX) + r"(\d{1,10})\.\w+")
_NODE = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|(was killed))")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WARN = re.compile(r"(?:\x1b\[[0-9;]*m)?\[WARN\] Node with rank")


@dataclass(frozen=True)
class RankExit:
    """A rank that ended badly, as ``mlx.launch`` reported it."""

    rank: int
    code: int              # the exit code; negative: killed by that signal
    stopped: bool = False  # "was killed": mlx.launch stopped it (a consequence, never the cause)

    def describe(self) -> str:
        if self.stopped:
            return f"rank {self.rank} was stopped by mlx.launch"
        if self.code < 0:
            try:
                name = signal.Signals(-self.code).name
            except ValueError:
                name = f"signal {-self.code}"
            return f"rank {self.rank} was killed ({name})"
        return f"rank {self.rank} exited with status {self.code}"

    @property
    def status(self) -> int:
        """This failure as a shell exit status (128 + signal for a signal)."""
        return self.code if self.code > 0 else 128 + (-self.code or signal.SIGTERM)


def parse_rank_exit(line: str) -> RankExit | None:
    """The failure an ``mlx.launch`` warning line reports, or None for any other line."""
    match = _NODE.search(_ANSI.sub("", line))
    if match is None:
        return None
    rank, code, killed = match.groups()
    return RankExit(int(rank), -signal.SIGTERM if killed else int(code), stopped=bool(killed))


def blame(failures: Sequence[RankExit]) -> RankExit:
    """The rank that failed first on its own, of ``failures`` in the order reported.

    ``mlx.launch`` stops the others only after a first failure: a "was killed" rank, or a
    SIGTERM reported after the first failure, is its doing. Of the rest, a rank killed by a
    signal is the cause (nothing in a run kills a rank; a rank whose peer is gone exits with
    an error), else the first that exited with an error."""
    own = [f for i, f in enumerate(failures)
           if not f.stopped and (i == 0 or f.code != -signal.SIGTERM)]
    return next((f for f in own if f.code < 0), None) or \
        next((f for f in own if f.code > 0), None) or failures[0]


class _Relay:
    """mlx.launch's stderr to ours, line by line: its rank-exit warnings are kept (not shown),
    and tracebacks and the ring backend's messages are held back until the end of the run (`held`)."""

    _NOISE = "[ring] "
    _CHAIN = ("During handling of the above exception", "The above exception was the direct cause")

    def __init__(self) -> None:
        self.failures: list[RankExit] = []
        self.failed = threading.Event()
        self.held: list[str] = []
        self._in_traceback = self._after_traceback = False
        self._cut = ""

    def finish(self) -> None:
        """The end of the stream: a rank's line cut by a warning and never ended is fed as it is."""
        if self._cut:
            self.feed("\n")

    def feed(self, line: str) -> None:
        line, self._cut = self._cut + line, ""
        failure = parse_rank_exit(line)
        if failure is not None:
            self.failures.append(failure)
            self.failed.set()
            # mlx.launch prints its warning between two writes of a rank (MLX's C++ writes a
            # message and its newline apart): the rank's text before it is the start of a line
            warning = _WARN.search(line)
            self._cut = line[:warning.start()] if warning else ""
        elif self._holds(line):
            self.held.append(line)
        else:
            sys.stderr.write(line)
            sys.stderr.flush()

    def _holds(self, line: str) -> bool:
        text = _ANSI.sub("", line)
        if text.startswith(self._NOISE):            # MLX's ring backend about a lost peer
            return True
        if text.startswith("Traceback (most recent call last)"):
            self._in_traceback, self._after_traceback = True, False
            return True
        if self._in_traceback:
            if not text[:1].isspace():            # the exception line ends the traceback
                self._in_traceback, self._after_traceback = False, True
            return True
        if self._after_traceback and (not text.strip() or text.startswith(self._CHAIN)):
            return True
        self._after_traceback = False
        return False


def ring_port() -> int:
    """For ``-p`` of local runs: a port p with p and p+1 free on loopback (the ring's two ranks
    listen on both), below the ephemeral range: there the ranks' own outgoing connections could
    take it before a rank binds."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's usual start of the ephemeral range
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, min(low, 32768) - 2)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports")


def clean_stale_launches(base: Path | None = None) -> list[Path]:
    """Remove the private temp folders of earlier launches whose wrapper is gone; return them."""
    base = Path(tempfile.gettempdir() if base is None else base)
    removed = []
    for path in base.glob(PREFIX + "*"):
        match = _PRIVATE.fullmatch(path.name)
        try:
            info = path.lstat()
        except OSError:
            continue
        if match is None or not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid():
            continue
        if writer_gone(int(match[1]), modified=info.st_mtime):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _guarded_mlx_launch() -> None:
    """Run inside the ``mlx.launch`` process (``python -c GUARDED FD PRIVATE ARGS...``): start
    the guard on pipe FD, send the local ranks' pidfiles and hostfiles to folder PRIVATE, then
    run ``mlx.launch ARGS...``."""
    fd, private = int(sys.argv.pop(1)), sys.argv.pop(1)
    # mlx.launch's own lines ("[WARN] Node with rank N exited ...") in one write each: under
    # PYTHONUNBUFFERED, print() writes its pieces one by one, and the ranks' output, which
    # mlx.launch copies to the same stderr from another thread, could land between them
    sys.stderr.reconfigure(line_buffering=True, write_through=False)
    threading.Thread(target=_die_with_wrapper, args=(fd,), daemon=True).start()
    from mlx._distributed_utils import launch as mlx_launch

    _files_into(mlx_launch, private)
    mlx_launch.main()


def _files_into(mlx_launch: Any, private: str) -> None:
    """Make the shell script mlx.launch starts each local rank with create its pidfile and
    hostfile (``$(mktemp)``) in ``private``; the rank itself keeps the user's ``TMPDIR``. (An
    mlx.launch that builds its script otherwise is left as it is: its files go where it puts them.)"""
    cls = getattr(mlx_launch, "RemoteProcess", None)
    make = getattr(cls, "make_launch_script", None)
    if make is None:
        return

    def make_launch_script(rank: int, python: Any, cwd: Any, files: Any, env: Any, command: Any,
                           is_local: bool) -> str:
        script = make(rank, python, cwd, files, env, command, is_local)
        if is_local:
            script = script.replace("$(mktemp)", f"$(TMPDIR={shlex.quote(private)} mktemp)")
        return script

    cls.make_launch_script = staticmethod(make_launch_script)


def _die_with_wrapper(fd: int) -> None:
    """Block until the wrapper's end of pipe ``fd`` closes (the wrapper ended, however), then
    SIGKILL this process group: mlx.launch and its local ranks."""
    while True:
        try:
            if not os.read(fd, 64):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _stop(proc: subprocess.Popen, *, grace: float = GRACE) -> None:
    """SIGTERM to the launcher's whole group, then SIGKILL to what is left after ``grace``."""
    from tb_lazy.process import stop_process

    stop_process(proc.pid, grace=grace)      # the group too, even once mlx.launch itself has ended
    proc.wait()


def _save_held(lines: Sequence[str], base: Path) -> Path | None:
    """Write held-back tracebacks to ``base/mlx_train-launch.PID.log``; its path (None if none)."""
    if not lines:
        return None
    log = base / f"{PREFIX}{os.getpid()}.log"
    try:
        log.write_text("".join(lines), encoding="utf-8")
    except OSError:
        sys.stderr.write("".join(lines))   # nowhere to put them: better shown than lost
        return None
    return log


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mlx.launch`` with ``argv``; returns the run's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0].strip("`"), file=sys.stderr)
        if not argv:
            return 2
    base = Path(tempfile.gettempdir())
    clean_stale_launches(base)
    private = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}.", dir=base))
    guard_read, guard_write = os.pipe()        # our end stays open as long as we live
    relay = _Relay()
    stopped_by: list[int] = []
    try:
        proc = subprocess.Popen([sys.executable, "-c", GUARDED, str(guard_read), str(private), *argv],
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                pass_fds=(guard_read,))
        os.close(guard_read)

        def read_stderr() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                relay.feed(raw.decode(errors="replace"))

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()

        def on_signal(signum: int, _frame: object) -> None:
            stopped_by.append(signum)
            relay.failed.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while proc.poll() is None and not relay.failed.wait(0.5):
                pass
            if stopped_by or relay.failures:
                # mlx.launch stops the other ranks itself; this makes sure of it, within a deadline
                deadline = time.monotonic() + GRACE
                while proc.poll() is None and not stopped_by and time.monotonic() < deadline:
                    time.sleep(0.1)
                _stop(proc)
            else:
                proc.wait()
                if proc.returncode < 0:          # mlx.launch itself was killed: its ranks may not be
                    _stop(proc, grace=1.0)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if proc.stdin is not None:
                proc.stdin.close()
        reader.join(timeout=5)
        relay.finish()
    finally:
        os.close(guard_write)
        shutil.rmtree(private, ignore_errors=True)
    if stopped_by:
        log = _save_held(relay.held, base)
        if log:
            print(f"stopped (the ranks' errors: {log})", file=sys.stderr)
        return 128 + stopped_by[0]
    if relay.failures:
        cause = blame(relay.failures)
        log = _save_held(relay.held, base)
        where = f" (the ranks' errors: {log})" if log else ""
        if cause.code < 0 or cause.stopped:
            print(f"error: {cause.describe()}; the other ranks were stopped{where}", file=sys.stderr)
        elif log:
            print(f"error: {cause.describe()}{where}", file=sys.stderr)
        return cause.status
    sys.stderr.write("".join(relay.held))       # a run that succeeded hides nothing
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


if __name__ == "__main__":
    sys.exit(main())
