"""``python -m mlx_train.launch [mlx.launch options] COMMAND...`` — ``mlx.launch`` with an honest
exit status and no orphans.

``mlx.launch`` itself (mlx 0.32) exits 0 even when a rank fails: it stops the other ranks and
prints ``[WARN] Node with rank N exited with code X``. Scripts need the failure, so this wrapper
runs ``mlx.launch`` unchanged (same options: ``-n 2``, ``--backend ring``, ``--hostfile FILE``,
``--env``, ``-p``) and reads those lines: exit status is the first failing rank's own (or
128 + signal for a rank killed by a signal, with one line naming it). The launcher and its local
ranks run in a process group of their own: a SIGTERM or Ctrl-C to this wrapper, or a failure,
ends all of them (SIGTERM, then SIGKILL after a grace period) — no rank is left waiting in a
collective for a peer that is gone. ``mlx.launch`` polls its stdin, so it is given a pipe that
stays open (from /dev/null, as in a background job, it would spin a core). It also leaves two
small files per local rank in the temp folder (the rank's pidfile and hostfile); they are
removed at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["RankExit", "main", "parse_rank_exit"]

GRACE = 10.0        # seconds the ranks get to end after SIGTERM before SIGKILL
LAUNCHER = "from mlx._distributed_utils.launch import main; main()"
_NODE = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|(was killed))")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class RankExit:
    """A rank that ended badly, as ``mlx.launch`` reported it."""

    rank: int
    code: int          # the exit code; negative: killed by that signal

    def describe(self) -> str:
        if self.code < 0:
            try:
                name = signal.Signals(-self.code).name
            except ValueError:
                name = f"signal {-self.code}"
            return f"rank {self.rank} was killed ({name})"
        return f"rank {self.rank} exited with status {self.code}"


def parse_rank_exit(line: str) -> RankExit | None:
    """The failure an ``mlx.launch`` warning line reports, or None for any other line."""
    match = _NODE.search(_ANSI.sub("", line))
    if match is None:
        return None
    rank, code, killed = match.groups()
    return RankExit(int(rank), -signal.SIGTERM if killed else int(code))


def _status(failures: Sequence[RankExit]) -> int:
    """Exit status for the run: the first rank that exited with an error's own status; else the
    first rank killed by a signal (and not by the launcher stopping it) as 128 + signal."""
    for failure in failures:
        if failure.code > 0:
            return failure.code
    return 128 + -failures[0].code


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen, *, grace: float = GRACE) -> None:
    """SIGTERM to the launcher's whole group, then SIGKILL to what is left after ``grace``."""
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _local_ranks(proc: subprocess.Popen) -> dict[int, str]:
    """PID -> MLX_HOSTFILE of the ranks this launcher runs on this machine."""
    found = {}
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return found
    for child in children:
        try:
            env = child.environ()
        except psutil.Error:
            continue
        if "MLX_RANK" in env:
            found[child.pid] = env.get("MLX_HOSTFILE", "")
    return found


def _remove_launcher_files(ranks: dict[int, str], *, since: float) -> None:
    """Remove what ``mlx.launch`` left in the temp folder for these ranks: each one's hostfile,
    and its pidfile (a ``tmp.*`` file written since ``since`` that holds just the rank's PID)."""
    for hostfile in ranks.values():
        if hostfile and Path(hostfile).name.startswith("tmp."):
            Path(hostfile).unlink(missing_ok=True)
    pids = {str(pid) for pid in ranks}
    for path in Path(tempfile.gettempdir()).glob("tmp.*"):
        try:
            if path.stat().st_mtime >= since and path.stat().st_size < 16 and \
                    path.read_text().strip() in pids:
                path.unlink()
        except (OSError, UnicodeDecodeError):
            continue


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mlx.launch`` with ``argv``; returns the run's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0].strip("`"), file=sys.stderr)
        if not argv:
            return 2
    started = time.time() - 1.0      # file times may lag the clock a little
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *argv], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    failures: list[RankExit] = []
    failed = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            failure = parse_rank_exit(line)
            if failure is None:
                sys.stderr.write(line)
                sys.stderr.flush()
            else:
                failures.append(failure)
                failed.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    stopped_by: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopped_by.append(signum)
        failed.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    ranks: dict[int, str] = {}
    try:
        while proc.poll() is None and not failed.is_set():
            ranks.update(_local_ranks(proc))
            failed.wait(0.25 if time.time() - started < 15 else 2.0)   # ranks appear early
        if stopped_by or failures:
            # mlx.launch stops the other ranks itself; this makes sure of it, within a deadline
            deadline = time.monotonic() + GRACE
            while proc.poll() is None and not stopped_by and time.monotonic() < deadline:
                time.sleep(0.1)
            _stop(proc)
        else:
            proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.stdin is not None:
            proc.stdin.close()
    reader.join(timeout=5)
    _remove_launcher_files(ranks, since=started)
    if stopped_by:
        return 128 + stopped_by[0]
    if failures:
        status = _status(failures)
        if not any(f.code > 0 for f in failures):
            print(f"error: {failures[0].describe()}; the other ranks were stopped", file=sys.stderr)
        return status
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


if __name__ == "__main__":
    sys.exit(main())
