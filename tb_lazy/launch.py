"""Start a TensorBoard process, wait until it answers HTTP, and stop it again.

Expected outcomes come back as small frozen dataclasses (``Served`` / ``Failed``), not
exceptions, in the manner of TensorBoard's own ``manager.start``.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT = 60.0  # seconds for a TensorBoard to answer before we give up on it
PORT_TRIES = 5  # launches tried when ports are taken under our feet
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

    def line(self) -> str:
        """The one line printed on stdout once TensorBoard is serving."""
        return f"[tensorboard] {self.url} (pid={self.pid}{', reused' if self.reused else ''})"


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


def format_url(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def probe_host(host: str) -> str:
    """Where to knock to reach a TensorBoard bound to ``host`` from this machine."""
    host = host.strip("[]")
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def answers(host: str, port: int, *, logdir: Path | None = None, timeout: float = 1.0) -> bool:
    """True if a TensorBoard answers HTTP on ``host:port`` (serving ``logdir``, if given)."""
    import json
    import urllib.request  # here, not at the top: it pulls in ssl and email (~7 MB idle)

    url = format_url(probe_host(host), port) + "/data/environment"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                return False
            return logdir is None or json.loads(response.read()).get("data_location") == os.fspath(logdir)
    except (OSError, ValueError):  # URLError is an OSError
        return False


def port_is_free(host: str, port: int) -> bool:
    """True if we could bind ``host:port`` right now (TensorBoard may still lose the race).

    Raises OSError when ``host`` can't be listened on at all (not an address of this machine).
    """
    try:
        with _socket_for(host) as sock:
            sock.bind((_bind_host(host), port))
    except OSError as error:
        if error.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise
    return True


def _bind_host(host: str) -> str:
    host = host.strip("[]")
    return "0.0.0.0" if host in ("", "*") else host


def _socket_for(host: str) -> socket.socket:
    family = socket.getaddrinfo(_bind_host(host), None, type=socket.SOCK_STREAM)[0][0]
    return socket.socket(family, socket.SOCK_STREAM)


def candidate_ports(host: str, preferred: int, *, span: int = 20) -> list[int]:
    """The preferred port first, then its neighbours, then one the OS picks; free ones only."""
    ports = [p for p in range(preferred, min(preferred + span, 65536)) if port_is_free(host, p)]
    if not ports:
        with _socket_for(host) as sock:
            sock.bind((_bind_host(host), 0))
            ports = [sock.getsockname()[1]]
    return ports


def start_tensorboard(
    logdir: Path,
    *,
    host: str,
    port: int,
    log_file: Path,
    timeout: float = START_TIMEOUT,
) -> Served | Failed:
    """Launch TensorBoard on ``port`` (or a free port near it) and wait until it answers.

    TensorBoard runs in its own session, so a Ctrl-C meant for the pipeline does not
    reach it; its output is appended to ``log_file``. On failure nothing is left running.
    """
    command = tensorboard_command()
    if command is None:
        return Failed(f"TensorBoard is not installed; install it with: {install_hint()}")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tried: list[int] = []
    for _ in range(PORT_TRIES):
        try:
            ports = [p for p in candidate_ports(host, port) if p not in tried]
        except OSError as error:
            return Failed(f"can't listen on {host}: {error.strerror or error}")
        if not ports:
            break
        chosen = ports[0]
        tried.append(chosen)
        args = [*command, "--logdir", os.fspath(logdir), "--host", host.strip("[]"), "--port", str(chosen)]
        with open(log_file, "ab") as log:
            log.write(f"$ {' '.join(args)}\n".encode())
            log.flush()
            start = log.tell()
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        outcome = _wait_until_serving(
            proc, logdir=logdir, host=host, port=chosen, log_file=log_file, log_start=start, timeout=timeout
        )
        if isinstance(outcome, Served) or _BIND_ERROR not in outcome.reason:
            return outcome
        # the port was taken between our check and TensorBoard's bind: try another
    return Failed(f"no free port found near {port} (tried {', '.join(map(str, tried))})", str(log_file))


def _wait_until_serving(
    proc: subprocess.Popen[bytes],
    *,
    logdir: Path,
    host: str,
    port: int,
    log_file: Path,
    log_start: int,
    timeout: float,
) -> Served | Failed:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                reason = _tail_from(log_file, log_start) or f"exited with status {proc.returncode}"
                return Failed(f"TensorBoard exited with status {proc.returncode}: {reason}", str(log_file))
            # ours, not another TensorBoard that took the port in the meantime
            if answers(host, port, logdir=logdir, timeout=0.5) and proc.poll() is None:
                return Served(
                    url=format_url(host, port),
                    host=host,
                    port=port,
                    pid=proc.pid,
                    logdir=os.fspath(logdir),
                    reused=False,
                    log_file=str(log_file),
                )
            time.sleep(0.05)
        stop_process(proc.pid)
        return Failed(f"TensorBoard did not answer on port {port} within {timeout:.0f}s", str(log_file))
    except BaseException:
        stop_process(proc.pid)
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


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill()


def stop_process(pid: int, *, grace: float = 5.0) -> bool:
    """Stop ``pid`` and its process group: SIGTERM, then SIGKILL after ``grace`` seconds.

    Safe to call twice or on a process already gone. Returns True if it was running.
    """
    if not pid_alive(pid):
        _reap(pid)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the whole group when ``pid`` leads one (TensorBoard and its data server)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it doesn't linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
