"""Process identity and stopping, in one place.

A PID alone names a process only until it ends: PIDs are reused (``pid_max`` is 32768 on
many Linux machines and wraps within an hour of busy work). So tb_lazy remembers a process
as an ``Identity`` — PID, start time and command line — and signals it only while all three
still match. Names are never trusted: a trainer's command line may well contain
``tensorboard``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from typing import Any

import psutil

from tb_lazy.config import MAX_PID

START_TIME_SLACK = 1.0  # seconds two readings of one process's start time may differ by (boot time is rounded)


@dataclasses.dataclass(frozen=True)
class Identity:
    """One particular process: its PID, when it started (seconds since the epoch) and its command line."""

    pid: int
    create_time: float
    cmdline: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time, "cmdline": list(self.cmdline)}

    @classmethod
    def from_json(cls, data: Any) -> Identity:
        """Read one back; ValueError (naming the bad field) for anything of the wrong shape."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        cmdline = data.get("cmdline")
        if not isinstance(cmdline, list) or not cmdline or not all(isinstance(a, str) for a in cmdline):
            raise ValueError("cmdline is not a list of strings")
        pid, create_time = check_pid(data.get("pid")), check_time(data.get("create_time"))
        return cls(pid=pid, create_time=create_time, cmdline=tuple(cmdline))


def valid_pid(pid: object) -> bool:
    """True for an int (not a bool) in the platform's PID range."""
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid <= MAX_PID


def check_pid(value: object, name: str = "pid") -> int:
    if not valid_pid(value):
        raise ValueError(f"{name} is not a process id: {_short(value)}")
    return value  # type: ignore[return-value]


def check_time(value: object, name: str = "create_time") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} is not a time: {_short(value)}")
    return float(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def identify(pid: int) -> Identity | None:
    """The identity of the live process ``pid`` now; None if there is none (or only a zombie)."""
    if not valid_pid(pid):
        return None
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return Identity(pid=pid, create_time=proc.create_time(), cmdline=tuple(proc.cmdline()))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended; a PID out of range never runs)."""
    if not valid_pid(pid):
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def is_running(identity: Identity) -> bool:
    """True while the very process ``identity`` names runs: same PID, start time and command line."""
    now = identify(identity.pid)
    return (
        now is not None
        and abs(now.create_time - identity.create_time) <= START_TIME_SLACK
        and now.cmdline == identity.cmdline
    )


def started_no_later_than(pid: int, when: float) -> bool:
    """True if ``pid`` runs and started by ``when`` (give or take the slack).

    TensorBoard stamps its info file with the time it wrote it: a process started
    after that can't be the one that wrote it, it only got the PID later.
    """
    now = identify(pid)
    return now is not None and now.create_time <= when + 2 * START_TIME_SLACK


def working_folder(pid: int) -> str | None:
    """The current folder of process ``pid`` (None if gone or not ours to look at)."""
    try:
        return psutil.Process(pid).cwd() or None
    except (psutil.Error, OSError):
        return None


def stop_process(pid: int, *, grace: float = 5.0, identity: Identity | None = None) -> bool:
    """Stop ``pid`` and, if it leads one, its process group: SIGTERM, then SIGKILL after ``grace`` s.

    With ``identity``, nothing is signalled unless ``pid`` is still that exact process.
    TensorBoard runs in its own session with its data server in the same group, so the
    group is signalled and waited for. Our own child is reaped. Safe to call twice or on a
    process already gone. Returns True if it was running.
    """
    if not valid_pid(pid):
        return False
    _reap(pid)
    if (identity is not None and not is_running(identity)) or not pid_alive(pid):
        return False
    group = _leads_group(pid)
    _signal(pid, signal.SIGTERM, group=group)
    if _wait_gone(pid, group=group, timeout=grace):
        return True
    if identity is None or is_running(identity) or group:  # a group can't change hands while it has members
        _signal(pid, signal.SIGKILL, group=group)
    _wait_gone(pid, group=group, timeout=grace)
    return True


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except (ProcessLookupError, PermissionError):
        return False


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _group_alive(pgid: int) -> bool:
    """True while any live (non-zombie) process is in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def _wait_gone(pid: int, *, group: bool, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)
        if not pid_alive(pid) and not (group and _group_alive(pid)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it doesn't linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def socket_states(pid: int, port: int) -> set[str] | None:
    """psutil states ('LISTEN', 'SYN_SENT', …) of ``pid``'s TCP sockets on ``port`` (local or remote).

    Empty if there are none or the process is gone; None if we may not look.
    """
    try:
        proc = psutil.Process(pid)
        connections = proc.net_connections(kind="tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
    except psutil.NoSuchProcess:
        return set()
    except (psutil.Error, OSError):
        return None
    return {
        c.status
        for c in connections
        if (c.laddr and c.laddr.port == port) or (c.raddr and c.raddr.port == port)
    }
