"""tb_lazy's state folder and the small JSON files in it (and TensorBoard's own): where they
live, how they are written (atomically, `tb_lazy.atomic`) and read (size-capped,
every failure a ValueError, files of other users never), and the one warning per run about
those of the wrong shape.

The state folder is private: created 0700, and refused (one line) when another user owns
it or group or others may write in it, since whoever can write a record there could have
tb_lazy reuse or stop a process of theirs choosing."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from tb_lazy.atomic import atomic_file, clean_leftovers
from tb_lazy.config import UsageError
from tb_lazy.messages import warn
from tb_lazy.process import check_pid

MAX_STATE_FILE = 64 * 1024  # bytes; a record or info file larger than this is not one
TMP_AGE = 60.0  # seconds after which a temporary left by a failed write is removed, its writer alive or not
_warned: set[str] = set()  # bad state files already reported by this process


class NotMine(Exception):
    """A state file owned by another user: ignored, never trusted, never removed."""


def state_dir() -> Path:
    """Where records, the launch lock and TensorBoard's log files live (checked to be private
    if it exists: UsageError otherwise)."""
    if explicit := os.environ.get("TB_LAZY_STATE_DIR", "").strip():
        folder = Path(explicit).expanduser()
    else:
        base = os.environ.get("XDG_STATE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".local", "state")
        folder = Path(base) / "tb_lazy"
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        check_private(folder, os.stat(folder))
    return folder


def private_dir(sub: str | None = None) -> Path:
    """The state folder, or its subfolder ``sub``: created 0700 where missing, and checked."""
    folder = state_dir()
    for path in (folder, folder / sub) if sub else (folder,):
        if not path.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)  # ordinary folders above the state folder
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
        check_private(path, os.stat(path))
    return folder / sub if sub else folder


def check_private(folder: Path, info: os.stat_result) -> None:
    """UsageError (one line) unless ``folder`` is ours and no one else may write in it."""
    if info.st_uid != os.getuid():
        why = f"owned by {_user(info.st_uid)}, not by you ({_user(os.getuid())})"
    elif info.st_mode & 0o022:
        why = f"writable by others than you (mode {info.st_mode & 0o7777:o})"
    else:
        return
    raise UsageError(
        f"tb_lazy's state folder {shown(os.fspath(folder))} is {why}; "
        "set TB_LAZY_STATE_DIR to a folder of your own, or run 'chmod go-w' on it"
    )


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def write_atomically(path: Path, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text)


def remove_old_tmp(folder: Path) -> None:
    """Remove the temporaries failed writes left behind (not ones being written now)."""
    with contextlib.suppress(OSError):
        clean_leftovers(folder, max_age=TMP_AGE)


def load_json(path: Path) -> Any:
    """A small JSON file's content; ValueError if it isn't one, NotMine if another user owns it."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_uid != os.getuid():
            raise NotMine(path)
        raw = handle.read(MAX_STATE_FILE + 1)
    if len(raw) > MAX_STATE_FILE:
        raise ValueError(f"larger than {MAX_STATE_FILE} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError) as error:
        raise ValueError(str(error) or type(error).__name__) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from None


def check_port(value: object) -> int:
    """A TCP port number from a state file; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"port is not a port number: {value!r:.40}")
    return value


def pid_and_port(data: Any) -> tuple[int, int]:
    """The ``pid`` and ``port`` of a state file's object, checked; ValueError otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    return check_pid(data.get("pid")), check_port(data.get("port"))


def warn_bad(bad: list[tuple[Path, str]]) -> None:
    """One ``[warn]`` line for the bad state files this process hasn't reported yet."""
    new = [(path, why) for path, why in bad if os.fspath(path) not in _warned]
    if not new:
        return
    _warned.update(os.fspath(path) for path, _ in new)
    (first, why), rest = new[0], [shown(path.name) for path, _ in new[1:]]
    others = f"; also {', '.join(rest)}" if rest else ""
    warn(f"ignored {len(new)} unreadable state file(s): {shown(os.fspath(first))} ({why}){others}")


def shown(text: str) -> str:
    return text if text.isprintable() else repr(text)
