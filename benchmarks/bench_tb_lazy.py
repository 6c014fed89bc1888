"""Benchmark: tb_lazy's lazy TensorBoard against an eagerly started one, side by side.

    python benchmarks/bench_tb_lazy.py [--quick] [--seed 0]

Not a test: it prints one line per figure (tb_lazy, baseline, ratio, target, PASS/MISS).

1. detection latency of the data trigger, first record flushed to a header-only event file
   -> ``wait_for_new_data`` returns: inotify, and polling at 0.1 s and at the 1 s fallback
   interval (median and p90);
2. first scalar written -> its tag served by ``/data/plugin/scalars/tags``: a real
   ``python -m tb_lazy watch DIR`` started before training, against a TensorBoard started
   before training (default reload interval); interleaved, the eager side writing at fixed
   phases spread evenly over TensorBoard's 5 s reload cycle (the same every run);
   and the same lazy start in a log folder that already holds 200 old runs of 5,000 points
   (TensorBoard loads them too), each rep a new run;
3. idle cost of a waiting watcher against an idle TensorBoard (RSS of the whole process
   group, TensorBoard's Rust data server included; CPU over an idle window);
4. a log folder of 10,000 subfolders, watched with the trigger's event mask (files modified
   and closed after writing included): watcher start-up, and detection of data written to a
   new event file in a deep subfolder (and inotify queue overflows: none allowed); and a new
   deep folder made after start-up, then its event file: inotify against the 1 s polling
   fallback, interleaved.

Each figure prints its median, min / max, and its ratio to the baseline.

Everything runs in one temp folder (also TMPDIR and TB_LAZY_STATE_DIR of the children, so
no TensorBoard running elsewhere is reused); every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
from watchdog.events import FileSystemEventHandler
from watchdog.observers.api import BaseObserver

from tb_lazy.config import RANK_VARIABLES
from tb_lazy.detect.detect import WATCHED_EVENTS, Tree, wait_for_new_data
from tb_lazy.detect.observe import make_observer
from tb_lazy.launch import answers
from tb_lazy.process import stop_process

REPO = Path(__file__).resolve().parent.parent
TAG = "bench/loss"
HOST = "127.0.0.1"


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def _real_event_file() -> tuple[bytes, bytes]:
    """(header record, one scalar record), cut from a file tensorboardX writes now (the record
    carries its own wall time, and tb_lazy counts only records written since the watch began)."""
    from tensorboardX import SummaryWriter

    with tempfile.TemporaryDirectory() as scratch:
        writer = SummaryWriter(scratch)
        writer.add_scalar(TAG, 1.0, 0)
        writer.close()
        data = next(Path(scratch).glob("*tfevents*")).read_bytes()
    header = 8 + 4 + int.from_bytes(data[:8], "little") + 4
    return data[:header], data[header:]


HEADER, _ = _real_event_file()


def header_file(folder: Path) -> Path:
    """A header-only event file, as a writer's constructor leaves it (must not trigger)."""
    path = folder / f"events.out.tfevents.{time.time():.6f}.bench"
    path.write_bytes(HEADER)
    return path


def flush_record(path: Path) -> float:
    """Append one scalar record with a single write, as a writer's flush does; return the time just before."""
    header, record = _real_event_file()      # a record of now, made before the clock starts
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        t0 = time.perf_counter()
        os.write(fd, record if os.fstat(fd).st_size else header + record)
    finally:
        os.close(fd)
    return t0


def write_scalar(logdir: Path) -> float:
    """Write one scalar with tensorboardX as a trainer does; return the time it is on disk."""
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(logdir))
    writer.add_scalar(TAG, 1.0, 0)
    writer.close()
    return time.perf_counter()


def tag_served(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=2) as response:
            runs = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return any(TAG in tags for tags in runs.values())


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.025) -> float | None:
    """Poll until ``predicate()``; return the time it first held (None on timeout)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if predicate():
            return time.perf_counter()
        time.sleep(interval)
    return None


def group_processes(leader: int) -> list[psutil.Process]:
    """Live processes in the process group led by ``leader`` (children started in its session)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == leader and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def group_rss_mb(leader: int) -> float:
    total = 0
    for proc in group_processes(leader):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / 2**20


def group_cpu_seconds(leader: int) -> float:
    total = 0.0
    for proc in group_processes(leader):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


# ---------------------------------------------------------------- isolated children


class Sandbox:
    """One temp folder for logs, state and TMPDIR; children started here are stopped by PID."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bench_tb_lazy-"))
        (self.root / "tmp").mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TB_") and k not in RANK_VARIABLES}
        self.env.update(
            TB_LAZY_STATE_DIR=str(self.root / "state"),
            TMPDIR=str(self.root / "tmp"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
        )
        self.pids: list[int] = []
        self._count = 0

    def folder(self, name: str) -> Path:
        self._count += 1
        path = self.root / f"{self._count:03d}-{name}"
        path.mkdir()
        return path

    def start(self, args: list[str], *, stdout=None) -> subprocess.Popen:
        """Start a child in its own session (so its group, children included, can be measured
        and stopped); its stderr (and stdout unless given) go to a log file."""
        self._count += 1
        log = open(self.root / f"{self._count:03d}-{Path(args[2]).name}.log", "wb")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(
                args, env=self.env, stdin=subprocess.DEVNULL, stdout=stdout or log, stderr=log,
                start_new_session=True,
            )
        self.pids.append(proc.pid)
        return proc

    def watcher(self, logdir: Path, *extra: str) -> Watcher:
        port = str(free_port())
        proc = self.start([sys.executable, "-m", "tb_lazy", "watch", str(logdir), "--host", HOST, "--port", port,
                           *extra], stdout=subprocess.PIPE)
        return Watcher(self, proc)

    def tensorboard(self, logdir: Path) -> tuple[subprocess.Popen, str]:
        port = free_port()
        proc = self.start([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                           "--host", HOST, "--port", str(port)])
        if wait_until(lambda: proc.poll() is not None or answers(HOST, port, timeout=0.5), 60, 0.05) is None \
                or proc.poll() is not None:
            raise RuntimeError(f"TensorBoard did not come up on port {port} (see logs in {self.root})")
        return proc, f"http://{HOST}:{port}"

    def stop(self, pid: int) -> None:
        stop_process(pid, grace=5)
        if pid in self.pids:
            self.pids.remove(pid)

    def close(self) -> None:
        """Stop every child by PID, then every TensorBoard a watcher recorded, then remove the folder."""
        for pid in reversed(self.pids):
            stop_process(pid, grace=5)
        for record in (self.root / "state" / "running").glob("*.json"):
            try:
                stop_process(int(json.loads(record.read_text())["pid"]), grace=5)
            except (OSError, ValueError, KeyError, TypeError):
                continue
        shutil.rmtree(self.root, ignore_errors=True)


class Watcher:
    """A ``python -m tb_lazy watch`` child whose stdout lines arrive on a queue."""

    def __init__(self, box: Sandbox, proc: subprocess.Popen) -> None:
        self.box, self.proc, self.lines = box, proc, queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.decode(errors="replace").strip())
        self.lines.put(None)

    def wait_watching(self, timeout: float = 30) -> None:
        """Until the watcher has announced its watch (its observer is scheduled right after)."""
        marker = self.box.root / "state" / "watchers" / f"{self.proc.pid}.json"
        if wait_until(lambda: marker.exists() or self.proc.poll() is not None, timeout, 0.02) is None \
                or self.proc.poll() is not None:
            raise RuntimeError(f"watcher {self.proc.pid} did not start watching")

    def served(self, timeout: float = 60) -> tuple[str, int]:
        """URL and PID from the ``[tensorboard] URL (pid=N)`` line."""
        line = self.lines.get(timeout=timeout)
        match = re.match(r"\[tensorboard\] (\S+) \(pid=(\d+)", line or "")
        if not match:
            raise RuntimeError(f"watcher printed {line!r}, not a served line")
        tb_pid = int(match.group(2))
        self.box.pids.append(tb_pid)  # keep=on: TensorBoard outlives the watcher; we stop it
        return match.group(1), tb_pid


# ---------------------------------------------------------------- 1 and 4: detection in-process


class OverflowCounter(logging.Handler):
    """Counts watchdog's "Inotify queue overflowed" warnings instead of printing each one."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "overflowed" in record.getMessage():
            self.count += 1


OVERFLOWS = OverflowCounter()


def timed_wait(logdir: Path, *, poll: float | None, make: Callable[[Path], float] | None, phase: float,
               timeout: float = 30, factory: Callable[[float | None], BaseObserver] = make_observer,
               ) -> tuple[float, float | None]:
    """Run ``wait_for_new_data`` in a thread; return (start-up, latency) in seconds.

    Start-up: from the call until the waiter first checks its stop condition, which it does
    only after scan, schedule and second scan. Latency: from the first record's write
    (``phase`` seconds after start-up, to sample the polling phase) until the call returns;
    None if it was not seen within ``timeout``. By default the record goes to a header-only
    file that was there before the wait began.
    """
    ready = threading.Event()
    result: dict[str, object] = {}

    def first_check() -> bool:
        if not ready.is_set():
            result["ready"] = time.perf_counter()
            ready.set()
        return False

    def run() -> None:
        result["found"] = wait_for_new_data(
            logdir, since=since, poll=poll, timeout=timeout, should_stop=first_check, observer_factory=factory
        )
        result["done"] = time.perf_counter()

    waiting = header_file(logdir) if make is None else None
    since = time.time()
    thread = threading.Thread(target=run, daemon=True)
    t_call = time.perf_counter()
    thread.start()
    if not ready.wait(timeout):
        raise RuntimeError(f"watcher on {logdir} did not start within {timeout}s")
    time.sleep(phase)
    t0 = flush_record(waiting) if waiting else make(logdir)
    thread.join(timeout + 10)
    if thread.is_alive():
        raise RuntimeError(f"wait_for_new_data on {logdir} did not return")
    latency = None if result.get("found") is None else result["done"] - t0
    return result["ready"] - t_call, latency


def bench_detection(box: Sandbox, rng: random.Random, reps: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for label, poll in (("inotify", None), ("poll 0.1 s", 0.1), ("poll 1 s", 1.0)):
        samples[label] = []
        for _ in range(reps):
            _, latency = timed_wait(box.folder("detect"), poll=poll, make=None, phase=rng.uniform(0, poll or 0.02))
            if latency is None:
                raise RuntimeError(f"detection with {label} missed the first record of a header-only file")
            samples[label].append(latency)
        say(f"detection {label}: median {1e3 * median(samples[label]):.1f} ms")
    return samples


def build_wide_tree(root: Path, shape: tuple[int, int, int]) -> list[Path]:
    """``a x b x c`` leaf folders at depth 3 (10 x 10 x 100 = 10,000); return the leaves."""
    leaves = []
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                leaf = root / f"run{i:02d}" / f"seed{j:02d}" / f"part{k:03d}"
                leaf.mkdir(parents=True)
                leaves.append(leaf)
    return leaves


def bench_wide(box: Sandbox, rng: random.Random, reps: int, timeout: float) -> dict[str, list]:
    root = box.folder("wide")
    t = time.perf_counter()
    leaves = build_wide_tree(root, (10, 10, 100))
    say(f"built {len(leaves):,} leaf folders in {time.perf_counter() - t:.1f}s")
    out: dict[str, list] = {"leaves": [len(leaves)], "scan": [], "schedule": []}
    for _ in range(reps):
        # the parts of start-up, on their own: one scan, and one recursive schedule
        t = time.perf_counter()
        assert Tree(os.fspath(root)).files == []
        out["scan"].append(time.perf_counter() - t)
        observer = make_observer(None)
        observer.start()
        try:
            t = time.perf_counter()
            observer.schedule(FileSystemEventHandler(), os.fspath(root), recursive=True, event_filter=WATCHED_EVENTS)
            out["schedule"].append(time.perf_counter() - t)
        finally:
            observer.stop()
            observer.join(5)
        # the real thing: start-up, then a new event file with its header and first record, deep down
        leaf = rng.choice(leaves)
        before = OVERFLOWS.count
        new_file = leaf / f"events.out.tfevents.{time.time():.6f}.bench"
        up, late = timed_wait(root, poll=None, make=lambda _root, path=new_file: flush_record(path),
                              phase=0.05, timeout=timeout)
        out.setdefault("startup", []).append(up)
        out.setdefault("latency", []).append(late)
        out.setdefault("overflows", []).append(OVERFLOWS.count - before)
        for event_file in leaf.glob("*tfevents*"):
            event_file.unlink()
        seen = "not seen" if late is None else f"{1e3 * late:.0f} ms"
        say(f"10k folders: start-up {up:.2f}s, detection {seen}, {OVERFLOWS.count - before} inotify queue overflows")
    # a new deep folder made after start-up (a new run's stage folder), then its event file:
    # inotify (watches added as the folders appear) against the 1 s polling fallback, interleaved
    for rep in range(reps):
        for label, poll in (("inotify", None), ("poll 1 s", 1.0)) if rep % 2 == 0 else (("poll 1 s", 1.0),
                                                                                       ("inotify", None)):
            parent = rng.choice(leaves).parent
            new_file = parent / f"new-{label[:4]}-{rep}" / "stage" / "sub" / f"events.out.tfevents.{rep}.bench"

            def make(_root: Path, path: Path = new_file) -> float:
                t0 = time.perf_counter()
                path.parent.mkdir(parents=True)
                flush_record(path)
                return t0

            _, late = timed_wait(root, poll=poll, make=make, phase=0.05, timeout=timeout)
            out.setdefault(f"deep {label}", []).append(late)
            new_file.unlink()  # the next wait must not take it for its own
            say(f"10k folders, new deep folder, {label}: {'not seen' if late is None else ms(late)}")
    return out


# ---------------------------------------------------------------- 2: scalar written -> tag served


def lazy_once(box: Sandbox, logdir: Path | None = None) -> float:
    """Scalar written -> tag served through ``tb-lazy watch``, in a new folder, or in a new run
    folder of ``logdir`` (which then holds the old runs TensorBoard loads too)."""
    new_run = box.folder("e2e-lazy") if logdir is None else logdir / f"new-{time.time_ns()}"
    logdir = logdir or new_run
    watcher = box.watcher(logdir)
    try:
        watcher.wait_watching()
        time.sleep(0.5)  # a watcher started well before training: settled, observer scheduled
        t_written = write_scalar(new_run)
        url, tb_pid = watcher.served()
        try:
            t_served = wait_until(lambda: tag_served(url), 30)
        finally:
            box.stop(tb_pid)
    finally:
        box.stop(watcher.proc.pid)
    if t_served is None:
        raise RuntimeError("tb_lazy's TensorBoard never served the tag")
    return t_served - t_written


def old_runs(box: Sandbox, runs: int, points: int) -> Path:
    """A log folder of ``runs`` finished runs of ``points`` scalars each (another tag), written
    by tensorboardX as an hour ago (each event's wall time, and the files' times): runs of an
    earlier day, not records of a moment ago, which a watcher counts as its run's (its start is
    known to the clock tick, and it errs toward missing nothing)."""
    from tensorboardX import SummaryWriter

    logdir = box.folder("old-runs")
    hour_ago = time.time() - 3600
    for r in range(runs):
        writer = SummaryWriter(str(logdir / f"old-{r:03d}"))
        for step in range(points):
            writer.add_scalar("old/loss", 1.0 / (step + 1), step, walltime=hour_ago + step * 0.1)
        writer.close()
    for path in logdir.rglob("*"):
        os.utime(path, (hour_ago + 600, hour_ago + 600))
    return logdir


def bench_first_curve_beside_old_runs(box: Sandbox, reps: int, runs: int, points: int) -> list[float]:
    """Scalar written -> tag served through ``tb-lazy watch`` when the log folder already holds
    ``runs`` old runs: each rep writes a new run, which is removed afterwards."""
    tic = time.perf_counter()
    logdir = old_runs(box, runs, points)
    say(f"{runs} old runs of {points:,} points written in {time.perf_counter() - tic:.0f}s")
    times = []
    for i in range(reps):
        times.append(lazy_once(box, logdir))
        for new in logdir.glob("new-*"):
            shutil.rmtree(new)
        say(f"scalar -> tag served beside {runs} old runs, rep {i + 1}: {times[-1]:.2f}s")
    return times


def eager_once(box: Sandbox, phase: float) -> float:
    logdir = box.folder("e2e-eager")
    proc, url = box.tensorboard(logdir)
    try:
        time.sleep(phase)  # training starts this far into TensorBoard's 5 s reload cycle
        t_written = write_scalar(logdir)
        t_served = wait_until(lambda: tag_served(url), 30)
    finally:
        box.stop(proc.pid)
    if t_served is None:
        raise RuntimeError("eager TensorBoard never served the tag")
    return t_served - t_written


def bench_end_to_end(box: Sandbox, reps: int) -> dict[str, list[float]]:
    """Interleaved (the order alternates), so the machine's noise hits both alike. The eager side's
    reload phase is not random: rep i writes at 0.5 s + 5 s * (i + 0.5) / reps after TensorBoard
    answers, the same phases every run, spread evenly over its 5 s reload cycle."""
    lazy, eager = [], []
    for i in range(reps):
        phase = 0.5 + 5.0 * (i + 0.5) / reps
        if i % 2 == 0:
            lazy.append(lazy_once(box))
            eager.append(eager_once(box, phase))
        else:
            eager.append(eager_once(box, phase))
            lazy.append(lazy_once(box))
        say(f"scalar -> tag served, rep {i + 1}: lazy {lazy[-1]:.2f}s, eager {eager[-1]:.2f}s")
    return {"lazy": lazy, "eager": eager}


# ---------------------------------------------------------------- 3: idle cost


def bench_idle(box: Sandbox, window: float) -> dict[str, float]:
    watcher = box.watcher(box.folder("idle-watch"))
    proc, _url = box.tensorboard(box.folder("idle-tb"))
    try:
        watcher.wait_watching()
        time.sleep(2.0)  # both settled: TensorBoard's data server up, the watcher waiting
        leaders = {"lazy": watcher.proc.pid, "eager": proc.pid}
        cpu0 = {k: group_cpu_seconds(pid) for k, pid in leaders.items()}
        rss0 = {k: group_rss_mb(pid) for k, pid in leaders.items()}
        time.sleep(window)
        cpu1 = {k: group_cpu_seconds(pid) for k, pid in leaders.items()}
        rss1 = {k: group_rss_mb(pid) for k, pid in leaders.items()}
        result = {}
        for k, pid in leaders.items():
            result[f"{k}_rss"] = max(rss0[k], rss1[k])
            result[f"{k}_cpu"] = 100 * (cpu1[k] - cpu0[k]) / window
            result[f"{k}_procs"] = len(group_processes(pid))
        if watcher.proc.poll() is not None:
            raise RuntimeError("the idle watcher ended during the idle window")
    finally:
        box.stop(proc.pid)
        box.stop(watcher.proc.pid)
    say(f"idle: watcher {result['lazy_rss']:.1f} MB ({result['lazy_procs']} process(es)), "
        f"TensorBoard {result['eager_rss']:.1f} MB ({result['eager_procs']} process(es))")
    return result


# ---------------------------------------------------------------- report


def say(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def ms(x: float) -> str:
    return f"{1e3 * x:.1f} ms"


def secs(x: float) -> str:
    return f"{x:.2f} s"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def table(rows: list[tuple[str, str, str, str, str, str]]) -> str:
    header = ("figure", "tb_lazy", "baseline", "ratio", "target", "result")
    rows = [header, *rows]
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ratio(a: float, b: float) -> str:
    if not b:
        return "-"
    return f"{a / b:.2f}" if a / b >= 0.1 else f"{a / b:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (5 of each; a few minutes)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random timing phases")
    parser.add_argument("--wide-timeout", type=float, default=5.0,
                        help="seconds to wait for the deep event file in the 10,000-folder tree")
    args = parser.parse_args(argv)
    watchdog_log = logging.getLogger("watchdog")
    watchdog_log.addHandler(OVERFLOWS)
    watchdog_log.propagate = False
    reps = {"detect": 5, "e2e": 5, "wide": 5, "idle": 3.0} if args.quick else \
        {"detect": 20, "e2e": 10, "wide": 5, "idle": 5.0}
    rng = random.Random(args.seed)
    started = time.perf_counter()
    box = Sandbox()
    try:
        detect = bench_detection(box, rng, reps["detect"])
        wide = bench_wide(box, rng, reps["wide"], args.wide_timeout)
        idle = bench_idle(box, reps["idle"])
        e2e = bench_end_to_end(box, reps["e2e"])
        beside = bench_first_curve_beside_old_runs(box, reps["e2e"], runs=200, points=5000)
    finally:
        box.close()

    n, rows = reps["detect"], []
    ino = detect["inotify"]
    rows.append((f"detect first record, inotify, median of {n}", ms(median(ino)), "", "", "<= 10 ms",
                 verdict(median(ino) <= 0.010)))
    rows.append((f"detect, inotify, p90 of {n}", ms(p90(ino)), "", "", "", "-"))
    for label in ("poll 0.1 s", "poll 1 s"):
        rows.append((f"detect, inotify vs {label}, min / max", f"{ms(min(ino))} / {ms(max(ino))}",
                     f"{ms(min(detect[label]))} / {ms(max(detect[label]))}", "", "", "-"))
    for label in ("poll 0.1 s", "poll 1 s"):
        for name, stat in (("median", median), ("p90", p90)):
            rows.append((f"detect, inotify vs {label}, {name}", ms(stat(ino)), ms(stat(detect[label])),
                         ratio(stat(ino), stat(detect[label])), "", "-"))
    lazy, eager = median(e2e["lazy"]), median(e2e["eager"])
    rows.append((f"scalar -> tag served, median of {len(e2e['lazy'])}", secs(lazy), secs(eager),
                 ratio(lazy, eager), "<= eager", verdict(lazy <= eager)))
    rows.append(("  min / max", f"{secs(min(e2e['lazy']))} / {secs(max(e2e['lazy']))}",
                 f"{secs(min(e2e['eager']))} / {secs(max(e2e['eager']))}", "", "", "-"))
    for label, xs in ((f"lazy first curve, empty folder, slowest of {len(e2e['lazy'])}", e2e["lazy"]),
                      (f"lazy first curve beside 200 old runs of 5,000 points, slowest of {len(beside)}", beside)):
        rows.append((label, secs(max(xs)), "", "", "<= 1.5 s", verdict(max(xs) <= 1.5)))
        rows.append(("  min / median", f"{secs(min(xs))} / {secs(median(xs))}", "", "", "", "-"))
    rows.append(("idle RSS, watcher vs TensorBoard", f"{idle['lazy_rss']:.1f} MB", f"{idle['eager_rss']:.1f} MB",
                 ratio(idle["lazy_rss"], idle["eager_rss"]), "<= 0.25",
                 verdict(idle["lazy_rss"] <= 0.25 * idle["eager_rss"])))
    rows.append((f"idle CPU over {reps['idle']:g} s", f"{idle['lazy_cpu']:.1f} %", f"{idle['eager_cpu']:.1f} %",
                 ratio(idle["lazy_cpu"], idle["eager_cpu"]), "~0 % (<= 1 %)", verdict(idle["lazy_cpu"] <= 1.0)))
    leaves = wide["leaves"][0]
    rows.append((f"{leaves:,} folders: scan + recursive schedule", f"{median(wide['scan']):.2f} + "
                 f"{median(wide['schedule']):.2f} s", "", "", "", "-"))
    up, late, k = wide["startup"], wide["latency"], len(wide["startup"])
    rows.append((f"{leaves:,} folders: start-up, median of {k}", secs(median(up)), "", "", "<= 2 s",
                 verdict(median(up) <= 2.0)))
    seen = [x for x in late if x is not None]
    missed = len(late) - len(seen)
    value = ms(median(seen)) if not missed else f"{missed}/{k} not seen in {args.wide_timeout:g} s"
    rows.append((f"{leaves:,} folders: detect deep new data", value, "", "", "<= 50 ms",
                 verdict(not missed and median(seen) <= 0.050)))
    rows.append(("  inotify queue overflows", str(sum(wide["overflows"])), "", "", "0",
                 verdict(sum(wide["overflows"]) == 0)))
    ino_deep, poll_deep = wide["deep inotify"], wide["deep poll 1 s"]
    if None in ino_deep or None in poll_deep:
        rows.append((f"{leaves:,} folders: new deep folder", f"{ino_deep.count(None)}/{k} not seen",
                     f"{poll_deep.count(None)}/{k} not seen", "", "all seen", "MISS"))
    else:
        rows.append((f"{leaves:,} folders: new deep folder, median of {k}", ms(median(ino_deep)),
                     ms(median(poll_deep)), ratio(median(ino_deep), median(poll_deep)), "<= 50 ms",
                     verdict(median(ino_deep) <= 0.050)))
        rows.append(("  min / max", f"{ms(min(ino_deep))} / {ms(max(ino_deep))}",
                     f"{ms(min(poll_deep))} / {ms(max(poll_deep))}", "", "", "-"))
    print(table(rows))
    print(f"\n({'quick' if args.quick else 'full'} run, {time.perf_counter() - started:.0f} s; "
          f"{os.cpu_count()} CPUs; baseline = polling observer (detect), eager TensorBoard (rest))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
