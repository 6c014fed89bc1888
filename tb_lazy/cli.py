"""Command line: ``tb-lazy watch|list|stop`` (also ``python -m tb_lazy``).

Each command calls one library function and turns its outcome into output and an
exit status: 0 served / reused / nothing to do, 1 TensorBoard could not be started,
2 bad usage or bad input (one line, never a traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from tb_lazy import __version__
from tb_lazy.config import DEFAULT_HOST, DEFAULT_PORT, UsageError, check_logdir
from tb_lazy.launch import Failed, Served
from tb_lazy.messages import note, tunnel, warn
from tb_lazy.process import start_wall_time
from tb_lazy.state import registry
from tb_lazy.state.statefiles import shown
from tb_lazy.watch import Skipped, watch

PROG = "tb-lazy"
EPILOG = """\
environment (a flag beats its variable):
  TB_AUTO  1 (default) auto-start on; 0: 'watch' says so and exits 0
  TB_HOST  address TensorBoard listens on (default 127.0.0.1)
  TB_PORT  preferred port (default 6006); a busy one is replaced by a free one
  TB_KEEP  1 (default): TensorBoard outlives the run; 0: it stops when --exit-with ends
  TB_LAZY_STATE_DIR  where records and TensorBoard's logs go (default ~/.local/state/tb_lazy)
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{PROG}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Start TensorBoard only when a run actually writes TensorBoard logs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    w = commands.add_parser(
        "watch",
        help="wait until this run writes event data under DIR, then start (or reuse) TensorBoard",
        description="Wait until an event file (name contains 'tfevents') at any depth under DIR, which "
        "may not exist yet, gains data during this run: a record after the file's header, written since "
        "the watch began (or since --exit-with PID started). Old event files and header-only files don't "
        "count. Then start TensorBoard on all of DIR, or reuse one already serving DIR or a parent, and "
        "print its URL once it answers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.add_argument("logdir", metavar="DIR", help="log folder to watch (created later by training is fine)")
    w.add_argument("--host", help=f"address to listen on (default: TB_HOST or {DEFAULT_HOST})")
    w.add_argument("--port", help=f"preferred port (default: TB_PORT or {DEFAULT_PORT})")
    w.add_argument(
        "--exit-with", metavar="PID", help="stop waiting when process PID ends (and, without keep, stop TensorBoard)"
    )
    w.add_argument(
        "--keep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="leave TensorBoard running after the watched process ends (default: TB_KEEP or on)",
    )
    w.add_argument("--poll", metavar="SECONDS", help="poll every SECONDS instead of inotify (network file systems)")
    w.add_argument(
        "--existing", action="store_true", help="event data already under DIR counts too (serve old logs at once)"
    )
    w.add_argument("--timeout", metavar="SECONDS", help="give up (exit 0) if no event data is written within SECONDS")
    w.add_argument("--json", action="store_true", help="print one JSON object instead of the URL line")

    ls = commands.add_parser(
        "list", help="show running TensorBoards (URL, pid, state: serving/stopped/not answering, age, logdir, log file)"
    )
    ls.add_argument("--json", action="store_true", help="print a JSON array")

    st = commands.add_parser("stop", help="stop the TensorBoard tb_lazy started for DIR, or all of them")
    which = st.add_mutually_exclusive_group(required=True)
    which.add_argument("logdir", metavar="DIR", nargs="?", help="the log folder it serves")
    which.add_argument("--all", action="store_true", help="stop every TensorBoard tb_lazy started")
    return parser


def _print_served(served: Served, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(served.to_json(), ensure_ascii=False), flush=True)
        return
    print(served.line(), flush=True)
    if served.tunnel:
        tunnel(served.tunnel, served.port)


def _run_watch(args: argparse.Namespace) -> int:
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        outcome = watch(
            args.logdir,
            host=args.host,
            port=args.port,
            keep=args.keep,
            poll=args.poll,
            timeout=args.timeout,
            exit_with=args.exit_with,
            existing=args.existing,
            stop=stop,
            on_served=lambda served: _print_served(served, as_json=args.json),
            began=_process_start(args),
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    if isinstance(outcome, Failed):
        where = f" (TensorBoard's log: {outcome.log_file})" if outcome.log_file else ""
        print(f"{PROG}: error: {outcome.reason}{where}", file=sys.stderr)
        return 1
    if isinstance(outcome, Skipped):
        (warn if outcome.warning else note)(outcome.reason)
    return 0


def _process_start(args: argparse.Namespace) -> float | None:
    """The command's own process start, when ``main`` runs as the command (``argv`` None):
    the run began no later, so data written while Python was still importing counts.
    None when a caller runs ``main([...])`` in its own process: then the call is the start."""
    return start_wall_time(os.getpid()) if args.as_command else None


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _run_list(args: argparse.Namespace) -> int:
    instances = registry.running()
    states = [registry.state_of(i) for i in instances]
    if args.json:
        rows = [{"url": i.url, **i.to_json(), "state": state} for i, state in zip(instances, states, strict=True)]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not instances:
        note("no TensorBoard is running")
        return 0
    now = time.time()
    rows = [("URL", "PID", "STATE", "AGE", "LOGDIR", "LOG")]
    for i, state in zip(instances, states, strict=True):
        log = i.log_file or "(started outside tb_lazy)"
        age = _age(now - i.started) if i.started else "?"
        rows.append(tuple(map(shown, (i.url, str(i.pid), state, age, i.logdir, log))))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[5])
    return 0


def _run_stop(args: argparse.Namespace) -> int:
    target = None if args.all else check_logdir(args.logdir)
    stopped = registry.stop(target)
    for instance in stopped:
        print(f"stopped TensorBoard pid={instance.pid} ({instance.url}, logdir {shown(instance.logdir)})")
    if stopped or args.all:
        if not stopped:
            note("no TensorBoard started by tb_lazy is running")
        return 0
    wider = next((i for i in registry.running() if i.source == "tb_lazy" and i.serves(target)), None)
    parent = shown(wider.logdir) if wider else ""
    hint = f"; pid {wider.pid} serves its parent {parent}: 'tb-lazy stop {parent}'" if wider else ""
    exactly = shown(str(target))
    print(f"{PROG}: error: no TensorBoard started by tb_lazy serves exactly {exactly}{hint}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.as_command = argv is None
        run = {"watch": _run_watch, "list": _run_list, "stop": _run_stop}[args.command]
        return run(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped reading (`| head`, `| true`): nothing went wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as error:  # e.g. the state folder became unwritable mid-way
        where = f" ({error.filename})" if error.filename else ""
        print(f"{PROG}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
