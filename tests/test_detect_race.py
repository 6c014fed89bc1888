"""Detection under a race: event data written at the very moment the watches are placed.

``detect`` scans, places its watches, and scans again, so that data written in between is
not missed. Here the observer's own ``schedule()`` writes the data — just before placing the
watch, or while a large tree is being watched — with inotify and with polling. Nothing waits
for an observer to settle: the writes happen inside ``schedule()`` itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_scalar

from tb_lazy.detect.detect import wait_for_new_data
from tb_lazy.detect.observe import make_observer

POLL = 0.1  # a polling observer's interval, for the polling runs
OBSERVERS = pytest.mark.parametrize("poll", [None, POLL], ids=["inotify", "polling"])


def writing_while_scheduling(poll: float | None, write: Callable[[], None], *, before: bool = True):
    """An observer factory whose first ``schedule()`` calls ``write`` just before (or just after)
    placing its watch. Later observers (a layout change, a fallback) are left as they are."""
    calls = []

    def factory(interval: float | None):
        observer = make_observer(interval)
        schedule = observer.schedule

        def racing_schedule(*args, **kwargs):
            first = not calls
            calls.append(args[1])
            if first and before:
                write()
            watch = schedule(*args, **kwargs)
            if first and not before:
                write()
            return watch

        observer.schedule = racing_schedule
        return observer

    return lambda interval: factory(poll if interval is None else interval), calls


@OBSERVERS
@pytest.mark.parametrize("where", ["root", "new subfolder", "existing subfolder"])
def test_data_written_just_before_the_watch_is_placed_is_seen(tmp_path, poll, where):
    """Written after the first scan and before the watch exists: only the second scan can see it."""
    logdir = tmp_path / "logs"
    (logdir / "existing").mkdir(parents=True)
    targets = {"root": logdir, "new subfolder": logdir / "sft" / "run1", "existing subfolder": logdir / "existing"}
    target = targets[where]
    written: list[Path] = []
    factory, calls = writing_while_scheduling(poll, lambda: written.append(write_scalar(target)))
    found = wait_for_new_data(logdir, since=time.time(), timeout=60, poll=poll, observer_factory=factory)
    assert calls, "the observer was never scheduled"
    assert found == written[0]


@OBSERVERS
def test_data_written_just_after_the_watch_is_placed_is_seen(tmp_path, poll):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    written: list[Path] = []
    factory, _ = writing_while_scheduling(poll, lambda: written.append(write_scalar(logdir / "dpo")), before=False)
    found = wait_for_new_data(logdir, since=time.time(), timeout=60, poll=poll, observer_factory=factory)
    assert found == written[0]


@OBSERVERS
def test_the_log_folder_appearing_while_its_parent_is_watched_is_seen(tmp_path, poll):
    """The log folder doesn't exist yet: its parent is watched, and the folder (with data) appears
    just before that watch is placed."""
    logdir = tmp_path / "tf_dir" / "pretrain"
    (tmp_path / "tf_dir").mkdir()
    written: list[Path] = []
    factory, calls = writing_while_scheduling(poll, lambda: written.append(write_scalar(logdir)))
    found = wait_for_new_data(logdir, since=time.time(), timeout=60, poll=poll, observer_factory=factory)
    assert found == written[0]
    assert calls[0] == str(tmp_path / "tf_dir"), "the parent was watched first"


@OBSERVERS
@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_data_written_while_a_large_tree_is_being_watched_is_seen(tmp_path, poll, which):
    """2,000 folders: placing the recursive watch takes a while, and a writer thread writes
    into one of them meanwhile — before or after that folder's own watch, whichever it hits."""
    logdir = tmp_path / "logs"
    folders = [logdir / f"run{i:02d}" / f"sub{j:02d}" for i in range(50) for j in range(40)]
    for folder in folders:
        folder.mkdir(parents=True)
    target = {"first": folders[0], "middle": folders[len(folders) // 2], "last": folders[-1]}[which]
    written: list[Path] = []
    writer = threading.Thread(target=lambda: written.append(write_scalar(target)))
    factory, _ = writing_while_scheduling(poll, writer.start)
    try:
        found = wait_for_new_data(logdir, since=time.time(), timeout=60, poll=poll, observer_factory=factory)
    finally:
        writer.join(timeout=60)
    assert found == written[0]


@OBSERVERS
def test_many_runs_raced_one_after_another_are_all_seen(tmp_path, poll):
    """Twenty waits, each raced by its own writer thread started inside ``schedule()``: every one
    of them sees its file."""
    missed = []
    for attempt in range(20):
        logdir = tmp_path / f"logs{attempt:02d}"
        (logdir / "a" / "b").mkdir(parents=True)
        written: list[Path] = []
        writer = threading.Thread(target=lambda d=logdir, w=written: w.append(write_scalar(d / "a" / "b")))
        factory, _ = writing_while_scheduling(poll, writer.start, before=attempt % 2 == 0)
        try:
            found = wait_for_new_data(logdir, since=time.time(), timeout=60, poll=poll, observer_factory=factory)
        finally:
            writer.join(timeout=60)
        if found != written[0]:
            missed.append((attempt, found))
    assert missed == []


def test_folders_made_just_after_the_watch_is_placed_are_no_reason_to_poll(tmp_path, capsys):
    """A trainer makes ``run/stage`` the moment the watcher has placed its watches: the second
    scan may find those folders before watchdog has handled their creation (it watches them
    then). That is not the watch limit: inotify keeps going, and sees the data."""
    for attempt in range(20):
        logdir = tmp_path / f"logs{attempt:02d}"
        logdir.mkdir()
        deep = logdir / "20261206-103000" / "pretrain" / "more"
        written: list[Path] = []
        made: list[float | None] = []

        def train(folder=deep, out=written):
            folder.mkdir(parents=True)
            out.append(write_scalar(folder))

        trainer = threading.Thread(target=train)
        factory, _ = writing_while_scheduling(None, trainer.start, before=False)
        try:
            found = wait_for_new_data(logdir, since=time.time(), timeout=60,
                                      observer_factory=lambda poll, f=factory, m=made: m.append(poll) or f(poll))
        finally:
            trainer.join(timeout=60)
        assert found == written[0]
        assert made == [None], f"attempt {attempt}: fell back to polling: {capsys.readouterr().err}"
