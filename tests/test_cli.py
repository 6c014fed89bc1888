"""The command line in-process through ``main([...])``: bad input, list/stop, failures."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

import pytest
from conftest import REPO, free_port, get_json, tensorboard_pids, write_scalar

import tb_lazy.launch
from tb_lazy.cli import main
from tb_lazy.process import pid_alive
from tb_lazy.state import registry


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {captured.err!r}"
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        (["watch", "{file}"], {}, "is a file, not a folder"),
        (["watch", "{file}/sub"], {}, "can't be created"),
        (["watch", "{dir}"], {"TB_PORT": "abc"}, "TB_PORT='abc' is not a port number"),
        (["watch", "{dir}"], {"TB_PORT": "70000"}, "TB_PORT='70000' is out of range"),
        (["watch", "{dir}", "--port", "0"], {}, "--port='0' is out of range"),
        (["watch", "{dir}", "--exit-with", "abc"], {}, "--exit-with='abc' is not a process id"),
        (["watch", "{dir}", "--poll", "-1"], {}, "--poll='-1' must be a positive number"),
        (["watch", "{dir}", "--timeout", "soon"], {}, "--timeout='soon' is not a number"),
        (["watch", "{dir}"], {"TB_KEEP": "maybe"}, "TB_KEEP='maybe' is not a yes/no value"),
        (["watch", "{dir}"], {"TB_HOST": "203.0.113.7"}, "can't be listened on"),
        (["watch", "{dir}", "--host", ""], {}, "--host is empty"),
        (["watch", "{dir}"], {"TB_AUTO": "perhaps"}, "TB_AUTO='perhaps' is not a yes/no value"),
        (["watch", "{dir}"], {"TB_LAZY_STATE_DIR": "{file}/state"}, "state folder"),
        (["watch", "{dir}", "--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
        (["watch"], {}, "required: DIR"),
        (["stop"], {}, "one of the arguments DIR --all is required"),
        (["launch", "{dir}"], {}, "invalid choice: 'launch'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tb_env, capsys, monkeypatch, argv, env, expected):
    afile = tb_env.root / "afile"
    afile.write_text("x")
    argv = [a.format(file=afile, dir=tb_env.root / "logs") for a in argv]
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(file=afile))
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith("tb-lazy: error:") and expected in line, line
    assert not (tb_env.root / "logs").exists(), "bad input must not create anything"


def test_auto_off_says_so_once_and_exits_0(tb_env, capsys, monkeypatch):
    monkeypatch.setenv("TB_AUTO", "0")
    monkeypatch.setenv("TB_PORT", "abc")  # off means off: the rest isn't even read
    write_scalar(tb_env.root / "logs")
    assert main(["watch", str(tb_env.root / "logs")]) == 0
    assert one_error_line(capsys) == "[tb_lazy] TensorBoard auto-start is off (TB_AUTO=0)"
    assert tensorboard_pids(tb_env.root) == []


def test_missing_tensorboard_warns_with_install_command_and_exits_0(tb_env, tmp_path):
    """A real interpreter without TensorBoard: a venv that sees only tb_lazy and its other dependencies."""
    import psutil
    import watchdog

    env_dir = tmp_path / "bare-venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(f"{REPO}\n")
    for module in (watchdog, psutil):
        (Path(site) / module.__name__).symlink_to(Path(module.__file__).parent)
    write_scalar(tb_env.root / "logs")
    env = {k: v for k, v in tb_env.env.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [python, "-m", "tb_lazy", "watch", str(tb_env.root / "logs")], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("[warn] TensorBoard is not installed")
    assert f"{python} -m pip install tensorboard" in result.stderr
    assert tensorboard_pids(tb_env.root) == []


def test_tensorboard_crashing_at_start_exits_1_with_its_reason(tb_env, capsys, monkeypatch):
    """Stand-in: a TensorBoard that dies at start can't be caused with the real one."""
    crash = "import sys; print('boom: plugin registry corrupted', file=sys.stderr); sys.exit(3)"
    monkeypatch.setattr(tb_lazy.launch, "tensorboard_command", lambda: [sys.executable, "-c", crash])
    write_scalar(tb_env.root / "logs")
    assert main(["watch", str(tb_env.root / "logs"), "--existing"]) == 1
    line = one_error_line(capsys)
    assert "exited with status 3" in line and "boom: plugin registry corrupted" in line
    log_file = line.rsplit("TensorBoard's log: ", 1)[1].rstrip(")")
    assert "boom: plugin registry corrupted" in Path(log_file).read_text()
    assert registry.running() == []


def test_port_taken_between_check_and_bind_is_retried(tb_env, capsys, monkeypatch):
    """Stand-in for the timing only: the check says the port is free, a real listener holds it."""
    import socket

    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    real_check = tb_lazy.launch.port_is_free
    lied = []

    def racy_check(host: str, port: int) -> bool:
        if port == tb_env.port and not lied:
            lied.append(port)
            return True
        return real_check(host, port)

    monkeypatch.setattr(tb_lazy.launch, "port_is_free", racy_check)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", tb_env.port))
        squatter.listen()
        assert main(["watch", str(logdir), "--json", "--existing"]) == 0
    out = capsys.readouterr().out
    import json

    info = json.loads(out)
    assert lied and info["port"] != tb_env.port
    assert get_json(f"{info['url']}/data/environment")["data_location"] == str(logdir)


def test_list_and_stop(tb_env, capsys):
    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    assert main(["watch", str(logdir), "--existing"]) == 0
    capsys.readouterr()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    (instance,) = registry.running()
    assert f"http://127.0.0.1:{tb_env.port}" in out and str(instance.pid) in out and str(logdir) in out
    assert instance.log_file and instance.log_file in out and Path(instance.log_file).exists()
    assert main(["stop", str(tb_env.root / "elsewhere")]) == 1
    assert "no TensorBoard started by tb_lazy serves exactly" in one_error_line(capsys)
    assert main(["stop", str(logdir / "run")]) == 1
    assert f"pid {instance.pid} serves its parent {logdir}" in one_error_line(capsys)
    assert pid_alive(instance.pid)
    assert main(["stop", str(logdir)]) == 0
    assert not pid_alive(instance.pid)
    assert main(["stop", "--all"]) == 0, "stopping twice is fine"
    assert main(["list", "--json"]) == 0
    assert capsys.readouterr().out.strip().endswith("[]")


def test_list_shows_a_tensorboard_started_outside_tb_lazy(tb_env, capsys):
    """TensorBoard's own info file makes a hand-started TensorBoard visible and reusable."""
    logdir = tb_env.root / "logs"
    write_scalar(logdir / "run")
    port = free_port()
    by_hand = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=tb_env.env,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(i.pid == by_hand.pid for i in registry.running()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert main(["list"]) == 0
        assert "(started outside tb_lazy)" in capsys.readouterr().out
        assert main(["watch", str(logdir / "run"), "--json", "--existing"]) == 0
        assert f'"pid": {by_hand.pid}' in capsys.readouterr().out
        assert main(["stop", "--all"]) == 0 and by_hand.poll() is None, "stop never touches others' TensorBoards"
    finally:
        by_hand.terminate()
        by_hand.wait(timeout=30)


def test_sigterm_while_waiting_ends_the_watch_quietly(tb_env):
    watcher = tb_env.run("watch", str(tb_env.root / "logs"))
    tb_env.watching(watcher)
    watcher.proc.terminate()
    assert watcher.wait() == 0
    assert watcher.stdout == [] and "stopped before any event data" in "\n".join(watcher.stderr)


def test_ctrl_c_while_waiting_exits_130(tb_env):
    import signal

    # Ctrl-C's default action in the watcher, however this test was started (a background job
    # of a script starts with SIGINT ignored, and its children inherit that)
    watcher = tb_env.run("watch", str(tb_env.root / "logs"), env={"PYTHONFAULTHANDLER": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tb_env.watching(watcher)
    os.kill(watcher.pid, signal.SIGINT)
    try:
        code = watcher.wait()
    except subprocess.TimeoutExpired:        # where it hangs: faulthandler prints every thread
        os.kill(watcher.pid, signal.SIGABRT)
        watcher.proc.wait(timeout=10)
        time.sleep(0.5)
        pytest.fail("the watcher did not exit after SIGINT:\n" + "\n".join(watcher.stderr))
    assert code == 130
    assert not any("Traceback" in line for line in watcher.stderr)


def test_watch_in_a_thread_stops_when_asked(tb_env):
    """The library function: ``stop`` ends a wait with nothing started."""
    from tb_lazy import Skipped, watch

    stop = threading.Event()
    result = []
    thread = threading.Thread(target=lambda: result.append(watch(tb_env.root / "logs", stop=stop)))
    thread.start()
    time.sleep(0.5)
    stop.set()
    thread.join(timeout=10)
    assert isinstance(result[0], Skipped) and "stopped before" in result[0].reason
