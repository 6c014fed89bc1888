"""Process identity and stopping, in one place.

A PID alone names a process only until it ends: PIDs are reused (``pid_max`` is 32768 on
many Linux machines and wraps within an hour of busy work). So tb_lazy remembers a process
as an ``Identity`` — PID, start time and command line — and signals it only while all three
still match, and only while the process belongs to the current user. Names are never
trusted: a trainer's command line may well contain ``tensorboard``.

Start times are compared in a form the wall clock can't move. psutil's ``create_time()``
on Linux is the boot time (``btime`` in ``/proc/stat``, whole seconds, recomputed from the
wall clock) plus the start in clock ticks since boot: a clock step, a suspend and resume
or a VM pause shifts it by seconds. The ticks since boot, with the boot id to notice a
reboot, don't move; that is what is recorded and compared (``boot_start``, ``boot_id``).
On macOS the kernel keeps the start time fixed, so ``create_time`` itself is compared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tb_lazy.config import MAX_PID

START_TIME_SLACK = 1.0  # seconds two wall-clock readings of one start time may differ by (boot time is rounded)
BOOT_START_SLACK = 0.005  # seconds: ticks since boot are exact (1/100 s); this only absorbs float rounding
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclasses.dataclass(frozen=True)
class Identity:
    """One particular process: its PID, when it started and its command line.

    ``create_time`` is seconds since the epoch (shown to people; compared only where
    nothing better is known: records of older versions, macOS); ``boot_start`` is
    seconds since boot and ``boot_id`` names that boot (Linux), which no clock step moves.
    """

    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    boot_start: float | None = None
    boot_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"pid": self.pid, "create_time": self.create_time, "cmdline": list(self.cmdline)}
        if self.boot_start is not None:
            data.update(boot_start=self.boot_start, boot_id=self.boot_id)
        return data

    @classmethod
    def from_json(cls, data: Any) -> Identity:
        """Read one back; ValueError (naming the bad field) for anything of the wrong shape."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        cmdline = data.get("cmdline")
        if not isinstance(cmdline, list) or not cmdline or not all(isinstance(a, str) for a in cmdline):
            raise ValueError("cmdline is not a list of strings")
        pid, create_time = check_pid(data.get("pid")), check_time(data.get("create_time"))
        boot_start, boot_id = check_boot_start(data)
        return cls(pid=pid, create_time=create_time, cmdline=tuple(cmdline), boot_start=boot_start, boot_id=boot_id)

    def same_start(self, other: Identity) -> bool:
        """True if both name the same start: the same boot and tick where both know them,
        else wall-clock start times within the slack (old records, macOS)."""
        if self.boot_start is not None and other.boot_start is not None:
            return self.boot_id == other.boot_id and abs(self.boot_start - other.boot_start) <= BOOT_START_SLACK
        return abs(self.create_time - other.create_time) <= START_TIME_SLACK


def check_boot_start(data: dict[str, Any]) -> tuple[float | None, str | None]:
    """The optional ``boot_start`` and ``boot_id`` of a stored identity (absent in older
    records); ValueError if present but of the wrong shape."""
    if data.get("boot_start") is None:
        return None, None
    boot_id = data.get("boot_id")
    if boot_id is not None and (not isinstance(boot_id, str) or len(boot_id) > 64):
        raise ValueError("boot_id is not a boot id")
    return check_time(data["boot_start"], "boot_start"), boot_id


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


def identify(pid: int, *, anyone: bool = False) -> Identity | None:
    """The identity of the live process ``pid`` now; None if there is none (or only a
    zombie), or if it belongs to another user (unless ``anyone``)."""
    if not valid_pid(pid):
        return None
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE or not (anyone or _is_mine(proc)):
                return None
            return Identity(pid=pid, create_time=proc.create_time(), cmdline=tuple(proc.cmdline()),
                            boot_start=_boot_start(proc), boot_id=boot_id())
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return None


def _is_mine(proc: psutil.Process) -> bool:
    """True if ``proc`` runs as the current user (real and effective user)."""
    uids = proc.uids()
    return uids.real == os.getuid() and uids.effective == os.geteuid()


def is_mine(pid: int) -> bool:
    """True while ``pid`` runs as the current user."""
    try:
        return _is_mine(psutil.Process(pid))
    except (psutil.Error, OSError):
        return False


def _boot_start(proc: psutil.Process) -> float | None:
    """When ``proc`` started, in seconds since boot (Linux: its start ticks); None elsewhere.

    psutil 7 gives the ticks directly; older versions are read from ``/proc`` here.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        return float(proc._proc.create_time(monotonic=True))  # noqa: SLF001 (psutil >= 7)
    except (TypeError, AttributeError):
        pass
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


@functools.lru_cache(maxsize=1)
def boot_id() -> str | None:
    """This boot's id (Linux); a process recorded under another boot id is gone."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def start_wall_time(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch as the wall clock reads now.

    On Linux: now minus the time since its start tick, both on the boot clock, so the
    integer, drifting ``btime`` plays no part; elsewhere psutil's ``create_time``.
    """
    now = identify(pid, anyone=True)
    if now is None:
        return None
    if now.boot_start is not None and hasattr(time, "CLOCK_BOOTTIME"):
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - now.boot_start)
    return now.create_time


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
    """True while the very process ``identity`` names runs as the current user: same PID,
    start (on the boot clock where known) and command line."""
    now = identify(identity.pid)
    return now is not None and now.same_start(identity) and now.cmdline == identity.cmdline


def started_no_later_than(pid: int, when: float) -> bool:
    """True if ``pid`` runs as the current user and started by ``when`` (give or take the slack).

    TensorBoard stamps its info file with the time it wrote it: a process started
    after that can't be the one that wrote it, it only got the PID later.
    """
    start = start_wall_time(pid) if is_mine(pid) else None
    return start is not None and start <= when + 2 * START_TIME_SLACK


def is_stopped(pid: int) -> bool:
    """True while ``pid`` is stopped (SIGSTOP, or halted by a debugger): it can't answer."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except (psutil.Error, OSError):
        return False


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
    group is signalled and waited for; without ``identity``, so is a group whose leader
    ``pid`` has already ended (its number stays the group's while members live). Our own
    child is reaped. Safe to call twice or on a process already gone. Returns True if
    something was running.
    """
    if not valid_pid(pid):
        return False
    _reap(pid)
    if identity is not None and not is_running(identity):
        return False
    if pid_alive(pid):
        group = _leads_group(pid)
    elif identity is None and _group_alive(pid):
        group = True              # members left after their leader ended
    else:
        return False
    if not _signal(pid, signal.SIGTERM, group=group):
        return False  # not ours to signal: say so at once rather than wait for it to end
    _signal(pid, signal.SIGCONT, group=group)  # a stopped (SIGSTOP) process handles the SIGTERM now
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


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> bool:
    """Send ``sig``; False if we may not (another user's process)."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        return False
    return True


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
