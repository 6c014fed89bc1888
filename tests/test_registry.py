"""TensorBoards started by hand, found through TensorBoard's own info files: --logdir_spec,
--path_prefix and relative folders are understood for reuse and for the printed URL."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest
from conftest import free_port, get_json, wait_for, write_scalar

from tb_lazy.state import registry, watchers
from tb_lazy.state.infofiles import logdir_spec_folders


@pytest.fixture
def by_hand(tb_env):
    """Start ``tensorboard.main ARGS`` from tb_env.root, as a user would; stopped at the end."""
    started = []

    def start(*args: str):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", *args, "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=tb_env.env, cwd=tb_env.root,
        )
        started.append(proc)
        found = wait_for(lambda: next((i for i in registry.running() if i.pid == proc.pid), None), timeout=90)
        assert found, "TensorBoard never wrote its info file"
        return proc, port, found

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=30)


def test_logdir_spec_names_its_folders():
    assert logdir_spec_folders("a:runs/1,b:/abs/2", "/home/u") == ("/home/u/runs/1", "/abs/2")
    assert logdir_spec_folders("/plain/logs", None) == ("/plain/logs",)
    assert logdir_spec_folders("logs", "/w") == ("/w/logs",)


def test_a_tensorboard_with_a_logdir_spec_is_reused_for_each_of_its_folders(tb_env, by_hand):
    proc, port, instance = by_hand("--logdir_spec", "first:logs/one,second:logs/two")
    assert instance.logdir == "first:logs/one,second:logs/two", "list shows the spec as given"
    assert instance.folders == (str(tb_env.root / "logs" / "one"), str(tb_env.root / "logs" / "two"))
    target = tb_env.root / "logs" / "two" / "run"
    watcher = tb_env.run("watch", str(target), "--json")
    tb_env.watching(watcher)
    write_scalar(target)
    info = json.loads(watcher.next_line(60))
    assert info["reused"] and info["pid"] == proc.pid and info["port"] == port
    assert watcher.wait() == 0


def test_a_tensorboard_with_a_path_prefix_is_reused_and_its_url_has_the_prefix(tb_env, by_hand):
    logdir = tb_env.root / "logs"
    proc, port, instance = by_hand("--logdir", "logs", "--path_prefix", "/tb")
    assert instance.url == f"http://127.0.0.1:{port}/tb"
    watcher = tb_env.run("watch", str(logdir), "--json")
    tb_env.watching(watcher)
    write_scalar(logdir / "run")
    info = json.loads(watcher.next_line(60))
    assert info["reused"] and info["pid"] == proc.pid and info["url"] == f"http://127.0.0.1:{port}/tb"
    assert get_json(f"{info['url']}/data/environment")["data_location"] == "logs"
    assert watcher.wait() == 0
    listed = subprocess.run([sys.executable, "-m", "tb_lazy", "list"], env=tb_env.env, capture_output=True,
                            text=True, check=True).stdout
    assert f"http://127.0.0.1:{port}/tb" in listed


def test_a_stale_announcement_is_removed_but_never_a_fresh_one_put_in_its_place(tb_env, monkeypatch):
    """A watcher's announcement left unlocked (its watcher died) is removed; if a new watcher
    given the same PID puts its fresh, locked announcement there just before the removal
    (stand-in for that timing: it happens as the reader reaches for the folder lock), the
    fresh one stays."""
    folder = watchers.watchers_dir()
    folder.mkdir(parents=True)
    stale = folder / "4242.json"
    stale.write_text(json.dumps({"pid": 4242, "logdir": "/old", "since": 1}))
    fresh_tmp = folder / ".fresh.tmp"
    holder = tb_env.spawn([sys.executable, "-c", (
        "import fcntl, json, sys, time\n"
        "handle = open(sys.argv[1], 'w'); fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "handle.write(json.dumps({'pid': 4242, 'logdir': '/new', 'since': 2})); handle.flush()\n"
        "print('locked', flush=True); time.sleep(600)"), str(fresh_tmp)])
    assert holder.next_line(30) == "locked"
    real_lock = watchers._folder_lock

    @contextlib.contextmanager
    def lock_after_a_new_watcher_announced(where):
        if fresh_tmp.exists():
            os.replace(fresh_tmp, stale)  # the new watcher's announcement lands under the same name
        with real_lock(where):
            yield

    monkeypatch.setattr(watchers, "_folder_lock", lock_after_a_new_watcher_announced)
    assert watchers._live_watchers() == []  # the stale one was seen as stale ...
    assert [entry["logdir"] for entry in watchers._live_watchers()] == ["/new"], "... but the fresh one was kept"
    holder.stop()
    assert wait_for(lambda: holder.proc.poll() is not None, timeout=30)
    assert watchers._live_watchers() == [] and not stale.exists(), "stale once its watcher is gone: removed"
