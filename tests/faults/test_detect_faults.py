"""Faults around detection (issue items 2, 3, 9b, 10a): symlinked log folders, the inotify
watch limit reached part-way through a tree, absurd polling intervals, dangling links.
Real watchers, real TensorBoards, a real inotify limit inside a user namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import (
    append_record,
    finish,
    get_json,
    header_only,
    tensorboard_pids,
    wait_in_thread,
    write_scalar,
)

from tb_lazy.cli import main
from tb_lazy.detect.rundata import RunData
from tb_lazy.detect.tfrecord import Progress

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
    thread, result = wait_in_thread(logdir, timeout=30)
    event_file = write_scalar(elsewhere)
    thread.join(timeout=30)
    assert result and result[0] is not None and result[0].name == event_file.name


def test_a_symlinked_folder_appearing_later_is_followed(tmp_path):
    logdir = tmp_path / "tf_dir"
    logdir.mkdir()
    elsewhere = tmp_path / "scratch" / "dpo"
    elsewhere.mkdir(parents=True)
    thread, result = wait_in_thread(logdir, timeout=30)
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


# Issue 15, item 5. Detection edge cases, each with real files and a real watcher -------------


def an_earlier_runs_file(folder) -> Path:
    """An event file with data, written by a run that ended before the one being watched."""
    old = write_scalar(folder)
    time.sleep(0.2)
    return old


def record_bytes() -> bytes:
    """One complete data record of a fresh tensorboardX file (written now)."""
    with tempfile.TemporaryDirectory() as scratch:
        data = write_scalar(Path(scratch)).read_bytes()
    header = 8 + 4 + int.from_bytes(data[:8], "little") + 4
    return data[header:]


def test_data_written_while_the_watcher_is_still_starting_counts(tb_env):
    """The run began when the watcher process started: a script that logs once and exits
    while the watcher is still importing is served."""
    logdir = tb_env.root / "logs"
    watcher = tb_env.run("watch", str(logdir), "--json", "--timeout", "60")
    write_scalar(logdir)  # at once: the watcher is still importing Python modules
    info = served_json(watcher)
    assert not info["reused"] and watcher.wait() == 0


@pytest.mark.parametrize("how", ["future mtime", "cp -p", "copied, then its times set back"])
def test_old_data_with_new_looking_file_times_does_not_count(tmp_path, how):
    """``cp -p`` writes the copy (new file times) and then sets the old times: the last case
    does those two steps with a pause between, so the watcher surely looks in between."""
    logdir = tmp_path / "logs"
    logdir.mkdir()
    old = an_earlier_runs_file(tmp_path / "archive")
    if how == "future mtime":
        touched = shutil.copy(old, logdir / old.name)
        os.utime(touched, (time.time() + 3600, time.time() + 3600))  # as `touch -d '+1 hour'`
    thread, result = wait_in_thread(logdir, timeout=2.5)
    if how == "cp -p":
        subprocess.run(["cp", "-p", str(old), str(logdir / "copied.tfevents.1.host")], check=True)
    elif how.startswith("copied"):
        copy = shutil.copyfile(old, logdir / "copied.tfevents.2.host")
        time.sleep(0.5)
        os.utime(copy, ns=(old.stat().st_atime_ns, old.stat().st_mtime_ns))
    else:
        os.utime(logdir / old.name, (time.time() + 7200, time.time() + 7200))
    assert finish(thread, result) is None, f"old data {how} triggered"
    thread, result = wait_in_thread(logdir, timeout=30)
    fresh = write_scalar(logdir / "run")
    assert finish(thread, result) == fresh, "the watcher still sees this run's data"


def _half_a_frame(record: bytes) -> bytes:
    return record[:7]  # a writer crashed mid-record; the resumed run appends to the same file


def _a_flipped_bit(record: bytes) -> bytes:
    bad = bytearray(record)
    bad[20] ^= 0xFF  # a flipped bit inside the data: its CRC no longer matches
    return bytes(bad)


@pytest.mark.parametrize("damage", [_half_a_frame, _a_flipped_bit], ids=["partial record", "bad data crc"])
def test_a_damaged_record_does_not_hide_later_complete_records(tmp_path, damage):
    logdir = tmp_path / "logs"
    thread, result = wait_in_thread(logdir, timeout=30)
    event_file = header_only(logdir)
    with open(event_file, "ab") as handle:
        handle.write(damage(record_bytes()))
    time.sleep(0.5)
    assert thread.is_alive(), f"a damaged record counted: {result}"
    with open(event_file, "ab") as handle:
        handle.write(record_bytes())
    assert finish(thread, result) == event_file


def test_a_file_shrunk_and_grown_again_to_its_old_size_counts(tmp_path):
    logdir = tmp_path / "logs"
    old = an_earlier_runs_file(logdir)
    size = old.stat().st_size
    thread, result = wait_in_thread(logdir, timeout=30)
    fresh = write_scalar(tmp_path / "staging").read_bytes()  # this run's writer, same layout
    assert len(fresh) == size
    with open(old, "wb") as handle:  # truncated to nothing, then written again
        handle.write(fresh)
    assert finish(thread, result) == old


def test_a_file_truncated_between_its_size_and_the_read_is_not_an_error(tmp_path):
    """The size is read, then the file shrinks (a real truncation, in between), then it is read."""
    event_file = write_scalar(tmp_path / "logs")
    size = event_file.stat().st_size
    with open(event_file, "rb") as handle:
        os.truncate(event_file, 30)  # inside the header's frame
        assert Progress().data_after(handle, size) is False
        os.truncate(event_file, 0)
        assert Progress(size - 10).data_after(handle, size) is False
    run = RunData(None)
    assert run.check(str(event_file)) is False
    with open(event_file, "ab") as handle:
        handle.write(record_bytes())
    assert run.check(str(event_file)) is True


def test_polling_follows_a_folder_deleted_replaced_by_a_file_and_recreated(tmp_path):
    logdir = tmp_path / "logs"
    (logdir / "run").mkdir(parents=True)
    thread, result = wait_in_thread(logdir, timeout=60, poll=0.1)
    shutil.rmtree(logdir)
    logdir.write_text("not a folder")
    time.sleep(0.5)
    logdir.unlink()
    event_file = write_scalar(logdir / "run")
    assert finish(thread, result) == event_file


@pytest.mark.parametrize("value", ["1e-300", "0.01", "0.049"])
def test_polling_intervals_below_the_minimum_are_one_line_and_exit_2(tb_env, capsys, value):
    assert main(["watch", str(tb_env.root / "logs"), "--poll", value]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "at least 0.05" in captured.err and "Traceback" not in captured.err


# Issue 15, item 4. A log folder that becomes a symlink, or is re-pointed, after the watch began --


def test_a_log_folder_that_becomes_a_symlink_after_the_watch_began_is_followed(tb_env):
    """The issue's repro: ``tb-lazy watch L &; ln -s real L``; events written under real/sub."""
    link, real = tb_env.root / "L", tb_env.root / "real"
    real.mkdir()
    watcher = tb_env.run("watch", str(link), "--json")
    tb_env.watching(watcher)
    link.symlink_to(real)
    time.sleep(0.5)
    write_scalar(real / "sub")
    info = served_json(watcher)
    assert watcher.wait() == 0
    assert get_json(f"{info['url']}/data/environment")["data_location"] == str(link)


@pytest.mark.parametrize("change", ["re-pointed", "replaced by a folder", "created"])
def test_a_symlinked_log_folder_changed_during_the_wait_is_followed(tmp_path, change):
    link, first, second = tmp_path / "tf_dir", tmp_path / "disk1", tmp_path / "disk2"
    first.mkdir()
    second.mkdir()
    if change != "created":
        link.symlink_to(first)
    thread, result = wait_in_thread(link, timeout=30)
    if change == "re-pointed":  # as `ln -sfn disk2 tf_dir`: a new link renamed over the old one
        (tmp_path / "new-link").symlink_to(second)
        os.replace(tmp_path / "new-link", link)
        target = second
    elif change == "replaced by a folder":
        link.unlink()
        link.mkdir()
        target = link
    else:
        link.symlink_to(second)
        target = second
    time.sleep(0.5)
    event_file = write_scalar(target / "run")
    found = finish(thread, result)
    assert found is not None and found.name == event_file.name, found
