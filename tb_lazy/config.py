"""Settings for a watch: flags beat ``TB_*`` environment variables, which beat defaults."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path

# The largest PID the platform can hand out (Linux: PID_MAX_LIMIT; macOS: 99998). Here, not in
# process.py, because this file must stay standard-library only (the pipelines run it with python3 -I).
MAX_PID = 4_194_304 if sys.platform.startswith("linux") else 99_999 if sys.platform == "darwin" else 2**31 - 1

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6006
MAX_POLL = 3600.0  # seconds: a longer polling interval would mean never noticing the run
MIN_POLL = 0.05  # seconds: a shorter one would only burn CPU (each scan walks the whole tree)
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "MLX_RANK")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a watch needs, already validated."""

    logdir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    keep: bool = True
    poll: float | None = None  # seconds between scans; None: inotify (polling only as a fallback)
    timeout: float | None = None  # give up waiting for event data after this long
    exit_with: int | None = None  # stop waiting (and, without keep, stop TensorBoard) when this PID ends
    existing: bool = False  # event data already there counts too, not only data written during this run


def parse_bool(name: str, value: str) -> bool:
    """Read a yes/no variable such as ``TB_KEEP=0``."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"{name}={value!r} is not a yes/no value (use 1 or 0)")


def parse_port(name: str, value: str | int) -> int:
    """A TCP port number, 1-65535."""
    try:
        port = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{name}={value!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"{name}={value!r} is out of range (1-65535)")
    return port


def parse_seconds(name: str, value: str | float, *, most: float | None = None, least: float | None = None) -> float:
    """A positive, finite duration in seconds (at least ``least`` and at most ``most``, if given)."""
    try:
        seconds = float(str(value).strip())
    except ValueError:
        raise UsageError(f"{name}={value!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise UsageError(f"{name}={value!r} must be a positive number of seconds")
    if least is not None and seconds < least:
        raise UsageError(f"{name}={value!r} is too short (at least {least:g} seconds)")
    if most is not None and seconds > most:
        raise UsageError(f"{name}={value!r} is too long (at most {most:g} seconds)")
    return seconds


def parse_pid(name: str, value: str | int) -> int:
    """A process id, as given to ``--exit-with``."""
    try:
        pid = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{name}={value!r} is not a process id") from None
    if not 0 < pid <= MAX_PID:
        raise UsageError(f"{name}={value!r} is not a process id (1-{MAX_PID})")
    return pid


def env_port(env: Mapping[str, str]) -> int:
    """``TB_PORT``, or the default when unset or empty."""
    return parse_port("TB_PORT", env["TB_PORT"]) if env.get("TB_PORT", "").strip() else DEFAULT_PORT


def env_keep(env: Mapping[str, str]) -> bool:
    """``TB_KEEP``, or the default (on) when unset or empty."""
    return parse_bool("TB_KEEP", env["TB_KEEP"]) if env.get("TB_KEEP", "").strip() else True


def check_logdir(logdir: str | os.PathLike[str]) -> Path:
    """An absolute log folder that exists, or that could be created later.

    Raises UsageError when the path names a file, or when a part of it is a file or
    a folder we can't write in (so the folder can never appear).
    """
    if not str(logdir).strip():
        raise UsageError("the log folder is empty; give a folder to watch")
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(logdir))))
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file, not a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{path} can't be created: {ancestor} is a file")
    if ancestor != path and not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{path} can't be created: no write permission in {ancestor}")
    return path


def resolve(
    logdir: str | os.PathLike[str],
    *,
    host: str | None = None,
    port: int | str | None = None,
    keep: bool | None = None,
    poll: float | str | None = None,
    timeout: float | str | None = None,
    exit_with: int | str | None = None,
    existing: bool = False,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Merge explicit options (``None`` = not given) with ``TB_*`` variables and defaults."""
    env = os.environ if env is None else env
    if host is None:
        host = env.get("TB_HOST", "").strip() or DEFAULT_HOST
    if not host.strip():
        raise UsageError("--host is empty; give an address such as 127.0.0.1 (or 0.0.0.0 for all)")
    if port is None:
        port = env_port(env)
    if keep is None:
        keep = env_keep(env)
    return Settings(
        logdir=check_logdir(logdir),
        host=host.strip(),
        port=parse_port("--port", port),
        keep=keep,
        poll=None if poll is None else parse_seconds("--poll", poll, most=MAX_POLL, least=MIN_POLL),
        timeout=None if timeout is None else parse_seconds("--timeout", timeout),
        exit_with=None if exit_with is None else parse_pid("--exit-with", exit_with),
        existing=existing,
    )


def auto_enabled(env: Mapping[str, str] | None = None) -> bool:
    """``TB_AUTO``: on unless set to a no-value; a bad value is a UsageError."""
    env = os.environ if env is None else env
    value = env.get("TB_AUTO", "").strip()
    return parse_bool("TB_AUTO", value) if value else True


def other_rank(env: Mapping[str, str] | None = None) -> str | None:
    """In a distributed run, the ``NAME=value`` that says this is not rank 0; else None."""
    env = os.environ if env is None else env
    for name in RANK_VARIABLES:
        value = env.get(name, "").strip()
        if value and value != "0":
            try:
                if int(value) == 0:
                    continue
            except ValueError:
                pass
            return f"{name}={value}"
    return None


def is_public_host(host: str) -> bool:
    """True when binding ``host`` exposes TensorBoard beyond this machine."""
    return host in {"0.0.0.0", "::", "[::]", "*"}


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]%")


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Check the ``TB_*`` variables once, before any work: raise UsageError naming the first bad one.

    With ``TB_AUTO`` off the others are never used, so only ``TB_AUTO`` itself is checked.
    Standard library only: the pipelines run this file with the system Python before any venv exists.
    """
    env = os.environ if env is None else env
    if not auto_enabled(env):
        return
    host = env.get("TB_HOST", "").strip()
    if host and not set(host) <= _HOST_CHARS:
        raise UsageError(f"TB_HOST={env['TB_HOST']!r} is not a host name or address "
                         "(e.g. 127.0.0.1, 0.0.0.0, ::, localhost)")
    env_port(env)
    env_keep(env)


def _main(argv: list[str]) -> int:
    """``python3 -I tb_lazy/config.py [PROG]``: check the ``TB_*`` variables; one line and 2 if bad."""
    try:
        check_environment()
    except UsageError as e:
        print(f"{argv[0] if argv else 'tb-lazy'}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
