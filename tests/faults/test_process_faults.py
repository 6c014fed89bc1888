"""Fault injection for tb_lazy's process handling: whom it signals, what it records, bad state.

Every test uses real processes: an unrelated process given a recorded PID, watchers
SIGKILLed mid-launch, a state folder on a full tmpfs, a socket that never accepts.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, free_port, get_json, tensorboard_pids, wait_for, write_scalar

import tb_lazy.launch
from tb_lazy.cli import main
from tb_lazy.process import MAX_PID, pid_alive, stop_process

pytestmark = pytest.mark.faults

SLEEPER = [sys.executable, "-c", "import time; time.sleep(999)", "--tensorboard_dir", "x"]


def tb_lazy_cli(tb_env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m tb_lazy ARGS`` to completion, in the test's isolated state."""
    return subprocess.run(
        [sys.executable, "-m", "tb_lazy", *args], env=tb_env.env, capture_output=True, text=True, timeout=timeout
    )


def records(tb_env) -> Path:
    return Path(tb_env.env["TB_LAZY_STATE_DIR"]) / "running"


def record_of(process: psutil.Process, **fields) -> dict:
    """A record in tb_lazy's format naming ``process`` exactly (fields override)."""
    record = {
        "pid": process.pid, "host": "127.0.0.1", "port": 1, "logdir": "/x", "started": time.time(),
        "log_file": None, "source": "tb_lazy", "create_time": process.create_time(),
        "cmdline": process.cmdline(), "keep": True, "owner": None,
    }
    return {**record, **fields}


def write_record(tb_env, record: dict | str, name: str | None = None) -> Path:
    folder = records(tb_env)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{record['pid']}.json")  # type: ignore[index]
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def write_record_at(state: Path, record: dict) -> Path:
    path = state / "running" / f"{record['pid']}.json"
    path.write_text(json.dumps(record))
    return path


def served_line(line: str | None) -> dict:
    assert line is not None, "the watcher printed no URL line"
    return json.loads(line)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


# 1. Identity, not names -------------------------------------------------------------------


def test_stop_all_never_signals_an_unrelated_process_with_a_recorded_pid(tb_env):
    """The issue's repro (a trainer-like sleeper with ``--tensorboard_dir`` in its command line,
    its PID in an old-style record), plus a reused PID (right PID and command line, other
    start time), plus a right PID and start time with another command line."""
    sleeper = tb_env.spawn(SLEEPER)
    process = psutil.Process(sleeper.pid)
    wait_for(lambda: process.cmdline()[-1:] == ["x"], timeout=10)
    old_style = {"pid": sleeper.pid, "host": "127.0.0.1", "port": 1, "logdir": "/x", "started": 0}
    for record in (
        old_style,
        record_of(process, create_time=process.create_time() - 3600),  # the PID's earlier owner
        record_of(process, cmdline=[sys.executable, "-m", "tensorboard.main", "--logdir", "/x"]),
    ):
        write_record(tb_env, record)
        result = tb_lazy_cli(tb_env, "stop", "--all")
        assert result.returncode == 0, result.stderr
        no_traceback(result)
        assert sleeper.proc.poll() is None, f"stop --all killed an unrelated process given record {record}"
        assert not (records(tb_env) / f"{sleeper.pid}.json").exists(), "an untrusted record is dropped"
    # TensorBoard's own info file naming the sleeper's PID, written before the sleeper started
    info_dir = Path(tb_env.env["TMPDIR"]) / ".tensorboard-info"
    info_dir.mkdir(exist_ok=True)
    info = {"pid": sleeper.pid, "port": 1, "logdir": "/x", "start_time": int(process.create_time()) - 3600}
    (info_dir / f"pid-{sleeper.pid}.info").write_text(json.dumps(info))
    listed = tb_lazy_cli(tb_env, "list", "--json")
    assert json.loads(listed.stdout) == [], "an info file older than its PID's process is not trusted"
    assert tb_lazy_cli(tb_env, "stop", "--all").returncode == 0 and sleeper.proc.poll() is None


def test_reuse_requires_the_recorded_folder_on_the_port(tb_env):
    """A trusted record whose port is answered by a TensorBoard serving another folder is not reused."""
    other, logdir = tb_env.root / "other", tb_env.root / "logs"
    write_scalar(other)
    port = free_port()
    by_hand = tb_env.spawn(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(other), "--host", "127.0.0.1", "--port", str(port)]
    )
    assert wait_for(lambda: tb_lazy.launch.answers("127.0.0.1", port), timeout=60)
    write_record(tb_env, record_of(psutil.Process(by_hand.pid), port=port, logdir=str(logdir)))
    watcher = tb_env.run("watch", str(logdir), "--json")
    tb_env.watching(watcher)
    write_scalar(logdir)
    info = served_line(watcher.next_line(60))
    assert not info["reused"] and info["pid"] != by_hand.pid and info["port"] != port
    assert get_json(f"{info['url']}/data/environment")["data_location"] == str(logdir)
    assert watcher.wait() == 0


# 5. Recorded before it can be orphaned ------------------------------------------------------


def test_watcher_sigkilled_during_launch_leaves_a_tensorboard_stop_dir_stops(tb_env):
    """The record appears right after TensorBoard is spawned; the watcher is killed then,
    before TensorBoard serves (a real TensorBoard takes about a second to answer)."""
    logdir = tb_env.root / "logs"
    watcher = tb_env.run("watch", str(logdir))
    tb_env.watching(watcher)
    write_scalar(logdir)
    recorded = wait_for(lambda: list(records(tb_env).glob("*.json")), timeout=60, interval=0.005)
    os.kill(watcher.pid, signal.SIGKILL)
    assert watcher.wait() == -signal.SIGKILL
    assert watcher.stdout == [], "the watcher was to be killed before TensorBoard served"
    pid = int(recorded[0].stem)
    assert pid_alive(pid), "TensorBoard outlives its watcher (TB_KEEP=1)"
    listed = json.loads(tb_lazy_cli(tb_env, "list", "--json").stdout)
    assert [(i["pid"], i["logdir"]) for i in listed] == [(pid, str(logdir))], "not '(started outside tb_lazy)'"
    result = tb_lazy_cli(tb_env, "stop", str(logdir))
    assert result.returncode == 0 and f"pid={pid}" in result.stdout, result.stderr
    assert not pid_alive(pid) and tensorboard_pids(tb_env.root) == []


def test_no_keep_tensorboard_whose_watcher_was_sigkilled_is_stopped_by_the_next_list(tb_env):
    logdir = tb_env.root / "logs"
    parent = tb_env.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    watcher = tb_env.run("watch", str(logdir), "--exit-with", str(parent.pid), "--json", env={"TB_KEEP": "0"})
    tb_env.watching(watcher)
    write_scalar(logdir)
    pid = served_line(watcher.next_line(60))["pid"]
    os.kill(watcher.pid, signal.SIGKILL)
    watcher.wait()
    assert pid_alive(pid), "nothing has noticed yet"
    result = tb_lazy_cli(tb_env, "list")
    assert result.returncode == 0
    assert f"stopped TensorBoard pid={pid}" in result.stderr and "TB_KEEP=0" in result.stderr, result.stderr
    assert not pid_alive(pid) and tensorboard_pids(tb_env.root) == []
    assert list(records(tb_env).glob("*.json")) == []


def test_state_folder_on_a_full_disk_fails_cleanly_and_leaves_nothing_running(tb_env):
    """A real tmpfs of 256 KiB as the state folder, filled to its last page once the watcher
    runs: TensorBoard's log takes that page, so the record can't be written."""
    state = Path(tb_env.env["TB_LAZY_STATE_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(state)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        logdir = tb_env.root / "logs"
        watcher = tb_env.run("watch", str(logdir))
        tb_env.watching(watcher)
        stats = os.statvfs(state)
        with open(state / "filler", "wb") as filler:
            filler.write(b"\0" * ((stats.f_bavail - 1) * stats.f_frsize))
        write_scalar(logdir)
        assert watcher.wait(timeout=120) == 1
        assert len(watcher.stderr) == 1, watcher.stderr
        assert "can't record TensorBoard" in watcher.stderr[0] and "No space left" in watcher.stderr[0]
        assert tensorboard_pids(tb_env.root) == [], "a TensorBoard runs unrecorded"
        assert list(records(tb_env).iterdir()) == [], "no record, no .json.tmp left behind"
    finally:
        for proc in tb_env._procs:
            proc.stop()
        if subprocess.run(["umount", str(state)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(state)], capture_output=True)


# 7 and 10. State of any shape; leftovers of failed writes -----------------------------------


def test_state_files_of_any_shape_are_skipped_with_one_warning(tb_env):
    folder = records(tb_env)
    write_record(tb_env, '{"pid":"1","host":"127.0.0.1","port":1,"logdir":"/x","started":0}', "1.json")
    write_record(tb_env, "[1, 2, 3]", "2.json")
    write_record(tb_env, "\x00\xff garbage {", "3.json")
    write_record(tb_env, json.dumps({"pid": 10**30, "port": 6006, "logdir": "/x"}), "4.json")
    write_record(tb_env, "[" * 100_000 + "]" * 100_000, "5.json")
    write_record(tb_env, json.dumps({"pid": 6, "port": 2**70, "host": "h", "logdir": "/x", "started": 1e400}), "6.json")
    info_dir = Path(tb_env.env["TMPDIR"]) / ".tensorboard-info"
    info_dir.mkdir(exist_ok=True)
    (info_dir / "pid-7.info").write_text('{"pid": "7", "port": null}')
    # temporaries of this (live) process: the old one goes by its age, the fresh one stays
    old_tmp, fresh_tmp = (folder / f".tmp_{n}.json_{os.getpid()}_{token}"
                          for n, token in ((8, "0123abcd"), (9, "4567cdef")))
    for tmp in (old_tmp, fresh_tmp):
        tmp.write_text('{"pid": 8')
    os.utime(old_tmp, (time.time() - 3600, time.time() - 3600))

    # the first command drops the bad records (ours); TensorBoard's info files are only ever read
    runs = ((["list"], "ignored 7 unreadable"), (["stop", "--all"], None), (["list", "--json"], "pid-7"))
    for args, expected in runs:
        result = tb_lazy_cli(tb_env, *args)
        assert result.returncode == 0, result.stderr
        no_traceback(result)
        warnings = [line for line in result.stderr.splitlines() if line.startswith("[warn]")]
        assert len(warnings) == (expected is not None), result.stderr
        assert expected is None or expected in warnings[0], result.stderr
    assert sorted(p.name for p in folder.iterdir()) == [fresh_tmp.name], "bad records and old .tmp files are gone"

    logdir = tb_env.root / "logs"
    watcher = tb_env.run("watch", str(logdir), "--json")
    tb_env.watching(watcher)
    write_scalar(logdir)
    assert not served_line(watcher.next_line(60))["reused"]
    assert watcher.wait() == 0
    assert [line for line in watcher.stderr if line.startswith("[warn]")] == [watcher.stderr[0]]
    assert not any("Traceback" in line for line in watcher.stderr)


# 8. A port squatter that never accepts --------------------------------------------------------


def squatter(port: int) -> tuple[socket.socket, socket.socket]:
    """A loopback listener that never accepts, with its one-slot queue already full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    filler = socket.socket()
    filler.settimeout(2)
    filler.connect(("127.0.0.1", port))
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(TimeoutError):  # the queue is full: connects now hang
        probe.connect(("127.0.0.1", port))
    probe.close()
    return listener, filler


@pytest.mark.parametrize("host", ["127.0.0.2", "::1"])
def test_squatter_on_loopback_is_skipped(tb_env, host):
    """TensorBoard first connects to localhost:PORT; a squatter there whose queue is full made
    that connect hang, whatever address TensorBoard itself was to listen on."""
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    logdir = tb_env.root / "logs"
    listener, filler = squatter(tb_env.port)
    try:
        watcher = tb_env.run("watch", str(logdir), "--host", host, "--json")
        tb_env.watching(watcher)
        write_scalar(logdir)
        info = served_line(watcher.next_line(50))  # before the fix: nothing for 60 s, then exit 1
        assert info["port"] != tb_env.port and not info["reused"]
        assert watcher.wait() == 0
    finally:
        filler.close()
        listener.close()


def test_squatter_taking_the_port_after_the_check_is_left_for_the_next_port(tb_env, capsys, monkeypatch):
    """Stand-in for the timing only: the check says the preferred port is free; a real
    squatter whose queue is full holds it, so TensorBoard hangs in its own port check."""
    logdir = tb_env.root / "logs"
    real_check = tb_lazy.launch.port_is_free
    monkeypatch.setattr(
        tb_lazy.launch, "port_is_free", lambda host, port: port == tb_env.port or real_check(host, port)
    )
    listener, filler = squatter(tb_env.port)
    try:
        writer = threading.Timer(1.0, write_scalar, args=(logdir,))
        writer.start()
        assert main(["watch", str(logdir), "--json"]) == 0  # before the fix: 60 s, then exit 1
        writer.join()
        info = json.loads(capsys.readouterr().out)
        assert info["port"] != tb_env.port
        assert get_json(f"{info['url']}/data/environment")["data_location"] == str(logdir)
    finally:
        filler.close()
        listener.close()


# 9a. PIDs beyond the platform's range ---------------------------------------------------------


@pytest.mark.parametrize("pid", ["2147483648", str(MAX_PID + 1), "99999999999999999999999"])
def test_exit_with_beyond_the_pid_range_is_one_line_exit_2(tb_env, pid):
    result = tb_lazy_cli(tb_env, "watch", str(tb_env.root / "logs"), "--exit-with", pid)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and f"--exit-with='{pid}' is not a process id" in result.stderr
    no_traceback(result)


# 10. A newline in DIR -------------------------------------------------------------------------


def test_newline_in_dir_keeps_the_list_table_one_row_per_tensorboard(tb_env):
    logdir = tb_env.root / "two\nlines\tand\x1bescape"
    watcher = tb_env.run("watch", str(logdir), "--json")
    tb_env.watching(watcher)
    write_scalar(logdir)
    info = served_line(watcher.next_line(60))
    assert info["logdir"] == str(logdir) and watcher.wait() == 0
    result = tb_lazy_cli(tb_env, "list")
    rows = result.stdout.splitlines()
    assert len(rows) == 2 and rows[0].startswith("URL"), result.stdout
    assert repr(str(logdir)) in rows[1] and str(info["pid"]) in rows[1]
    assert json.loads(tb_lazy_cli(tb_env, "list", "--json").stdout)[0]["logdir"] == str(logdir)
    stopped = tb_lazy_cli(tb_env, "stop", str(logdir))
    assert stopped.returncode == 0 and len(stopped.stdout.splitlines()) == 1, stopped.stdout


# Issue 15, item 1. A clock step never loses nor fakes a TensorBoard --------------------------

# Stand-in for a clock step (the machine's real clock is not stepped in tests): the checking
# process sees psutil's boot time moved by SHIFT seconds, exactly what a VM pause, a suspend
# and resume or an NTP step does to ``btime`` in /proc/stat, and so to every ``create_time()``.
SHIFTED_CLI = """
import sys
import psutil, psutil._pslinux as linux
real, shift = linux.boot_time, float(sys.argv[1])
linux.boot_time = psutil.boot_time = lambda: real() + shift
from tb_lazy.cli import main
sys.argv = ["tb-lazy", *sys.argv[2:]]
sys.exit(main())
"""


def shifted_cli(tb_env, shift: float, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``tb-lazy ARGS`` in a process whose view of the boot time is ``shift`` seconds off."""
    return subprocess.run([sys.executable, "-c", SHIFTED_CLI, str(shift), *args], env=tb_env.env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="psutil's Linux boot time is what a clock step moves")
def test_a_clock_step_either_way_keeps_the_tensorboard_known(tb_env):
    logdir = tb_env.root / "tf_dir"
    write_scalar(logdir / "pretrain")
    first = tb_env.run("watch", str(logdir), "--existing", "--json")
    pid = served_line(first.next_line(60))["pid"]
    assert first.wait() == 0
    for step, shift in enumerate((12.0, -12.0)):
        seen = shifted_cli(tb_env, 0.0, "list", "--json")
        moved = json.loads(shifted_cli(tb_env, shift, "list", "--json").stdout or "null")
        assert moved == json.loads(seen.stdout), f"a {shift:+g} s step changed what list shows"
        assert [(i["pid"], i["source"]) for i in moved] == [(pid, "tb_lazy")]
        watcher = subprocess.Popen(
            [sys.executable, "-c", SHIFTED_CLI, str(shift), "watch", str(logdir), "--json", "--port", str(free_port())],
            env=tb_env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            announced = records(tb_env).parent / "watchers" / f"{watcher.pid}.json"
            assert wait_for(announced.exists, 30), "the watcher never began watching"
            time.sleep(0.3)
            write_scalar(logdir / "pretrain", step=step + 1)
            out, err = watcher.communicate(timeout=90)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
        info = served_line(out.splitlines()[0] if out else None)
        assert info["reused"] and info["pid"] == pid, f"{shift:+g} s: {info} {err}"
        assert tensorboard_pids(tb_env.root) == [pid]
    stopped = shifted_cli(tb_env, 12.0, "stop", str(logdir))
    assert stopped.returncode == 0 and f"pid={pid}" in stopped.stdout, stopped.stderr
    assert not pid_alive(pid) and tensorboard_pids(tb_env.root) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="psutil's Linux boot time is what a clock step moves")
@pytest.mark.parametrize("shift", [12.0, -12.0])
def test_a_clock_step_never_makes_another_process_pass_for_a_recorded_one(tb_env, shift):
    """A record whose PID and command line match, and whose wall-clock start matches what the
    stepped checker reads, but which started 12 s earlier on the boot clock: another process."""
    sleeper = tb_env.spawn(SLEEPER)
    process = psutil.Process(sleeper.pid)
    wait_for(lambda: process.cmdline()[-1:] == ["x"], timeout=10)
    ticks = process._proc.create_time(monotonic=True)
    write_record(tb_env, record_of(process, create_time=process.create_time() + shift,
                                   boot_start=ticks - shift, boot_id=Path("/proc/sys/kernel/random/boot_id")
                                   .read_text().strip()))
    result = shifted_cli(tb_env, shift, "stop", "--all")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert sleeper.proc.poll() is None, "a stepped clock made stop --all kill another process"
    assert not (records(tb_env) / f"{sleeper.pid}.json").exists(), "the record of a gone process is dropped"
    # the same record from another boot: gone too, whatever the ticks say
    write_record(tb_env, record_of(process, boot_start=ticks, boot_id="another-boot"))
    assert json.loads(tb_lazy_cli(tb_env, "list", "--json").stdout) == []
    assert sleeper.proc.poll() is None


# Issue 15, items 2, 3 and 7. Only the current user's files and processes count ---------------

SYSTEM_PYTHON = Path("/usr/bin/python3")
# A stranger's web server that passes for a TensorBoard serving A's folder: 200 everywhere, and
# A's folder as its data location (the repro, made as convincing as it can be).
IMPOSTOR = """
import http.server, json, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data_location": sys.argv[2], "window_title": ""}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture
def other_user(tmp_path_factory):
    """A throw-away second Unix user B (created here, removed at teardown): (name, uid, gid, as_b)
    where ``as_b(args)`` is the argument list that runs ``args`` as B."""
    if os.geteuid() != 0:
        pytest.skip("creating a second user needs root")
    if not all(shutil.which(tool) for tool in ("useradd", "userdel", "setpriv")) or not SYSTEM_PYTHON.exists():
        pytest.skip("useradd, userdel, setpriv or /usr/bin/python3 is missing")
    name = f"tblz{os.urandom(4).hex()}"
    made = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.decode().strip()}")
    entry = pwd.getpwnam(name)
    try:
        def as_b(args: list[str]) -> list[str]:
            return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", *args]

        yield name, entry.pw_uid, entry.pw_gid, as_b
    finally:
        for proc in psutil.process_iter(["uids"]):  # B's processes, by PID
            with contextlib.suppress(psutil.Error):
                if proc.info["uids"] and proc.info["uids"].real == entry.pw_uid:
                    stop_process(proc.pid, grace=5)
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def shared_root(tb_env):
    """A folder B may traverse (``tmp_path`` is private to root), holding A's state folder."""
    root = Path(tempfile.mkdtemp(prefix="tblz-", dir="/tmp"))
    root.chmod(0o755)
    tb_env.env["TB_LAZY_STATE_DIR"] = str(root / "state")
    try:
        yield root
    finally:
        tb_env.cleanup()  # stop A's TensorBoards while their records are still there
        shutil.rmtree(root, ignore_errors=True)


def test_another_users_planted_info_file_and_records_are_ignored(tb_env, other_user, shared_root):
    _, uid, gid, as_b = other_user
    logdir = tb_env.root / "logs"
    port = free_port()
    impostor = tb_env.spawn(as_b([str(SYSTEM_PYTHON), "-c", IMPOSTOR, str(port), str(logdir)]), cwd="/")
    sleeper = tb_env.spawn(as_b([str(SYSTEM_PYTHON), "-c", "import time; time.sleep(999)"]), cwd="/")
    assert wait_for(lambda: tb_lazy.launch.data_location("127.0.0.1", port) == str(logdir), timeout=30)
    b_server, b_sleeper = psutil.Process(impostor.pid), psutil.Process(sleeper.pid)
    assert b_server.uids().real == uid

    # B's info file in TensorBoard's info folder (mode 0777, as TensorBoard makes it). Written by
    # root and handed to B: B can't reach this test's private temp folder to write it itself.
    info_dir = Path(tb_env.env["TMPDIR"]) / ".tensorboard-info"
    info_dir.mkdir(exist_ok=True)
    info_dir.chmod(0o777)
    info = info_dir / f"pid-{impostor.pid}.info"
    info.write_text(json.dumps({"pid": impostor.pid, "port": port, "logdir": str(logdir),
                                "start_time": int(time.time()), "path_prefix": "", "version": "2.21.0"}))
    os.chown(info, uid, gid)
    # Records naming B's processes exactly: one owned by B (it got into A's folder somehow),
    # one owned by A (a record A once wrote, whose PID is now B's).
    state = Path(tb_env.env["TB_LAZY_STATE_DIR"])
    (state / "running").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    planted = write_record_at(state, record_of(b_server, port=port, logdir=str(logdir)))
    os.chown(planted, uid, gid)
    write_record_at(state, record_of(b_sleeper, port=port, logdir=str(logdir)))

    listed = tb_lazy_cli(tb_env, "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout + listed.stderr
    stopped = tb_lazy_cli(tb_env, "stop", "--all")
    assert stopped.returncode == 0 and "stopped" not in stopped.stdout, stopped.stdout
    assert impostor.proc.poll() is None and sleeper.proc.poll() is None, "stop --all signalled B's processes"

    watcher = tb_env.run("watch", str(logdir), "--json", "--port", str(port))
    assert wait_for((state / "watchers" / f"{watcher.pid}.json").exists, timeout=30), watcher.stderr
    time.sleep(0.3)  # the observer is scheduled right after the announcement
    write_scalar(logdir)
    served = served_line(watcher.next_line(60))
    assert not served["reused"] and served["pid"] not in (impostor.pid, sleeper.pid), served
    assert served["port"] != port and watcher.wait() == 0
    assert get_json(f"{served['url']}/data/environment")["data_location"] == str(logdir)
    assert planted.exists(), "another user's file is ignored, not removed"

    # A's state folder is A's alone: 0700, and B can't write in it
    assert (state.stat().st_mode & 0o777) == 0o700
    attempt = subprocess.run(as_b([str(SYSTEM_PYTHON), "-c", f"open({str(state / 'running' / '1.json')!r}, 'w')"]),
                             capture_output=True, text=True, cwd="/")
    assert attempt.returncode != 0 and "PermissionError" in attempt.stderr, attempt.stderr


def test_a_state_folder_of_another_user_or_writable_by_others_is_refused(tb_env, other_user, shared_root):
    """One line, exit 2; and B's 'stop --all' on A's folder is refused at once, not after a wait."""
    _, uid, gid, as_b = other_user
    theirs = shared_root / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, uid, gid)
    loose = shared_root / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    for folder, why in ((theirs, "not by you"), (loose, "writable by others")):
        for args in (["list"], ["stop", "--all"], ["watch", str(tb_env.root / "logs"), "--timeout", "5"]):
            result = subprocess.run([sys.executable, "-m", "tb_lazy", *args], capture_output=True, text=True,
                                    env={**tb_env.env, "TB_LAZY_STATE_DIR": str(folder)}, timeout=60)
            assert result.returncode == 2 and result.stdout == "", (args, result.stdout, result.stderr)
            assert result.stderr.count("\n") == 1 and why in result.stderr, result.stderr
            no_traceback(result)
    # B runs tb_lazy (this checkout, on the system interpreter) against A's state folder
    Path(tb_env.env["TB_LAZY_STATE_DIR"]).mkdir(mode=0o700)  # A's state folder, as tb_lazy creates it
    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    b_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{site}",
             "TB_LAZY_STATE_DIR": tb_env.env["TB_LAZY_STATE_DIR"]}
    probe = subprocess.run(as_b([str(SYSTEM_PYTHON), "-c", "import psutil, watchdog, tb_lazy.cli"]), env=b_env,
                           capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"the system interpreter can't run this checkout as B: {probe.stderr.strip()[-200:]}")
    result = subprocess.run(as_b([str(SYSTEM_PYTHON), "-m", "tb_lazy", "stop", "--all"]), env=b_env,
                            capture_output=True, text=True, cwd="/", timeout=60)
    assert result.returncode == 2 and "not by you" in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_sigstopped_tensorboard_is_listed_as_stopped_and_not_reused(tb_env):
    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    first = tb_env.run("watch", str(logdir), "--existing", "--json")
    frozen = served_line(first.next_line(60))["pid"]
    assert first.wait() == 0
    os.kill(frozen, signal.SIGSTOP)  # a real stop: it keeps its port, accepts connections, never answers
    try:
        listed = json.loads(tb_lazy_cli(tb_env, "list", "--json").stdout)
        assert [(i["pid"], i["state"]) for i in listed] == [(frozen, "stopped")]
        table = tb_lazy_cli(tb_env, "list").stdout.splitlines()
        assert "STATE" in table[0] and "stopped" in table[1], table
        second = tb_env.run("watch", str(logdir), "--json")
        tb_env.watching(second)
        write_scalar(logdir, step=1)
        info = served_line(second.next_line(60))
        assert not info["reused"] and info["pid"] != frozen, "a stopped TensorBoard was reused"
        assert second.wait() == 0
        states = {i["pid"]: i["state"] for i in json.loads(tb_lazy_cli(tb_env, "list", "--json").stdout)}
        assert states == {frozen: "stopped", info["pid"]: "serving"}
        stopped = tb_lazy_cli(tb_env, "stop", "--all")  # a stopped process is stopped for good, too
        assert stopped.returncode == 0 and f"pid={frozen}" in stopped.stdout, stopped.stderr
        assert not pid_alive(frozen) and tensorboard_pids(tb_env.root) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGCONT)


def test_a_record_written_by_an_earlier_version_still_counts(tb_env):
    """Records from before the boot clock (no ``boot_start``/``boot_id``) are compared by
    wall-clock start time, as that version did: still listed and stopped, not dropped."""
    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    first = tb_env.run("watch", str(logdir), "--existing", "--json")
    pid = served_line(first.next_line(60))["pid"]
    assert first.wait() == 0
    path = records(tb_env) / f"{pid}.json"
    record = json.loads(path.read_text())
    assert record.pop("boot_start") is not None and record.pop("boot_id") is not None
    path.write_text(json.dumps(record))
    listed = json.loads(tb_lazy_cli(tb_env, "list", "--json").stdout)
    assert [(i["pid"], i["source"], i["state"]) for i in listed] == [(pid, "tb_lazy", "serving")]
    stopped = tb_lazy_cli(tb_env, "stop", str(logdir))
    assert stopped.returncode == 0 and f"pid={pid}" in stopped.stdout, stopped.stderr
    assert not pid_alive(pid)
