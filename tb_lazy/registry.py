"""Which TensorBoards are running: our own records plus TensorBoard's own info files.

tb_lazy keeps one JSON record per TensorBoard it started in its state folder
(``$TB_LAZY_STATE_DIR``, else ``$XDG_STATE_HOME/tb_lazy``, else ``~/.local/state/tb_lazy``),
beside the log files TensorBoard writes its output to. TensorBoard itself writes
``pid-N.info`` files under ``<tmp>/.tensorboard-info`` once it serves; those count too,
so a TensorBoard started by hand or from a notebook is found and reused as well.

Nothing here trusts a PID alone. A record names the exact process tb_lazy started (PID,
start time, command line) and is dropped, never signalled, once that process is gone;
an info file counts only while its process started no later than the file was written.
Only our own records are ever stopped. State files of the wrong shape are skipped with
one warning per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tb_lazy.address import local_url_for, url_for
from tb_lazy.launch import answers
from tb_lazy.messages import note, warn
from tb_lazy.process import (
    Identity,
    check_pid,
    check_time,
    is_running,
    socket_states,
    started_no_later_than,
    stop_process,
    working_folder,
)


@dataclasses.dataclass(frozen=True)
class Instance:
    """A running TensorBoard as the registry knows it.

    Records of ours carry the identity of the process tb_lazy started (``create_time``
    and the exact ``cmdline``); with ``keep`` off they also name their ``owner``, the
    watcher that is to stop it.
    """

    pid: int
    host: str
    port: int
    logdir: str
    started: float
    log_file: str | None = None
    source: str = "tb_lazy"  # or "tensorboard": found through TensorBoard's own info file
    create_time: float = 0.0
    cmdline: tuple[str, ...] = ()
    keep: bool = True
    owner: Identity | None = None
    path_prefix: str = ""  # TensorBoard's --path_prefix: its pages live under this path
    folders: tuple[str, ...] = ()  # the folders a --logdir_spec names; empty: just ``logdir``

    @property
    def url(self) -> str:
        return url_for(self.host, self.port) + self.path_prefix

    @property
    def local_url(self) -> str | None:
        local = local_url_for(self.host, self.port)
        return None if local is None else local + self.path_prefix

    @property
    def identity(self) -> Identity:
        return Identity(pid=self.pid, create_time=self.create_time, cmdline=self.cmdline)

    def serves(self, logdir: Path) -> bool:
        """True when one of this instance's log folders is ``logdir`` or one of its ancestors."""
        logdir = Path(os.path.realpath(logdir))
        for folder in self.folders or (self.logdir,):
            mine = Path(os.path.realpath(folder))
            if logdir == mine or mine in logdir.parents:
                return True
        return False

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cmdline"] = list(self.cmdline)
        data["folders"] = list(self.folders)
        data["owner"] = None if self.owner is None else self.owner.to_json()
        return data


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


def new_log_file() -> Path:
    """A fresh path for one TensorBoard's output (old logs of ended ones are pruned)."""
    folder = state_dir() / "logs"
    in_use = {instance.log_file for instance in _own_records()}
    cutoff = time.time() - LOG_DAYS * 86400
    for old in folder.glob("tensorboard-*.log"):
        with contextlib.suppress(OSError):
            if str(old) not in in_use and old.stat().st_mtime < cutoff:
                old.unlink()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return folder / f"tensorboard-{stamp}-{os.getpid()}.log"  # no port: it may yet change


MAX_STATE_FILE = 64 * 1024  # bytes; a record or info file larger than this is not one
TMP_AGE = 60.0  # seconds after which a ``.*.json.tmp`` left by a failed write is removed
_warned: set[str] = set()  # bad state files already reported by this process


def add(instance: Instance) -> None:
    """Record a TensorBoard we started (atomically: readers never see half a file).

    On failure (a full disk) the partial temporary file is removed and OSError raised.
    """
    folder = _records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(folder / f"{instance.pid}.json", json.dumps(instance.to_json(), indent=2))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.json.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _remove_old_tmp(folder: Path) -> None:
    """Remove ``.*.json.tmp`` files that failed writes left behind (not ones being written now)."""
    cutoff = time.time() - TMP_AGE
    with contextlib.suppress(OSError):
        for tmp in folder.glob(".*.json.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()


def remove(pid: int) -> None:
    """Forget a record; fine if it is already gone."""
    with contextlib.suppress(FileNotFoundError):
        (_records_dir() / f"{pid}.json").unlink()


def _load(path: Path) -> Any:
    """A small JSON file's content; ValueError if it isn't one."""
    with open(path, "rb") as handle:
        raw = handle.read(MAX_STATE_FILE + 1)
    if len(raw) > MAX_STATE_FILE:
        raise ValueError(f"larger than {MAX_STATE_FILE} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError) as error:
        raise ValueError(str(error) or type(error).__name__) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from None


def _parse_record(data: Any) -> Instance:
    """One record of ours, every field checked; ValueError naming the first bad one."""
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    pid = check_pid(data.get("pid"))
    port = data.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port is not a port number: {port!r:.40}")
    for name in ("host", "logdir"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise ValueError(f"{name} is not a non-empty string")
    log_file = data.get("log_file")
    if log_file is not None and not isinstance(log_file, str):
        raise ValueError("log_file is not a string")
    keep = data.get("keep", True)
    if not isinstance(keep, bool):
        raise ValueError("keep is not true/false")
    if "create_time" not in data or "cmdline" not in data:
        raise ValueError("no start time and command line to tell its process by")
    identity = Identity.from_json({"pid": pid, "create_time": data["create_time"], "cmdline": data["cmdline"]})
    owner = None if data.get("owner") is None else Identity.from_json(data["owner"])
    return Instance(
        pid=pid,
        host=data["host"],
        port=port,
        logdir=data["logdir"],
        started=check_time(data.get("started"), "started"),
        log_file=log_file,
        create_time=identity.create_time,
        cmdline=identity.cmdline,
        keep=keep,
        owner=owner,
    )


def _warn_bad(bad: list[tuple[Path, str]]) -> None:
    """One ``[warn]`` line for the bad state files this process hasn't reported yet."""
    new = [(path, why) for path, why in bad if os.fspath(path) not in _warned]
    if not new:
        return
    _warned.update(os.fspath(path) for path, _ in new)
    (first, why), rest = new[0], [_shown(path.name) for path, _ in new[1:]]
    others = f"; also {', '.join(rest)}" if rest else ""
    warn(f"ignored {len(new)} unreadable state file(s): {_shown(os.fspath(first))} ({why}){others}")


def _own_records() -> list[Instance]:
    found, bad = _scan_records()
    _warn_bad(bad)
    return found


def _scan_records() -> tuple[list[Instance], list[tuple[Path, str]]]:
    """Our records whose TensorBoard still runs as the very process recorded.

    Anything else is dropped and never signalled: records of ended processes (their PID
    may belong to someone else by now) and records of the wrong shape (with a warning).
    A TensorBoard started without keep whose watcher is gone is stopped here: every
    command that looks at the registry comes through this one place.
    """
    folder = _records_dir()
    _remove_old_tmp(folder)
    found, bad = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            instance = _parse_record(_load(path))
            if path.stem != str(instance.pid):
                raise ValueError(f"its pid {instance.pid} doesn't match its name")
        except FileNotFoundError:
            continue  # removed under our feet
        except (OSError, ValueError) as error:
            bad.append((path, str(error)))
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        if not is_running(instance.identity):
            remove(instance.pid)  # stale: that process is gone (its PID may be someone else's now)
        elif not instance.keep and instance.owner is not None and not is_running(instance.owner):
            _stop_orphan(instance)
        else:
            found.append(instance)
    return found, bad


def _stop_orphan(instance: Instance) -> None:
    assert instance.owner is not None
    stop_process(instance.pid, identity=instance.identity)
    remove(instance.pid)
    note(
        f"stopped TensorBoard pid={instance.pid} ({instance.url}): the watcher that owned it "
        f"(pid {instance.owner.pid}) is gone and TB_KEEP=0"
    )


def _shown(text: str) -> str:
    return text if text.isprintable() else repr(text)


def _info_dir() -> Path:
    return Path(tempfile.gettempdir()) / ".tensorboard-info"


def _parse_info(data: Any) -> tuple[int, int, str, float, str]:
    """(pid, port, logdir, start_time, path_prefix) from TensorBoard's own info file (the
    fields of ``tensorboard.manager.TensorBoardInfo``); ValueError if malformed.

    Read here rather than through ``manager.get_all()``, which raises on a file that
    vanishes while it reads, or on deeply nested JSON, and reads files of any size.
    """
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    pid = check_pid(data.get("pid"))
    port = data.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port is not a port number: {port!r:.40}")
    logdir, prefix = data.get("logdir"), data.get("path_prefix") or ""
    if not isinstance(logdir, str) or not isinstance(prefix, str):
        raise ValueError("logdir or path_prefix is not a string")
    return pid, port, logdir, check_time(data.get("start_time"), "start_time"), prefix.rstrip("/")


def logdir_spec_folders(spec: str, cwd: str | None) -> tuple[str, ...]:
    """The folders named by ``--logdir`` or ``--logdir_spec name1:DIR1,DIR2,...``, made absolute
    against ``cwd`` (TensorBoard's own rule: a ``name:`` prefix unless the item is a path or URL)."""
    folders = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if ":" in item and not item.startswith(("/", "~")) and "://" not in item:
            item = item.split(":", 1)[1]
        item = os.path.expanduser(item)
        if not os.path.isabs(item) and cwd:
            item = os.path.join(cwd, item)
        folders.append(os.path.abspath(item))
    return tuple(folders)


def _tensorboard_infos() -> tuple[list[Instance], list[tuple[Path, str]]]:
    """TensorBoards found through their own info files (never ours to stop).

    An info file is trusted only while its process runs and started no later than the
    file says it was written: a process started after that only inherited the PID. Its
    ``logdir`` is as the user typed it — relative to that process's working folder, or a
    ``--logdir_spec`` — and its ``path_prefix`` is part of its URL.
    """
    try:
        paths = sorted(_info_dir().glob("pid-*.info"))
    except OSError:
        return [], []
    found, bad = [], []
    for path in paths:
        try:
            pid, port, logdir, start_time, prefix = _parse_info(_load(path))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as error:
            bad.append((path, str(error)))
            continue
        if not logdir or not started_no_later_than(pid, start_time):
            continue
        folders = logdir_spec_folders(logdir, working_folder(pid))
        if not folders:
            continue
        shown = folders[0] if len(folders) == 1 else logdir
        found.append(
            Instance(pid=pid, host="127.0.0.1", port=port, logdir=shown, started=start_time, source="tensorboard",
                     path_prefix=prefix, folders=folders)
        )
    return found, bad


def running() -> list[Instance]:
    """Live TensorBoards, ours first; one entry per process."""
    seen: set[int] = set()
    result = []
    ours, bad = _scan_records()
    theirs, bad_infos = _tensorboard_infos()
    _warn_bad(bad + bad_infos)
    for instance in ours + theirs:
        if instance.pid not in seen:
            seen.add(instance.pid)
            result.append(instance)
    return result


def find_serving(logdir: Path) -> Instance | None:
    """A live TensorBoard that serves ``logdir`` or an ancestor and answers HTTP."""
    for instance in running():
        # Ours must answer with the folder we recorded (the port may have gone to someone
        # else while it started). One from an info file holds its port already (it wrote the
        # file once serving) and reports its folder as typed, perhaps relative: not comparable.
        expected = Path(instance.logdir) if instance.source == "tb_lazy" else None
        if instance.serves(logdir) and _holds_port(instance) and answers(
            instance.host, instance.port, logdir=expected, path_prefix=instance.path_prefix
        ):
            return instance
    return None


def _holds_port(instance: Instance) -> bool:
    """False when we can see that its process doesn't listen on its port (yet): then whoever
    answers there is someone else, and knocking would only fill a stranger's queue."""
    states = socket_states(instance.pid, instance.port)
    return states is None or "LISTEN" in states


@contextlib.contextmanager
def watching(logdir: Path) -> Iterator[int]:
    """Announce, while the block runs, that this process watches ``logdir``; yields when
    it began (for ``covering_watch``).

    The announcement is a small JSON file that this process keeps locked: a watcher that
    dies, however it dies, drops the lock, so others can tell a live watcher from a stale file.
    """
    folder = _watchers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _remove_old_tmp(folder)
    path = folder / f"{os.getpid()}.json"
    tmp = folder / f".{os.getpid()}.json.tmp"
    entry = {"pid": os.getpid(), "logdir": os.fspath(logdir), "since": time.time_ns()}
    with open(tmp, "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # the lock is on the file itself: it moves with the rename
        try:
            handle.write(json.dumps(entry))
            handle.flush()
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        try:
            yield entry["since"]
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _live_watchers() -> list[dict]:
    """Announcements of watchers still running (stale ones are removed on the way)."""
    found = []
    _remove_old_tmp(_watchers_dir())
    for path in sorted(_watchers_dir().glob("*.json")):
        try:
            with open(path, encoding="utf-8") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    found.append(json.loads(handle.read()))  # locked: its watcher is alive
                    continue
                path.unlink()  # nobody holds it: a watcher killed without cleanup
        except (OSError, ValueError, RecursionError):
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
            stop_process(instance.pid, identity=instance.identity)
            remove(instance.pid)
            stopped.append(instance)
    return stopped


def stop_recorded(pid: int) -> bool:
    """Stop the TensorBoard recorded as ``pid`` if it is still that very process; forget it.

    Returns True if it was running.
    """
    try:
        instance = _parse_record(_load(_records_dir() / f"{pid}.json"))
    except (OSError, ValueError):
        return False  # not recorded (any more): someone stopped it already, or it never was
    stopped = stop_process(instance.pid, identity=instance.identity)
    remove(instance.pid)
    return stopped
