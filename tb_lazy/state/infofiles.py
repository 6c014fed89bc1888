"""TensorBoards found through TensorBoard's own info files (``<tmp>/.tensorboard-info/pid-N.info``,
written once it serves): started by hand or from a notebook, they are found and reused, never
stopped. The fields are those of ``tensorboard.manager.TensorBoardInfo``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tb_lazy.process import check_time, is_mine, socket_states, started_no_later_than, working_folder
from tb_lazy.state.instance import Instance
from tb_lazy.state.statefiles import NotMine, load_json, pid_and_port


def _info_dir() -> Path:
    return Path(tempfile.gettempdir()) / ".tensorboard-info"


def _parse_info(data: Any) -> tuple[int, int, str, float, str]:
    """(pid, port, logdir, start_time, path_prefix) from TensorBoard's own info file (the
    fields of ``tensorboard.manager.TensorBoardInfo``); ValueError if malformed.

    Read here rather than through ``manager.get_all()``, which raises on a file that
    vanishes while it reads, or on deeply nested JSON, and reads files of any size.
    """
    pid, port = pid_and_port(data)
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


def tensorboard_infos() -> tuple[list[Instance], list[tuple[Path, str]]]:
    """TensorBoards found through their own info files (never ours to stop).

    The info folder is writable by everyone: only files owned by the current user, naming
    a process of the current user, count. Such a file is trusted while its process listens
    on the file's port, or started no later than the file says it was written (a process
    started after that only inherited the PID; a clock step can move that comparison,
    the listening socket it can't). Its
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
            pid, port, logdir, start_time, prefix = _parse_info(load_json(path))
        except (FileNotFoundError, NotMine):
            continue
        except (OSError, ValueError) as error:
            bad.append((path, str(error)))
            continue
        if not logdir or not is_mine(pid) or not (_listens(pid, port) or started_no_later_than(pid, start_time)):
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


def _listens(pid: int, port: int) -> bool:
    states = socket_states(pid, port)
    return states is not None and "LISTEN" in states
