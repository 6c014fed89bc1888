"""Faults around detection (issue items 2, 3, 9b, 10a): symlinked log folders, the inotify
watch limit reached part-way through a tree, absurd polling intervals, dangling links.
Real watchers, real TensorBoards, a real inotify limit inside a user namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from conftest import append_record, get_json, header_only, tensorboard_pids, write_scalar

from tb_lazy.cli import main
from tb_lazy.detect import wait_for_new_data

pytestmark = pytest.mark.faults


def served_json(watcher) -> dict:
    line = watcher.next_line(60)
    assert line is not None, f"no URL; stderr: {watcher.stderr}"
    return json.loads(line)


def test_a_symlinked_log_folder_is_watched_where_it_points(tb_env):
    real = tb_env.root / "big-disk" / "tf_dir"
    real.mkdir(parents=True)
    link = tb_env.root / "tf_dir"
    link.symlink_to(real)
    watcher = tb_env.run("watch", str(link), "--json")
    tb_env.watching(watcher)
    write_scalar(real / "pretrain")  # written through the target, as a trainer resolving paths would
    info = served_json(watcher)
    assert watcher.wait() == 0
    assert not any("polling" in line for line in watcher.stderr), "inotify, not a polling fallback"
    assert get_json(f"{info['url']}/data/environment")["data_location"] == str(link)
    assert len(tensorboard_pids(tb_env.root)) == 1


def test_a_symlinked_subfolder_is_watched_too(tmp_path):
    logdir = tmp_path / "tf_dir"
    logdir.mkdir()
    elsewhere = tmp_path / "scratch" / "sft"
    elsewhere.mkdir(parents=True)
    (logdir / "sft").symlink_to(elsewhere)
    (logdir / "loop").symlink_to(logdir)  # a link back into the tree adds nothing (and doesn't hang)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(wait_for_new_data(logdir, since=time.time(), timeout=30)))
    thread.start()
    time.sleep(0.5)
    event_file = write_scalar(elsewhere)
    thread.join(timeout=30)
    assert result and result[0] is not None and result[0].name == event_file.name


def test_a_symlinked_folder_appearing_later_is_followed(tmp_path):
    logdir = tmp_path / "tf_dir"
    logdir.mkdir()
    elsewhere = tmp_path / "scratch" / "dpo"
    elsewhere.mkdir(parents=True)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(wait_for_new_data(logdir, since=time.time(), timeout=30)))
    thread.start()
    time.sleep(0.5)
    (logdir / "dpo").symlink_to(elsewhere)
    time.sleep(0.5)
    event_file = write_scalar(elsewhere)
    thread.join(timeout=30)
    assert result and result[0] is not None and result[0].name == event_file.name


def _userns_available() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(
        ["unshare", "-U", "-r", "sh", "-c", "echo 10 > /proc/sys/user/max_inotify_watches"],
        capture_output=True, text=True,
    )
    return None if probe.returncode == 0 else f"no user namespace with its own inotify limit: {probe.stderr.strip()}"


@pytest.mark.parametrize("when", ["at start", "later"])
def test_watch_limit_reached_part_way_falls_back_to_polling(tb_env, when):
    """A real inotify limit (10 watches) inside a user namespace; the tree needs more."""
    if reason := _userns_available():
        pytest.skip(reason)
    logdir = tb_env.root / "logs"
    for i in range(40 if when == "at start" else 3):
        (logdir / f"run{i:02d}").mkdir(parents=True)
    script = 'echo 10 > /proc/sys/user/max_inotify_watches && exec "$0" -m tb_lazy watch "$1" --json'
    watcher = tb_env.spawn(["unshare", "-U", "-r", "sh", "-c", script, sys.executable, str(logdir)])
    tb_env.watching(watcher)
    if when == "later":
        for i in range(3, 40):
            (logdir / f"run{i:02d}").mkdir()
        time.sleep(0.5)
    event_file = header_only(logdir / "new-subfolder" / "deeper")
    append_record(event_file)
    info = served_json(watcher)
    assert watcher.wait() == 0
    warnings = [line for line in watcher.stderr if line.startswith("[warn]")]
    assert len(warnings) == 1 and "polling" in warnings[0], watcher.stderr
    assert get_json(f"{info['url']}/data/environment")["data_location"] == str(logdir)


@pytest.mark.parametrize("value", ["1e300", "inf", "nan", "86400"])
def test_absurd_polling_intervals_are_one_line_and_exit_2(tb_env, capsys, value):
    assert main(["watch", str(tb_env.root / "logs"), "--poll", value]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "--poll" in captured.err and "Traceback" not in captured.err


def test_a_dangling_event_file_link_starts_nothing(tb_env):
    logdir = tb_env.root / "logs"
    logdir.mkdir()
    (logdir / "events.out.tfevents.1.host").symlink_to(tb_env.root / "nowhere")
    watcher = tb_env.run("watch", str(logdir), "--existing", "--timeout", "2")
    tb_env.watching(watcher)
    (logdir / "events.out.tfevents.2.host").symlink_to(tb_env.root / "gone")
    assert watcher.wait(timeout=30) == 0
    assert watcher.stdout == [] and tensorboard_pids(tb_env.root) == []
    assert os.path.islink(logdir / "events.out.tfevents.2.host")
