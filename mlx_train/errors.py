"""Failures a user can cause by where they write — a full disk, a read-only or forbidden folder —
as one ``OSError`` that names the file, and as one line that says what to do.

The libraries underneath don't all say which file or why: MLX's ``save_safetensors`` raises
``RuntimeError("[write] Unable to write N bytes to file.")`` (no file, no reason), the
``tokenizers`` library a bare ``Exception("No space left on device (os error 28)")``, and
tensorboardX an ``OSError`` without a file name from its flush (and the same again from its
writer thread and at exit). `save_arrays` and `os_error_from` turn the first two into a plain
``OSError`` with errno and file; `explain` makes the line, naming the TensorBoard folder for
tensorboardX's; `quiet_background_writes` keeps the copies from the background off the terminal.

Exit status for a write that failed this way: `EXIT_WRITE` (74, ``EX_IOERR`` of sysexits.h).
"""

from __future__ import annotations

import errno
import os
import re
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

__all__ = ["EXIT_WRITE", "WRITE_ERRNOS", "explain", "is_write_failure", "os_error_from",
           "quiet_background_writes", "report_os_error", "root_cause", "save_arrays"]

EXIT_WRITE = 74     # output could not be written (sysexits.h EX_IOERR)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
WRITE_ERRNOS = (*DISK_FULL, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_UNABLE = re.compile(r"Unable to write (\d+) bytes")
_reported = threading.Event()    # a write failure has been reported: the run is ending


def os_error_from(error: BaseException, path: Path | str) -> OSError | None:
    """``error`` (from a library that writes ``path``) as an ``OSError`` naming ``path``, if it
    reports a failed write or open; None for anything else."""
    if isinstance(error, OSError):
        if error.filename is None and error.errno is not None:
            return OSError(error.errno, error.strerror or os.strerror(error.errno), str(path))
        return error
    text = str(error)
    if match := _OS_ERROR.search(text):               # tokenizers: "... (os error 28)"
        code = int(match[1])
        return OSError(code, os.strerror(code), str(path))
    if match := _UNABLE.search(text):                 # MLX: "[write] Unable to write N bytes"
        code = errno.ENOSPC if _free_bytes(Path(path).parent) < int(match[1]) else errno.EIO
        return OSError(code, os.strerror(code), str(path))
    if "Failed to open file" in text:                 # MLX: the open failed; find out why
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError as reason:
            return reason
        return OSError(errno.EIO, os.strerror(errno.EIO), str(path))
    return None


def _free_bytes(folder: Path) -> int:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


def save_arrays(path: Path, arrays: dict[str, Any], *, metadata: dict[str, str] | None = None) -> None:
    """``mx.save_safetensors(path, arrays)``; a failed write is an ``OSError`` naming ``path``
    (ENOSPC when the disk has no room for it), decided while the partial file still holds its place."""
    import mlx.core as mx

    try:
        if metadata is None:
            mx.save_safetensors(str(path), arrays)
        else:
            mx.save_safetensors(str(path), arrays, metadata=metadata)
    except RuntimeError as e:
        failure = os_error_from(e, path)
        if failure is None:
            raise
        raise failure from None


def is_write_failure(error: BaseException) -> bool:
    """True for an ``OSError`` a user fixes by making room or choosing another folder."""
    return isinstance(error, OSError) and error.errno in WRITE_ERRNOS


def root_cause(error: BaseException) -> BaseException:
    """The first write failure in ``error``'s chain, as Python would show it (a failure while
    cleaning up after one, such as a flush at close on the same full disk, is not the cause),
    else ``error``."""
    seen, chain = set(), []
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return next((e for e in reversed(chain) if is_write_failure(e)), error)


def _from_tensorboardx(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return any(f"{os.sep}tensorboardX{os.sep}" in frame.filename for frame in frames)


def _target(filename: Any) -> str | None:
    """``filename`` with our temporaries' names (``.tmp_step_0000004_PID_TOKEN``) replaced by
    what they were to become (``step_0000004``): the temporary is gone by the time it's read."""
    from tb_lazy.atomic import LEFTOVER_RE

    if filename is None:
        return None
    parts = [m["name"] if (m := LEFTOVER_RE.fullmatch(part)) else part for part in Path(str(filename)).parts]
    return str(Path(*parts))


def explain(error: OSError, *, tensorboard_dir: str | Path | None = None,
            resume_from: Path | None = None) -> str:
    """One line for ``error``: which file, why, and what to do.

    ``tensorboard_dir``: named when the error comes from tensorboardX without a file name.
    ``resume_from``: the last complete checkpoint, which ``--resume`` would continue from."""
    name = _target(error.filename)
    if name is None and tensorboard_dir is not None and _from_tensorboardx(error):
        name = f"TensorBoard logs in {tensorboard_dir}"
    where = f"cannot write {name}" if name is not None else "cannot write"
    reason = error.strerror or str(error)
    if error.errno in DISK_FULL:
        todo = "free some space (or write elsewhere)"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        todo = "choose a folder you can write to"
    else:
        todo = "check the disk"
    if resume_from is not None:
        todo += f", then rerun with --resume to continue from {resume_from}"
    elif error.errno in WRITE_ERRNOS:
        todo += ", then rerun"
    return f"error: {where}: {reason}; {todo}"


def report_os_error(error: OSError, *, out_dir: str | Path | None = None, run_name: str | None = None,
                    tensorboard_dir: str | Path | None = None) -> int:
    """Print the one line for ``error`` (raised by a run writing into ``out_dir`` and
    ``tensorboard_dir``) on stderr; return the exit status: `EXIT_WRITE`, or 1 for another
    ``OSError``. A write failure names the checkpoint ``--resume`` would continue from (run
    ``run_name``'s latest, or the newest run's without a name), if there is one."""
    from mlx_train.runs import find_run, list_checkpoints

    cause = root_cause(error)
    if not is_write_failure(cause):
        print(f"error: {cause}", file=sys.stderr)
        return 1
    run = find_run(Path(out_dir), run_name) if out_dir is not None else None
    resume_from = list_checkpoints(run.path)[-1] if run is not None else None
    _reported.set()
    print(explain(cause, tensorboard_dir=tensorboard_dir, resume_from=resume_from), file=sys.stderr)
    return EXIT_WRITE


def quiet_background_writes() -> None:
    """From now on, a write failure raised in a background thread or an exit handler (what
    tensorboardX's writer thread and its atexit flush do after the main thread failed on the
    same full disk) is not printed as a traceback: the main thread reports it, once. Once it has
    (`report_os_error`), nothing from the background is: the writer thread left behind by a
    close that failed dies at exit on its torn-down queue. Other exceptions are shown as usual.
    For command-line entry points; calling it again does nothing."""
    if getattr(threading.excepthook, "_quiet_writes", False):
        return
    thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook

    def on_thread_error(args: Any) -> None:
        if not (_reported.is_set() or is_write_failure(args.exc_value)):
            thread_hook(args)

    def on_unraisable(args: Any) -> None:
        if not (_reported.is_set() or is_write_failure(args.exc_value)):
            unraisable_hook(args)

    on_thread_error._quiet_writes = True    # type: ignore[attr-defined]
    threading.excepthook, sys.unraisablehook = on_thread_error, on_unraisable
