"""What the command line says, and where: a URL that opens, the SSH tunnel hint, the port
fallback, each message once, --version, a closed pipe, an interpreter without the project."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import venv

from conftest import REPO, free_port, get_json, write_scalar

from tb_lazy.cli import main

SSH = "198.51.100.7 50022 192.0.2.10 22"  # documentation addresses: nothing is ever sent to them


def test_version_is_printed_not_a_usage_error(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "tb-lazy 0.1.0"


def test_a_closed_pipe_is_not_an_error(tb_env):
    """``tb-lazy list --json | true``: the reader is gone before anything is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "tb_lazy", "list", "--json"], stdout=write,
                                stderr=subprocess.PIPE, text=True, env=tb_env.env, timeout=60)
    finally:
        os.close(write)
    assert result.returncode == 0 and result.stderr == ""


def test_an_interpreter_without_the_project_gets_one_line(tmp_path):
    """A real interpreter that has none of the dependencies (a bare venv)."""
    env_dir = tmp_path / "bare"
    venv.create(env_dir, with_pip=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([str(env_dir / "bin" / "python"), "-m", "tb_lazy", "list"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "can't import" in result.stderr and ".venv/bin/tb-lazy" in result.stderr


def test_a_wildcard_host_prints_a_url_that_opens_and_the_tunnel_in_a_remote_session(tb_env):
    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    watcher = tb_env.run("watch", str(logdir), "--host", "0.0.0.0", "--existing", env={"SSH_CONNECTION": SSH})
    line = watcher.next_line(60)
    assert watcher.wait() == 0
    port = tb_env.port
    assert line is not None and line.startswith(f"[tensorboard] http://192.0.2.10:{port} (pid="), line
    assert line.endswith(f", local http://127.0.0.1:{port})"), line
    assert "0.0.0.0" not in line
    assert get_json(f"http://127.0.0.1:{port}/data/environment")["data_location"] == str(logdir)
    hints = [text for text in watcher.stderr if "ssh -N -L" in text]
    assert hints == [f"[tb_lazy] on your own machine, run: ssh -N -L {port}:127.0.0.1:{port} "
                     f"{getpass.getuser()}@192.0.2.10  -- then open http://127.0.0.1:{port}"], watcher.stderr
    assert sum(text.startswith("[warn]") for text in watcher.stderr) == 1, watcher.stderr


def test_json_carries_the_same_facts(tb_env):
    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    watcher = tb_env.run("watch", str(logdir), "--host", "0.0.0.0", "--existing", "--json",
                         env={"SSH_CONNECTION": SSH})
    info = json.loads(watcher.next_line(60))
    assert watcher.wait() == 0
    port = info["port"]
    assert info["url"] == f"http://192.0.2.10:{port}" and info["local_url"] == f"http://127.0.0.1:{port}"
    assert info["tunnel"] == f"ssh -N -L {port}:127.0.0.1:{port} {getpass.getuser()}@192.0.2.10"
    assert not any("ssh -N" in text for text in watcher.stderr), "with --json the hint is a field, not a line"


def test_a_local_session_gets_no_hint_and_a_loopback_url(tb_env):
    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    env = {k: v for k, v in tb_env.env.items() if k != "SSH_CONNECTION"}
    result = subprocess.run([sys.executable, "-m", "tb_lazy", "watch", str(logdir), "--existing", "--json"],
                            env=env, capture_output=True, text=True, timeout=120)
    info = json.loads(result.stdout)
    assert info["url"] == f"http://127.0.0.1:{info['port']}" and info["local_url"] is None and info["tunnel"] is None


def test_a_port_fallback_is_said_and_the_log_file_is_not_named_after_the_busy_port(tb_env):
    import socket

    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", tb_env.port))
        squatter.listen()
        watcher = tb_env.run("watch", str(logdir), "--existing", "--json")
        info = json.loads(watcher.next_line(60))
        assert watcher.wait() == 0
    assert info["port"] != tb_env.port
    assert f"[tb_lazy] port {tb_env.port} is taken; TensorBoard serves on port {info['port']}" in watcher.stderr
    listed = json.loads(subprocess.run([sys.executable, "-m", "tb_lazy", "list", "--json"], env=tb_env.env,
                                       capture_output=True, text=True, check=True).stdout)
    (log_file,) = [row["log_file"] for row in listed]
    assert not log_file.endswith(f"-{tb_env.port}.log"), log_file


def test_the_authentication_warning_is_said_once_by_the_watcher_that_launches(tb_env):
    """A pipeline's watcher on tf_dir and a trainer's on tf_dir/sft, both on 0.0.0.0."""
    logdir = tb_env.root / "tf_dir"
    pipeline = tb_env.run("watch", str(logdir), "--host", "0.0.0.0")
    tb_env.watching(pipeline)
    trainer = tb_env.run("watch", str(logdir / "sft"), "--host", "0.0.0.0", "--port", str(free_port()))
    tb_env.watching(trainer)
    write_scalar(logdir / "sft")
    assert pipeline.next_line(60) and trainer.next_line(60)
    assert pipeline.wait() == 0 and trainer.wait() == 0
    warnings = [text for text in pipeline.stderr + trainer.stderr if text.startswith("[warn]")]
    assert len(warnings) == 1 and "authentication" in warnings[0], warnings
