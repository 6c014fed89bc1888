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
import json
import os
import time
from pathlib import Path
from typing import Any

from tb_lazy.launch import data_location
from tb_lazy.messages import note
from tb_lazy.process import Identity, check_time, is_running, is_stopped, socket_states, stop_process, working_folder
from tb_lazy.state.infofiles import logdir_spec_folders, tensorboard_infos
from tb_lazy.state.instance import Instance
from tb_lazy.state.statefiles import (
    NotMine,
    load_json,
    pid_and_port,
    private_dir,
    remove_old_tmp,
    state_dir,
    warn_bad,
    write_atomically,
)
from tb_lazy.state.watchers import covering_watch, launch_lock, watching

__all__ = ["Instance", "add", "covering_watch", "find_serving", "launch_lock", "new_log_file", "remove", "running",
           "state_dir", "state_of", "stop", "stop_recorded", "watching"]


def _records_dir() -> Path:
    return state_dir() / "running"


LOG_DAYS = 14  # TensorBoard log files older than this are removed, unless their TensorBoard still runs


def new_log_file() -> Path:
    """A fresh path for one TensorBoard's output (old logs of ended ones are pruned)."""
    folder = private_dir("logs")
    in_use = {instance.log_file for instance in _own_records()}
    cutoff = time.time() - LOG_DAYS * 86400
    for old in folder.glob("tensorboard-*.log"):
        with contextlib.suppress(OSError):
            if str(old) not in in_use and old.stat().st_mtime < cutoff:
                old.unlink()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return folder / f"tensorboard-{stamp}-{os.getpid()}.log"  # no port: it may yet change


def add(instance: Instance) -> None:
    """Record a TensorBoard we started (atomically: readers never see half a file).

    On failure (a full disk) the partial temporary file is removed and OSError raised.
    """
    folder = private_dir("running")
    write_atomically(folder / f"{instance.pid}.json", json.dumps(instance.to_json(), indent=2))


def remove(pid: int) -> None:
    """Forget a record; fine if it is already gone."""
    with contextlib.suppress(FileNotFoundError):
        (_records_dir() / f"{pid}.json").unlink()


def _parse_record(data: Any) -> Instance:
    """One record of ours, every field checked; ValueError naming the first bad one."""
    pid, port = pid_and_port(data)
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
    identity = Identity.from_json({**data, "pid": pid})
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
        boot_start=identity.boot_start,
        boot_id=identity.boot_id,
    )


def _own_records() -> list[Instance]:
    found, bad = _scan_records()
    warn_bad(bad)
    return found


def _scan_records() -> tuple[list[Instance], list[tuple[Path, str]]]:
    """Our records whose TensorBoard still runs as the very process recorded.

    Anything else is dropped and never signalled: records of ended processes (their PID
    may belong to someone else by now) and records of the wrong shape (with a warning).
    A TensorBoard started without keep whose watcher is gone is stopped here: every
    command that looks at the registry comes through this one place.
    """
    folder = _records_dir()
    remove_old_tmp(folder)
    found, bad = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            instance = _parse_record(load_json(path))
            if path.stem != str(instance.pid):
                raise ValueError(f"its pid {instance.pid} doesn't match its name")
        except (FileNotFoundError, NotMine):
            continue  # removed under our feet, or another user's: never trusted, never removed
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


def running() -> list[Instance]:
    """Live TensorBoards, ours first; one entry per process."""
    seen: set[int] = set()
    result = []
    ours, bad = _scan_records()
    theirs, bad_infos = tensorboard_infos()
    warn_bad(bad + bad_infos)
    for instance in ours + theirs:
        if instance.pid not in seen:
            seen.add(instance.pid)
            result.append(instance)
    return result


def find_serving(logdir: Path) -> Instance | None:
    """A live TensorBoard of the current user that serves ``logdir`` or an ancestor and
    answers HTTP with that folder."""
    for instance in running():
        if not instance.serves(logdir) or not _holds_port(instance) or is_stopped(instance.pid):
            continue
        if _answers_with_its_folder(instance):
            return instance
    return None


def state_of(instance: Instance) -> str:
    """"serving", "stopped" (SIGSTOP: it holds its port but can't answer) or "not answering"
    (within a second; busy, hung, or not yet up). Only one that is serving is reused."""
    if is_stopped(instance.pid):
        return "stopped"
    if data_location(instance.host, instance.port, path_prefix=instance.path_prefix) is None:
        return "not answering"
    return "serving"


def _answers_with_its_folder(instance: Instance) -> bool:
    """True if the server on its port reports the folder it was recorded with (the port may
    have gone to someone else while it started). One from an info file reports its folder
    as typed, perhaps relative to its working folder or a ``--logdir_spec``: compared as such."""
    location = data_location(instance.host, instance.port, path_prefix=instance.path_prefix)
    if location is None:
        return False
    if instance.source == "tb_lazy":
        return location == instance.logdir
    return logdir_spec_folders(location, working_folder(instance.pid)) == instance.folders


def _holds_port(instance: Instance) -> bool:
    """True when its process (the current user's) listens on its port: else whoever answers
    there is someone else, and knocking would only fill a stranger's queue."""
    states = socket_states(instance.pid, instance.port)
    return states is not None and "LISTEN" in states


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
        instance = _parse_record(load_json(_records_dir() / f"{pid}.json"))
    except (OSError, ValueError, NotMine):
        return False  # not recorded (any more): someone stopped it already, or it never was
    stopped = stop_process(instance.pid, identity=instance.identity)
    remove(instance.pid)
    return stopped
