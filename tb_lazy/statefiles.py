"""tb_lazy's state folder and the small JSON files in it (and TensorBoard's own): where they
live, how they are written (atomically, under unique temporary names) and read (size-capped,
every failure a ValueError), and the one warning per run about those of the wrong shape."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from tb_lazy.messages import warn
from tb_lazy.process import check_pid

MAX_STATE_FILE = 64 * 1024  # bytes; a record or info file larger than this is not one
TMP_AGE = 60.0  # seconds after which a ``.*.json.tmp`` left by a failed write is removed
_warned: set[str] = set()  # bad state files already reported by this process


def state_dir() -> Path:
    """Where records, the launch lock and TensorBoard's log files live."""
    if explicit := os.environ.get("TB_LAZY_STATE_DIR", "").strip():
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "tb_lazy"


def write_atomically(path: Path, text: str) -> None:
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


def remove_old_tmp(folder: Path) -> None:
    """Remove ``.*.json.tmp`` files that failed writes left behind (not ones being written now)."""
    cutoff = time.time() - TMP_AGE
    with contextlib.suppress(OSError):
        for tmp in folder.glob(".*.json.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()


def load_json(path: Path) -> Any:
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
