"""Start a TensorBoard process, wait until it answers HTTP, and stop it again.

Expected outcomes come back as small frozen dataclasses (``Served`` / ``Failed``), not
exceptions, in the manner of TensorBoard's own ``manager.start``.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import importlib.util
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

import psutil

from tb_lazy.address import format_url, local_url_for, loopback_for, tunnel_hint, url_for
from tb_lazy.process import Identity, identify, socket_states, stop_process

__all__ = ["Failed", "Served", "answers", "port_is_free", "start_tensorboard", "tensorboard_command"]

START_TIMEOUT = 60.0  # seconds for a TensorBoard to answer before we give up on it
PORT_TRIES = 5  # launches tried when ports are taken under our feet
STUCK_CONNECT = 0.3  # seconds TensorBoard may hang connecting to its own port before we call the port taken
_BIND_ERROR = "could not bind to port"


@dataclasses.dataclass(frozen=True)
class Served:
    """A TensorBoard that answers HTTP."""

    url: str
    host: str
    port: int
    pid: int
    logdir: str
    reused: bool
    log_file: str | None = None
    local_url: str | None = None  # bound to every interface: the URL for a browser on this machine

    @property
    def tunnel(self) -> str | None:
        """In an SSH session, the command that brings this TensorBoard to the user's machine."""
        return tunnel_hint(self.host, self.port)

    def to_json(self) -> dict:
        """What ``--json`` prints: the line's facts, the local URL and the tunnel command as fields."""
        fields = ("url", "local_url", "host", "port", "pid", "logdir", "reused")
        return {**{name: getattr(self, name) for name in fields}, "tunnel": self.tunnel}

    @classmethod
    def from_json(cls, data: dict) -> Served:
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    def line(self) -> str:
        """The one line printed on stdout once TensorBoard is serving."""
        local = f", local {self.local_url}" if self.local_url else ""
        return f"[tensorboard] {self.url} (pid={self.pid}{', reused' if self.reused else ''}{local})"


@dataclasses.dataclass(frozen=True)
class Failed:
    """TensorBoard could not be started; ``reason`` comes from its own output."""

    reason: str
    log_file: str | None = None


def tensorboard_command() -> list[str] | None:
    """How to run TensorBoard with this interpreter, or None if it isn't installed.

    ``python -m tensorboard`` does not work (no ``__main__``); ``tensorboard.main`` does.
    """
    if importlib.util.find_spec("tensorboard") is not None:
        return [sys.executable, "-m", "tensorboard.main"]
    script = Path(sys.executable).with_name("tensorboard")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return None


def install_hint() -> str:
    return f"{sys.executable} -m pip install tensorboard"


def answers(
    host: str, port: int, *, logdir: Path | None = None, timeout: float = 1.0, path_prefix: str = ""
) -> bool:
    """True if a TensorBoard answers HTTP on ``host:port`` (serving ``logdir``, if given)."""
    location = data_location(host, port, timeout=timeout, path_prefix=path_prefix)
    return location is not None and (logdir is None or location == os.fspath(logdir))


def data_location(host: str, port: int, *, timeout: float = 1.0, path_prefix: str = "") -> str | None:
    """The ``--logdir`` (or ``--logdir_spec``) a TensorBoard on ``host:port`` reports through
    its own ``/data/environment`` route, as it was given; None if nothing answers so."""
    import json
    import urllib.request  # here, not at the top: it pulls in ssl and email (~7 MB idle)

    url = format_url(loopback_for(host), port) + path_prefix + "/data/environment"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                return None
            location = json.loads(response.read(1 << 16)).get("data_location")
    except (OSError, ValueError, AttributeError):  # URLError is an OSError; JSON that isn't an object
        return None
    return location if isinstance(location, str) else None


def port_is_free(host: str, port: int) -> bool:
    """True if we could bind ``host:port`` right now (TensorBoard may still lose the race).

    A port where something on loopback accepts or stalls connections counts as taken too:
    TensorBoard itself first connects to ``localhost:PORT`` and blocks there when the
    listener's queue is full. Raises OSError when ``host`` can't be listened on at all
    (not an address of this machine).
    """
    try:
        with _socket_for(host) as sock:
            sock.bind((_bind_host(host), port))
    except OSError as error:
        if error.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise
    return not _someone_listens_on_loopback(port)


def _someone_listens_on_loopback(port: int, *, timeout: float = 0.3) -> bool:
    """TensorBoard's own port check, but with a deadline: a refusal means free.

    One short connection at most (closed with a reset), so a listener that never
    accepts doesn't get its queue filled by us.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            sock.connect(("127.0.0.1", port))
        except TimeoutError:
            return True  # its queue is full: TensorBoard's check would hang here
        except OSError:
            return False  # refused (or loopback unusable): nothing there
    return True


def _bind_host(host: str) -> str:
    host = host.strip("[]")
    return "0.0.0.0" if host in ("", "*") else host


def _socket_for(host: str) -> socket.socket:
    family = socket.getaddrinfo(_bind_host(host), None, type=socket.SOCK_STREAM)[0][0]
    return socket.socket(family, socket.SOCK_STREAM)


def first_free_port(host: str, preferred: int, *, span: int = 20, skip: Collection[int] = ()) -> int:
    """The first free port from ``preferred`` on (not in ``skip``), else one the OS picks.

    Ports are checked one by one and the search stops at the first free one, so a
    listener that never accepts is knocked on at most once per search.
    """
    for candidate in range(preferred, min(preferred + span, 65536)):
        if candidate not in skip and port_is_free(host, candidate):
            return candidate
    with _socket_for(host) as sock:
        sock.bind((_bind_host(host), 0))
        return sock.getsockname()[1]


OnSpawn = Callable[[Identity, int], None]


def start_tensorboard(
    logdir: Path,
    *,
    host: str,
    port: int,
    log_file: Path,
    timeout: float = START_TIMEOUT,
    on_spawn: OnSpawn | None = None,
    on_drop: Callable[[int], None] | None = None,
) -> Served | Failed:
    """Launch TensorBoard on ``port`` (or a free port near it) and wait until it answers.

    TensorBoard runs in its own session, so a Ctrl-C meant for the pipeline does not
    reach it; its output is appended to ``log_file``. ``on_spawn(identity, port)`` is
    called right after the process exists, before anything is waited for (to record
    it: a TensorBoard must never run unrecorded); if it raises OSError, TensorBoard is
    stopped again and the launch fails. ``on_drop(pid)`` is called for every process
    stopped here. On failure nothing is left running.
    """
    command = tensorboard_command()
    if command is None:
        return Failed(f"TensorBoard is not installed; install it with: {install_hint()}")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tried: list[int] = []
    for _ in range(PORT_TRIES):
        try:
            chosen = first_free_port(host, port, skip=tried)
        except OSError as error:
            return Failed(f"can't listen on {host}: {error.strerror or error}")
        if chosen in tried:
            break
        tried.append(chosen)
        args = [*command, "--logdir", os.fspath(logdir), "--host", host.strip("[]"), "--port", str(chosen)]
        with open(log_file, "ab") as log:
            log.write(f"$ {' '.join(args)}\n".encode())
            log.flush()
            start = log.tell()
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        drop = functools.partial(_drop, proc.pid, on_drop)
        try:
            if on_spawn is not None:
                on_spawn(_identity_of(proc, args), chosen)
        except OSError as error:
            drop()
            where = f" ({error.filename})" if error.filename else ""
            return Failed(
                f"can't record TensorBoard in tb_lazy's state folder: {error.strerror or error}{where}; "
                "stopped it rather than leave it running unrecorded",
                str(log_file),
            )
        except BaseException:
            drop()
            raise
        outcome = _wait_until_serving(
            proc, logdir=logdir, host=host, port=chosen, log_file=log_file, log_start=start, timeout=timeout, drop=drop
        )
        if isinstance(outcome, Served) or _BIND_ERROR not in outcome.reason:
            return outcome
        # the port was taken between our check and TensorBoard's bind: try another
    return Failed(f"no free port found near {port} (tried {', '.join(map(str, tried))})", str(log_file))


def _drop(pid: int, on_drop: Callable[[int], None] | None) -> None:
    """Stop a TensorBoard we started and forget it."""
    stop_process(pid)
    if on_drop is not None:
        on_drop(pid)


def _identity_of(proc: subprocess.Popen[bytes], args: list[str]) -> Identity:
    """The identity of the TensorBoard just started, as later checks will see it.

    Its command line is read back from the system (a console script shows up with its
    interpreter in front); if the exec isn't visible yet, the arguments we ran stand in.
    """
    deadline = time.monotonic() + 1.0
    found = identify(proc.pid)
    while found is not None and tuple(found.cmdline[1 - len(args) :]) != tuple(args[1:]):
        if time.monotonic() > deadline:
            return found  # later checks compare with what the system shows, so record that
        time.sleep(0.01)
        found = identify(proc.pid)
    if found is not None:
        return found
    try:  # already ended (a zombie until reaped): it will be dropped as such
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        create_time = time.time()
    return Identity(pid=proc.pid, create_time=create_time, cmdline=tuple(args))


def _wait_until_serving(
    proc: subprocess.Popen[bytes],
    *,
    logdir: Path,
    host: str,
    port: int,
    log_file: Path,
    log_start: int,
    timeout: float,
    drop: Callable[[], None],
) -> Served | Failed:
    """Wait for ``proc`` to answer on ``port``; HTTP is tried only once it holds the port itself.

    Knocking on a port TensorBoard doesn't hold yet would reach whoever else listens
    there. TensorBoard stuck connecting to its port (its own in-use check, against a
    listener that never accepts) counts as a bind failure, so another port is tried.
    """
    deadline = time.monotonic() + timeout
    stuck_since: float | None = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                drop()
                reason = _tail_from(log_file, log_start) or f"exited with status {proc.returncode}"
                return Failed(f"TensorBoard exited with status {proc.returncode}: {reason}", str(log_file))
            states = socket_states(proc.pid, port)
            if states is not None and "SYN_SENT" in states and "LISTEN" not in states:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > STUCK_CONNECT:
                    drop()
                    return Failed(f"TensorBoard {_BIND_ERROR} {port}: something there never accepts", str(log_file))
            else:
                stuck_since = None
            # ours, not another TensorBoard that took the port in the meantime
            if (states is None or "LISTEN" in states) and answers(host, port, logdir=logdir, timeout=0.5):
                if proc.poll() is None:
                    return Served(
                        url=url_for(host, port),
                        local_url=local_url_for(host, port),
                        host=host,
                        port=port,
                        pid=proc.pid,
                        logdir=os.fspath(logdir),
                        reused=False,
                        log_file=str(log_file),
                    )
            time.sleep(0.05)
        drop()
        return Failed(f"TensorBoard did not answer on port {port} within {timeout:.0f}s", str(log_file))
    except BaseException:
        drop()
        raise


def _tail_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-3:])
