"""``%load_ext tb_lazy``: a lazy ``%tensorboard`` for Jupyter (``pip install "tb-lazy[notebook]"``).

``%tb_lazy DIR`` returns at once. Its output says "waiting for data under DIR" until event
data written since the kernel started lands under DIR (by training in this kernel, a thread
of it, or another process); then that output becomes TensorBoard's own notebook frame (the
one ``%tensorboard`` shows) for a TensorBoard already serving DIR or a parent, or one
started for it — never a second one. The waiting is done by a watcher process, as for
``tb_lazy.autostart``: ``tb-lazy watch DIR --exit-with <kernel pid> --json``, which ends
with the kernel. TensorBoard itself follows ``TB_KEEP``.

    %tb_lazy DIR [--port P] [--host H] [--height PIXELS]
    %tb_lazy list                running TensorBoards (as ``tb-lazy list``)
    %tb_lazy stop DIR | --all    stop waiting for DIR, and the TensorBoard serving it (as ``tb-lazy stop``)
    %tb_lazy wait DIR [SECONDS]  block until DIR is served (for notebooks run headless)

IPython is imported only here, and only once the extension is loaded: the watcher itself
never needs it.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shlex
import subprocess
import sys
import threading
from typing import Any

from tb_lazy import cli
from tb_lazy.autostart import watch_command

PROG = "%tb_lazy"
HEIGHT = 800  # pixels, TensorBoard's own default for its notebook frame
USAGE = f"{PROG} DIR [--port P] [--host H] [--height PIXELS] | list | stop DIR|--all | wait DIR [SECONDS]"


class _Wait:
    """One watcher process for one folder, and the outputs (display handles) that show it."""

    def __init__(self, logdir: str, command: list[str]) -> None:
        self.logdir = logdir
        self.info: dict[str, Any] | None = None
        self.notes: list[str] = []
        self.served = threading.Event()  # set once the frames show TensorBoard, or the watcher ended
        self._lock = threading.Lock()
        self._handles: list[tuple[Any, int]] = []
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read_stderr, name="tb_lazy-notebook-stderr", daemon=True).start()
        threading.Thread(target=self._read_stdout, name="tb_lazy-notebook", daemon=True).start()

    def running(self) -> bool:
        return self.proc.poll() is None

    def attach(self, height: int) -> None:
        """A new output for this wait: TensorBoard's frame if it serves already, else the waiting line."""
        from IPython.display import display

        handle = display(_text(self._status()), raw=True, display_id=True)
        with self._lock:
            self._handles.append((handle, height))
            info = self.info
        if info is not None:
            _frame(handle, info["port"], height)

    def stop(self) -> None:
        """End the watcher (it finishes a launch in progress first); safe to call twice."""
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _status(self) -> str:
        lines = [f"waiting for data under {self.logdir}", *self.notes]
        if self.info is None and not self.running():
            code = self.proc.returncode
            lines.append("nothing was started" if code == 0 else f"tb-lazy watch ended with status {code}")
        return "\n".join(lines)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                info = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.info = info
                handles = list(self._handles)
            for handle, height in handles:
                _frame(handle, info["port"], height)
            self.served.set()
        self.proc.wait()
        if self.info is None:  # ended without serving: say why, in place of "waiting"
            self._refresh()
        self.served.set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.notes.append(line.rstrip("\n"))  # the "writer buffers" hint, a port switch, a warning
            if self.info is None:
                self._refresh()

    def _refresh(self) -> None:
        with self._lock:
            handles = [handle for handle, _ in self._handles]
        for handle in handles:
            handle.update(_text(self._status()), raw=True)


_waits: dict[str, _Wait] = {}  # by the folder's real path
_waits_lock = threading.Lock()


def _text(message: str) -> dict[str, str]:
    return {"text/plain": message, "text/html": f"<pre>{html.escape(message)}</pre>"}


def _frame(handle: Any, port: int, height: int) -> None:
    """TensorBoard's own notebook frame for ``port``, in place of ``handle``'s output.

    ``tensorboard.notebook._display`` is what ``%tensorboard`` and ``notebook.display``
    render with (an iframe in Jupyter, the proxied frame in Colab, TENSORBOARD_PROXY_URL
    honoured); only it takes a display handle to update.
    """
    from tensorboard import notebook

    notebook._display(port=port, height=height, display_handle=handle)


def show(logdir: str, *, port: int | None = None, host: str | None = None, height: int = HEIGHT) -> None:
    """Show TensorBoard for ``logdir`` in this cell's output once this kernel's data lands there."""
    key = os.path.realpath(logdir)
    with _waits_lock:
        wait = _waits.get(key)
        if wait is None or not wait.running():
            command = watch_command(os.path.abspath(logdir), host=host, port=port)
            wait = _waits[key] = _Wait(logdir, command)
    wait.attach(height)


def wait(logdir: str, *, timeout: float | None = None) -> str | None:
    """Block until the ``%tb_lazy`` output for ``logdir`` shows TensorBoard; its URL (None if
    not shown within ``timeout`` s, or nothing was started)."""
    with _waits_lock:
        pending = _waits.get(os.path.realpath(logdir))
    if pending is None:
        return None
    pending.served.wait(timeout)
    return None if pending.info is None else pending.info["url"]


def stop(logdir: str | None) -> int:
    """Stop waiting for ``logdir`` (all folders if None) and the TensorBoard tb_lazy started for it."""
    with _waits_lock:
        keys = list(_waits) if logdir is None else [os.path.realpath(logdir)]
        pending = [_waits.pop(key) for key in keys if key in _waits]
    for each in pending:
        each.stop()
    return cli.main(["stop", "--all"] if logdir is None else ["stop", logdir])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, usage=USAGE, add_help=False, exit_on_error=False)
    parser.add_argument("words", nargs="+")
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    parser.add_argument("--height", type=int, default=HEIGHT)
    parser.add_argument("--all", action="store_true")
    return parser


def magic(line: str) -> None:
    """The ``%tb_lazy`` line magic."""
    from IPython.core.error import UsageError

    try:
        args, extra = _parser().parse_known_args(shlex.split(line, comments=True))   # "# ..." ends it
    except (argparse.ArgumentError, ValueError, SystemExit) as error:
        raise UsageError(f"{error}; usage: {USAGE}") from None
    if extra:
        raise UsageError(f"unknown option {extra[0]!r}; usage: {USAGE}")
    command, rest = args.words[0], args.words[1:]
    if command == "list" and not rest:
        cli.main(["list"])
    elif command == "stop" and (len(rest) == 1) != args.all:
        stop(None if args.all else rest[0])
    elif command == "wait" and len(rest) in (1, 2):
        try:
            timeout = float(rest[1]) if len(rest) == 2 else None
        except ValueError:
            raise UsageError(f"SECONDS must be a number, not {rest[1]!r}; usage: {USAGE}") from None
        url = wait(rest[0], timeout=timeout)
        print(url or f"TensorBoard is not serving {rest[0]} (yet)", file=sys.stdout if url else sys.stderr)
    elif not rest and not args.all and command not in ("list", "stop", "wait"):  # a folder named so: ./list
        show(command, port=args.port, host=args.host, height=args.height)
    else:
        raise UsageError(f"usage: {USAGE}")


def register(ipython: Any) -> None:
    """Register ``%tb_lazy`` with ``ipython`` (what ``%load_ext tb_lazy`` does)."""
    ipython.register_magic_function(magic, magic_kind="line", magic_name="tb_lazy")
