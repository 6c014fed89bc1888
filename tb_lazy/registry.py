"""Which TensorBoards are running: our own records plus TensorBoard's own info files.

tb_lazy keeps one JSON record per TensorBoard it started in its state folder
(``$TB_LAZY_STATE_DIR``, else ``$XDG_STATE_HOME/tb_lazy``, else ``~/.local/state/tb_lazy``),
beside the log files TensorBoard writes its output to. TensorBoard itself writes
``pid-N.info`` files under ``<tmp>/.tensorboard-info`` once it serves; those count too,
so a TensorBoard started by hand or from a notebook is found and reused as well.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tb_lazy.launch import answers, format_url, pid_alive, stop_process


@dataclasses.dataclass(frozen=True)
class Instance:
    """A running TensorBoard as the registry knows it."""

    pid: int
    host: str
    port: int
    logdir: str
    started: float
    log_file: str | None = None
    source: str = "tb_lazy"  # or "tensorboard": found through TensorBoard's own info file

    @property
    def url(self) -> str:
        return format_url(self.host, self.port)

    def serves(self, logdir: Path) -> bool:
        """True when this instance's log folder is ``logdir`` or one of its ancestors."""
        mine = Path(os.path.realpath(self.logdir))
        logdir = Path(os.path.realpath(logdir))
        return logdir == mine or mine in logdir.parents


def state_dir() -> Path:
    """Where records, the launch lock and TensorBoard's log files live."""
    if explicit := os.environ.get("TB_LAZY_STATE_DIR", "").strip():
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "tb_lazy"


def _records_dir() -> Path:
    return state_dir() / "running"


def _watchers_dir() -> Path:
    return state_dir() / "watchers"


LOG_DAYS = 14  # TensorBoard log files older than this are removed, unless their TensorBoard still runs


def new_log_file(port: int) -> Path:
    """A fresh path for one TensorBoard's output (old logs of ended ones are pruned)."""
    folder = state_dir() / "logs"
    in_use = {instance.log_file for instance in _own_records()}
    cutoff = time.time() - LOG_DAYS * 86400
    for old in folder.glob("tensorboard-*.log"):
        with contextlib.suppress(OSError):
            if str(old) not in in_use and old.stat().st_mtime < cutoff:
                old.unlink()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return folder / f"tensorboard-{stamp}-{os.getpid()}-{port}.log"


def add(instance: Instance) -> None:
    """Record a TensorBoard we started (atomically: readers never see half a file)."""
    folder = _records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{instance.pid}.json.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(instance), indent=2), encoding="utf-8")
    os.replace(tmp, folder / f"{instance.pid}.json")


def remove(pid: int) -> None:
    """Forget a record; fine if it is already gone."""
    with contextlib.suppress(FileNotFoundError):
        (_records_dir() / f"{pid}.json").unlink()


def _is_process(pid: int, marker: bytes) -> bool:
    """True if ``pid`` runs with ``marker`` in its command line (guards against a recycled PID)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone, unless there is no /proc (macOS)
    except OSError:
        return True
    return marker in cmdline


def _is_tensorboard(pid: int) -> bool:
    return _is_process(pid, b"tensorboard")


def _own_records() -> list[Instance]:
    found = []
    for path in sorted(_records_dir().glob("*.json")):
        try:
            instance = Instance(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue  # unreadable or foreign: not ours to trust
        if _is_tensorboard(instance.pid):
            found.append(instance)
        else:
            remove(instance.pid)  # stale: the process is gone
    return found


def _info_dir() -> Path:
    return Path(tempfile.gettempdir()) / ".tensorboard-info"


def _tensorboard_infos() -> list[Instance]:
    found = []
    try:
        paths = sorted(_info_dir().glob("pid-*.info"))
    except OSError:
        return found
    for path in paths:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            pid, port, logdir = int(info["pid"]), int(info["port"]), str(info.get("logdir") or "")
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if not logdir or not _is_tensorboard(pid):
            continue
        if not os.path.isabs(logdir):  # relative to that process's working folder
            with contextlib.suppress(OSError):
                logdir = os.path.join(os.readlink(f"/proc/{pid}/cwd"), logdir)
        found.append(
            Instance(
                pid=pid,
                host="127.0.0.1",
                port=port,
                logdir=os.path.abspath(logdir),
                started=float(info.get("start_time") or 0),
                source="tensorboard",
            )
        )
    return found


def running() -> list[Instance]:
    """Live TensorBoards, ours first; one entry per process."""
    seen: set[int] = set()
    result = []
    for instance in _own_records() + _tensorboard_infos():
        if instance.pid not in seen:
            seen.add(instance.pid)
            result.append(instance)
    return result


def find_serving(logdir: Path) -> Instance | None:
    """A live TensorBoard that serves ``logdir`` or an ancestor and answers HTTP."""
    for instance in running():
        if instance.serves(logdir) and answers(instance.host, instance.port):
            return instance
    return None


@contextlib.contextmanager
def watching(logdir: Path) -> Iterator[int]:
    """Announce, while the block runs, that this process watches ``logdir``; yields when
    it began (for ``covering_watch``).

    The announcement is a small JSON file that this process keeps locked: a watcher that
    dies, however it dies, drops the lock, so others can tell a live watcher from a stale file.
    """
    folder = _watchers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    tmp = folder / f".{os.getpid()}.json.tmp"
    entry = {"pid": os.getpid(), "logdir": os.fspath(logdir), "since": time.time_ns()}
    with open(tmp, "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # the lock is on the file itself: it moves with the rename
        handle.write(json.dumps(entry))
        handle.flush()
        os.replace(tmp, path)
        try:
            yield entry["since"]
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _live_watchers() -> list[dict]:
    """Announcements of watchers still running (stale ones are removed on the way)."""
    found = []
    for path in sorted(_watchers_dir().glob("*.json")):
        try:
            with open(path, encoding="utf-8") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    found.append(json.loads(handle.read()))  # locked: its watcher is alive
                    continue
                path.unlink()  # nobody holds it: a watcher killed without cleanup
        except (OSError, ValueError):
            continue
    return found


def covering_watch(logdir: Path, *, since: int) -> str | None:
    """The log folder of another live watcher that will start TensorBoard for ``logdir``.

    A watcher on a parent folder sees every event file we see, so it starts TensorBoard
    (on the wider folder, serving us too) instead of two side by side; between two
    watchers of the same folder, the one that began watching first does.
    """
    logdir = Path(os.path.realpath(logdir))
    for entry in _live_watchers():
        try:
            pid, theirs, their_since = int(entry["pid"]), Path(os.path.realpath(entry["logdir"])), int(entry["since"])
        except (KeyError, TypeError, ValueError):
            continue
        if pid == os.getpid():
            continue
        if theirs in logdir.parents or (theirs == logdir and (their_since, pid) < (since, os.getpid())):
            return os.fspath(theirs)
    return None


@contextlib.contextmanager
def launch_lock(timeout: float = 120.0) -> Iterator[None]:
    """Serialise reuse-or-launch, so two watchers triggered together start one TensorBoard."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(folder / "launch.lock", "a+b") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stop(logdir: Path | None = None) -> list[Instance]:
    """Stop the TensorBoards tb_lazy started for exactly ``logdir`` (all of them if None).

    TensorBoards someone else started are never touched. Returns those stopped.
    """
    target = None if logdir is None else os.path.realpath(logdir)
    stopped = []
    for instance in _own_records():
        if target is None or os.path.realpath(instance.logdir) == target:
            stop_process(instance.pid)
            remove(instance.pid)
            stopped.append(instance)
    return stopped
