"""The "waiting for data" hint: a writer that buffers must not look like a dead watcher."""

from __future__ import annotations

import os
import re
import sys
import time

from conftest import append_record, header_only, wait_for, write_scalar

from tb_lazy.hint import DEFAULT_AFTER, BufferHint, hint_after

URL_LINE = re.compile(r"\[tensorboard\] http://127\.0\.0\.1:\d+ \(pid=\d+\)")
# A trainer as users write one: tensorboardX with its default flush_secs (120 s), one scalar
# every 2 s, until told to stop (the stop file appears); then it closes the writer. (At one
# every 0.2 s its file buffer reached the disk after 17 s: on a loaded machine, before a
# slow-starting watcher's first look, so no hint was due; at this rate, after ~170 s.) With a
# third argument DIR it runs inside tb_lazy.autostart(DIR), and waits for TensorBoard at the end.
BUFFERING_TRAINER = """
import contextlib, os, sys, time
from tensorboardX import SummaryWriter
logdir, stop, watch = sys.argv[1], sys.argv[2], sys.argv[3:]
with contextlib.ExitStack() as stack:
    if watch:
        import tb_lazy
        board = stack.enter_context(tb_lazy.autostart(watch[0]))
    writer = SummaryWriter(logdir)
    step = 0
    while not os.path.exists(stop):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        step += 1
        time.sleep(2.0)
    writer.close()
    if watch:
        board.wait(120)
"""


def _hints(lines: list[str]) -> list[str]:
    return [line for line in lines if "flush_secs" in line]


def test_a_buffering_writer_gets_the_hint_once_on_stderr_and_stdout_stays_the_url(tb_env, tmp_path):
    logdir, stop = tmp_path / "logs", tmp_path / "stop"
    after = 2  # seconds (the default, 10, is checked below; this keeps the test short)
    watcher = tb_env.run("watch", str(logdir), "--timeout", "300", env={"TB_LAZY_HINT_AFTER": str(after)})
    tb_env.watching(watcher)
    trainer = tb_env.spawn([sys.executable, "-c", BUFFERING_TRAINER, str(logdir / "run1"), str(stop)])

    assert wait_for(lambda: _hints(watcher.stderr), timeout=120), f"no hint; stderr: {watcher.stderr}"
    [hint] = _hints(watcher.stderr)
    assert hint.startswith("[tb_lazy] ") and "run1" in hint and "120 s" in hint and "writer.flush()" in hint
    assert watcher.stdout == [], "nothing is served while nothing is on disk"
    time.sleep(3 * after)  # room for a second hint, which must not come
    assert not list((logdir / "run1").glob("*tfevents*"))[0].stat().st_size, "the writer flushed early"

    stop.touch()  # the trainer closes its writer: the data lands, TensorBoard serves it
    assert trainer.wait(timeout=60) == 0, trainer.stderr
    assert watcher.wait(timeout=120) == 0, watcher.stderr
    assert len(watcher.stdout) == 1 and URL_LINE.fullmatch(watcher.stdout[0]), watcher.stdout
    assert len(_hints(watcher.stderr)) == 1, watcher.stderr


def test_a_training_script_using_autostart_gets_the_hint_on_its_stderr(tb_env, tmp_path):
    logdir, stop = tmp_path / "logs", tmp_path / "stop"
    trainer = tb_env.spawn([sys.executable, "-c", BUFFERING_TRAINER, str(logdir / "run1"), str(stop), str(logdir)],
                           env={"TB_LAZY_HINT_AFTER": "2"})
    assert wait_for(lambda: _hints(trainer.stderr), timeout=120), \
        f"no hint; stderr: {trainer.stderr}; stdout: {trainer.stdout}"
    stop.touch()
    assert trainer.wait(timeout=120) == 0, trainer.stderr
    assert len(trainer.stdout) == 1 and URL_LINE.fullmatch(trainer.stdout[0]), trainer.stdout
    assert len(_hints(trainer.stderr)) == 1, trainer.stderr


def test_a_writer_that_flushes_gets_no_hint(tb_env, tmp_path):
    logdir = tmp_path / "logs"
    watcher = tb_env.run("watch", str(logdir), "--timeout", "300")  # the default threshold
    tb_env.watching(watcher)
    write_scalar(logdir / "run1")
    assert watcher.wait(timeout=120) == 0, watcher.stderr
    assert URL_LINE.fullmatch(watcher.stdout[0]), watcher.stdout
    assert _hints(watcher.stderr) == [], watcher.stderr


def test_the_threshold_defaults_to_ten_seconds(monkeypatch):
    monkeypatch.delenv("TB_LAZY_HINT_AFTER", raising=False)
    assert hint_after() == DEFAULT_AFTER == 10
    monkeypatch.setenv("TB_LAZY_HINT_AFTER", "soon")
    assert hint_after() == DEFAULT_AFTER
    monkeypatch.setenv("TB_LAZY_HINT_AFTER", "2.5")
    assert hint_after() == 2.5


# BufferHint on real files, with the clock given (no waiting): which files make the hint due.

def test_a_header_only_file_of_this_run_is_due_after_the_threshold(tmp_path):
    since = time.time() - 1
    event_file = header_only(tmp_path / "run")
    hint = BufferHint(tmp_path, since=since, after=10)
    assert hint.check(now=100.0) is None  # first seen
    assert hint.check(now=109.0) is None
    message = hint.check(now=110.0)
    assert message and str(event_file) in message and "flush_secs=" in message


def test_a_file_with_data_or_left_by_an_earlier_run_is_never_due(tmp_path):
    since = time.time() - 1
    write_scalar(tmp_path / "with_data")
    old = header_only(tmp_path / "earlier")
    os.utime(old, (since - 3600, since - 3600))
    hint = BufferHint(tmp_path, since=since, after=10)
    assert hint.check(now=0.0) is None
    assert hint.check(now=1000.0) is None


def test_a_file_that_gets_data_is_no_longer_due_and_a_missing_folder_is_fine(tmp_path):
    hint = BufferHint(tmp_path / "not yet", since=time.time() - 1, after=10)
    assert hint.check(now=0.0) is None
    event_file = header_only(tmp_path / "not yet" / "run")
    assert hint.check(now=1.0) is None
    append_record(event_file)
    assert hint.check(now=100.0) is None
