"""``tb_lazy.autostart`` as a training loop uses it, with real watcher processes and TensorBoards."""

from __future__ import annotations

import os
import time

from conftest import get_json, pids_mentioning, tensorboard_pids, write_scalar

import tb_lazy
from tb_lazy.process import pid_alive


def test_starts_tensorboard_when_training_logs(tb_env, capsys):
    logdir = tb_env.root / "tf_dir" / "pretrain"
    started = time.monotonic()
    with tb_lazy.autostart(logdir) as board:
        assert time.monotonic() - started < 5, "autostart must return at once"
        assert board.url is None
        write_scalar(logdir, tag="train/loss")
        url = board.wait(60)
        assert url == f"http://127.0.0.1:{tb_env.port}"
        assert get_json(f"{url}/data/environment")["data_location"] == str(logdir)
    assert f"[tensorboard] {url} (pid={board.info['pid']})" in capsys.readouterr().out
    assert pid_alive(board.info["pid"]), "TB_KEEP=1: TensorBoard stays after training"
    assert board._proc.poll() == 0, "the watcher process is gone once the block ends"
    others = [pid for pid in pids_mentioning(str(logdir)) if os.getpgid(pid) != board.info["pid"]]
    assert others == [], "only TensorBoard (and its data server) may remain"


def test_nothing_logged_means_nothing_started_and_no_watcher_left(tb_env):
    logdir = tb_env.root / "tf_dir"
    board = tb_lazy.autostart(logdir)
    watcher = board._proc.pid
    assert pid_alive(watcher)
    board.stop()
    board.stop()  # twice is fine
    assert board.url is None and board.wait(0) is None
    assert not pid_alive(watcher)
    assert tensorboard_pids(tb_env.root) == []


def test_auto_off_and_other_ranks_do_nothing(tb_env, monkeypatch):
    for name, value in (("TB_AUTO", "0"), ("RANK", "3")):
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            with tb_lazy.autostart(tb_env.root / "logs") as board:
                assert board._proc is None
                write_scalar(tb_env.root / "logs" / name)
                assert board.wait(1) is None
    assert tensorboard_pids(tb_env.root) == []


def test_without_keep_tensorboard_ends_with_the_training(tb_env):
    logdir = tb_env.root / "logs"
    with tb_lazy.autostart(logdir, keep=False) as board:
        write_scalar(logdir)
        assert board.wait(60)
        pid = board.info["pid"]
        assert pid_alive(pid)
    assert not pid_alive(pid)
    assert tensorboard_pids(tb_env.root) == []


def test_reuse_is_quiet_when_asked(tb_env, capsys):
    logdir = tb_env.root / "tf_dir"
    write_scalar(logdir / "pretrain")
    with tb_lazy.autostart(logdir, existing=True) as first:
        pid = first.wait(60) and first.info["pid"]
    with tb_lazy.autostart(logdir / "pretrain", quiet_reuse=True) as second:
        write_scalar(logdir / "pretrain", step=1)
        assert second.wait(60) == first.url and second.reused
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"[tensorboard] {first.url} (pid={pid})"]
    assert tensorboard_pids(tb_env.root) == [pid]
