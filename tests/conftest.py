"""Shared fixtures: an isolated tb_lazy state, real watchers, real TensorBoards, and cleanup.

Every test that may start TensorBoard uses ``tb_env``: tb_lazy's state folder and the
temp folder (where TensorBoard writes its own info files) live under the test's
tmp_path, so tests never see or reuse a TensorBoard running elsewhere on the machine.
At teardown every process the test started is stopped by PID; a TensorBoard or
watcher still running after that is a leak, and fails the test.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tb_lazy.config import RANK_VARIABLES
from tb_lazy.process import stop_process

REPO = Path(__file__).resolve().parent.parent
TB_VARIABLES = ("TB_AUTO", "TB_HOST", "TB_PORT", "TB_KEEP", "TB_LAZY_QUIET_REUSE", *RANK_VARIABLES)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pids_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text`` (never ourselves)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def tensorboard_pids(under: Path) -> list[int]:
    """Live TensorBoard server processes serving a folder under ``under``."""
    return [pid for pid in pids_mentioning(str(under)) if _is_tensorboard_main(pid)]


def _is_tensorboard_main(pid: int) -> bool:
    try:
        return b"tensorboard.main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def write_scalar(logdir: Path, tag: str = "train/loss", value: float = 1.5, step: int = 0) -> Path:
    """Write one scalar with tensorboardX, as a trainer would; return the event file."""
    from tensorboardX import SummaryWriter

    suffix = f".{os.getpid()}.{os.urandom(4).hex()}"  # two writers in one second never share a file
    writer = SummaryWriter(str(logdir), filename_suffix=suffix)
    writer.add_scalar(tag, value, step)
    writer.close()
    return next(Path(logdir).glob(f"*tfevents*{suffix}"))


def header_only(logdir: Path) -> Path:
    """A tensorboardX writer constructed and closed without logging: the file holds only its header."""
    from tensorboardX import SummaryWriter

    SummaryWriter(str(logdir)).close()
    return next(Path(logdir).glob("*tfevents*"))


def flush_scalar(writer, event_file: Path, tag: str = "train/loss", value: float = 1.0, step: int = 0) -> None:
    """``add_scalar`` then ``flush()`` as a trainer's log step does. tensorboardX's own writer
    thread may not have taken the scalar yet when ``flush()`` runs; a trainer's next log
    step flushes it — here, flushing again until the file grows does."""
    def flushed_beyond(size: int) -> int:
        deadline = time.monotonic() + 10
        while (now := event_file.stat().st_size) <= size and time.monotonic() < deadline:
            writer.flush()
            time.sleep(0.02)
        assert now > size, "tensorboardX never flushed"
        return now

    header = flushed_beyond(0) if event_file.stat().st_size == 0 else 0  # the header may still be buffered
    writer.add_scalar(tag, value, step)
    flushed_beyond(max(header, event_file.stat().st_size))


def append_record(event_file: Path) -> None:
    """Append one complete data record to ``event_file`` (copied from a fresh tensorboardX file)."""
    with tempfile.TemporaryDirectory() as scratch:
        data = write_scalar(Path(scratch)).read_bytes()
    header = 8 + 4 + int.from_bytes(data[:8], "little") + 4  # the file-version record's frame
    with open(event_file, "ab") as handle:
        handle.write(data[header:])


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_in_thread(logdir: Path, *, since: float | None = None, **options) -> tuple[threading.Thread, list]:
    """``wait_for_new_data`` with a real observer in a thread; returns once its watches are placed
    (its ``on_ready``). The run began now unless ``since`` says otherwise."""
    from tb_lazy.detect.detect import wait_for_new_data

    since = time.time() if since is None else since
    result: list = []
    ready = threading.Event()
    thread = threading.Thread(
        target=lambda: result.append(wait_for_new_data(logdir, since=since, on_ready=ready.set, **options)),
        daemon=True,
    )
    thread.start()
    assert wait_for(lambda: ready.is_set() or not thread.is_alive(), timeout=60), "the wait never got ready"
    return thread, result


def finish(thread: threading.Thread, result: list):
    """The outcome of a `wait_in_thread` wait, which must end within a minute."""
    thread.join(timeout=60)
    assert not thread.is_alive(), "the wait did not end"
    return result[0]


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


HPARAMS_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def session_groups(url: str) -> dict[str, dict]:
    """A TensorBoard's hparams session groups by run name (what its HPARAMS table lists)."""
    reply = post_json(url + "/data/plugin/hparams/session_groups",
                      {"startIndex": 0, "sliceSize": 100, "allowedStatuses": HPARAMS_STATUSES})
    return {group["name"]: group for group in reply.get("sessionGroups", [])}


def default_columns(experiment: dict) -> list[str]:
    """The hyper-parameters a HPARAMS table shows without a click, of those that differ between
    the runs: TensorBoard's frontend ticks the first five after putting the differing ones first."""
    infos = sorted(experiment["hparamInfos"], key=lambda h: not h.get("differs", False))[:5]
    return [h["name"] for h in infos if h.get("differs")]


def wait_for(predicate, timeout: float, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy (returned) or time runs out (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


class Proc:
    """A child process whose stdout/stderr lines are collected by threads."""

    def __init__(self, args: list[str], *, env: dict | None = None, cwd: Path | None = None, **popen) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env=env, cwd=cwd, **popen,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream, sink: list[str], announce: bool) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))
            if announce:
                self._lines.put(line.rstrip("\n"))
        if announce:
            self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def next_line(self, timeout: float = 60.0) -> str | None:
        """The next stdout line, or None if the process ended or time ran out."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc.pid, grace=10)
        try:
            self.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class TbEnv:
    """What a test needs to run watchers in isolation."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.port = int(env["TB_PORT"])
        self._procs: list[Proc] = []

    def run(self, *args: str, env: dict[str, str] | None = None, **popen) -> Proc:
        """Start ``python -m tb_lazy ARGS`` in the background."""
        proc = Proc([sys.executable, "-m", "tb_lazy", *args], env={**self.env, **(env or {})}, **popen)
        self._procs.append(proc)
        return proc

    def watching(self, proc: Proc, timeout: float = 30.0) -> None:
        """Wait until ``proc`` (a watcher) says its watches are placed (``<pid>.ready`` beside
        its announcement): from then on it sees whatever is written."""
        ready = self.root / "state" / "watchers" / f"{proc.pid}.ready"
        assert wait_for(lambda: ready.exists() or proc.proc.poll() is not None, timeout), "watcher never got ready"
        assert proc.proc.poll() is None, f"watcher ended early: {proc.stderr}"

    def spawn(self, args: list[str], env: dict[str, str] | None = None, **popen) -> Proc:
        """Start any helper process that teardown must stop."""
        proc = Proc(args, env={**self.env, **(env or {})}, **popen)
        self._procs.append(proc)
        return proc

    def cleanup(self) -> list[int]:
        """Stop everything started here; return the PIDs that had leaked past that."""
        for proc in self._procs:
            proc.stop()
        return stop_everything_under(self.root, self.env)


MLX_KERNELS = Path(tempfile.gettempdir()) / "mlx"  # where MLX keeps the CPU kernels it compiles


def isolated_env(root: Path) -> dict[str, str]:
    """This process's environment, with tb_lazy's state and the temp folder under ``root``,
    a free preferred port, no TB_* or rank variables, and the repo importable.

    MLX keeps its compiled CPU kernels in ``$TMPDIR/mlx``: that one folder is linked to the
    usual, warm one, or every isolated run would compile them again (minutes on 2 cores)."""
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    MLX_KERNELS.mkdir(exist_ok=True)
    if not (tmp / "mlx").exists():
        (tmp / "mlx").symlink_to(MLX_KERNELS, target_is_directory=True)
    env = {name: value for name, value in os.environ.items() if name not in TB_VARIABLES}
    env.update(
        TB_LAZY_STATE_DIR=str(root / "state"),
        TMPDIR=str(tmp),
        TB_PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    return env


def pipeline_env(root: Path, **extra: str) -> dict[str, str]:
    """``isolated_env`` for a pipeline run: this interpreter as PY, and TF_DIR, OUT_DIR and
    DATA_DIR under ``root``; ``extra`` on top."""
    env = isolated_env(root)
    env.update(PY=sys.executable, TF_DIR=str(root / "tf_dir"), OUT_DIR=str(root / "out"), DATA_DIR=str(root / "data"))
    env.update(extra)
    return env


def stop_everything_under(root: Path, env: dict[str, str]) -> list[int]:
    """Stop the TensorBoards tb_lazy started with ``env``'s state, then any process still
    naming ``root`` (by PID). Returns the PIDs of the latter: leaks."""
    subprocess.run([sys.executable, "-m", "tb_lazy", "stop", "--all"], env=env, capture_output=True, timeout=60)
    leaked = pids_mentioning(str(root))
    for pid in leaked:
        stop_process(pid, grace=5)
    return leaked


@pytest.fixture(scope="session", autouse=True)
def no_stray_tensorboards(tmp_path_factory: pytest.TempPathFactory):
    """For the whole session: auto-start off and tb_lazy's state in a temp folder, unless a test
    sets them itself (``tb_env`` does). A TensorBoard recorded there at the end was started by
    a test that didn't clean up after itself: it is stopped by PID, and the session errors."""
    root = tmp_path_factory.mktemp("session")
    patch = pytest.MonkeyPatch()
    patch.setenv("TB_AUTO", "0")
    patch.setenv("TB_LAZY_STATE_DIR", str(root / "state"))
    try:
        yield
    finally:
        patch.undo()
        env = {**os.environ, "TB_LAZY_STATE_DIR": str(root / "state")}
        result = subprocess.run([sys.executable, "-m", "tb_lazy", "stop", "--all"], env=env, capture_output=True,
                                text=True, timeout=120)
        stopped = [line for line in result.stdout.splitlines() if line.startswith("stopped")]
        assert not stopped, f"TensorBoards left running by tests outside tb_env: {stopped}"


@pytest.fixture
def tb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Isolated tb_lazy state and temp folder, a free preferred port, and leak checks."""
    env = isolated_env(tmp_path)
    for name in TB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in ("TB_LAZY_STATE_DIR", "TMPDIR", "TB_PORT", "PYTHONPATH"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setattr(tempfile, "tempdir", None)  # make tempfile read TMPDIR again
    env = TbEnv(tmp_path, dict(os.environ))
    try:
        yield env
    finally:
        leaked = env.cleanup()
    assert not leaked, f"processes left running after the test's own cleanup: {leaked}"


# ---- CI mode (tests/ci_mode.py): under CI=true a skip fails unless .ci/run allowed it ----------
from ci_mode import (  # noqa: E402, F401
    pytest_collectreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
