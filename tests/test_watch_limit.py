"""The polling fallback, reached through the real code paths.

The watch limit: a real inotify limit of 10 watches inside a user namespace, so watchdog's own
watches really fail. Folders created after the watch began beyond the limit are skipped by
watchdog without a word; only ``observe.unwatched()`` (through ``detect._check_watched``)
notices, and the wait moves to polling. A tree over the limit from the start makes watchdog's
``schedule()`` itself fail. The detector runs in a child process (the limit is set inside the
namespace); the test waits for that child's watches to be placed — a readiness file its
observer writes once ``schedule()`` returned — never for a fixed time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, Proc, wait_for, write_scalar

from tb_lazy.detect.detect import wait_for_new_data
from tb_lazy.detect.observe import FALLBACK_POLL, make_observer

LIMIT = 10  # inotify watches in the namespace: the root, a few folders, and room for a few more

CHILD = r"""
import json, sys, time
from pathlib import Path
from tb_lazy.detect.detect import wait_for_new_data
from tb_lazy.detect.observe import make_observer

logdir, ready, limit = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
Path("/proc/sys/user/max_inotify_watches").write_text(limit)
made = []

def factory(poll):
    observer = make_observer(poll)
    made.append(poll)
    schedule = observer.schedule

    def schedule_then_tell(*args, **kwargs):
        watch = schedule(*args, **kwargs)
        if not ready.exists():
            ready.write_text("watching")  # the readiness signal the test waits for
        return watch

    observer.schedule = schedule_then_tell
    return observer

found = wait_for_new_data(logdir, since=time.time(), timeout=float(sys.argv[4]), observer_factory=factory)
print(json.dumps({"found": None if found is None else str(found), "observers": made}), flush=True)
"""


def _userns_inotify_limit() -> str | None:
    """None if a user namespace with its own inotify watch limit can be made here, else why not."""
    if shutil.which("unshare") is None:
        return "no user namespace: unshare is not installed"
    probe = subprocess.run(["unshare", "-U", "-r", "sh", "-c", f"echo {LIMIT} > /proc/sys/user/max_inotify_watches"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no user namespace with its own inotify limit here: {probe.stderr.strip()}"
    return None


def detect_in_namespace(tmp_path: Path, logdir: Path, timeout: float = 120) -> tuple[Proc, Path]:
    """Start the detector in a user namespace with a watch limit of ``LIMIT``; return it once
    its first watches are placed."""
    if reason := _userns_inotify_limit():
        pytest.skip(reason)
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = Proc(["unshare", "-U", "-r", sys.executable, "-c", CHILD, str(logdir), str(ready), str(LIMIT),
                  str(timeout)], env=env)
    assert wait_for(lambda: ready.exists() or child.proc.poll() is not None, 60), "the watches were never placed"
    assert child.proc.poll() is None or ready.exists(), f"the detector ended early: {child.stderr}"
    return child, ready


def outcome(child: Proc) -> dict:
    try:
        assert child.wait(timeout=180) == 0, child.stderr
    finally:
        child.stop()
    return json.loads(child.stdout[-1])


def test_folders_beyond_the_watch_limit_made_after_the_start_are_noticed_and_polled(tmp_path):
    logdir = tmp_path / "logs"
    for i in range(3):
        (logdir / f"run{i:02d}").mkdir(parents=True)
    child, _ = detect_in_namespace(tmp_path, logdir)
    try:
        for i in range(3, 3 + 3 * LIMIT):  # far more folders than watches left: the last ones go unwatched
            (logdir / f"run{i:02d}").mkdir()
        event_file = write_scalar(logdir / f"run{2 + 3 * LIMIT:02d}" / "deeper")
    except BaseException:
        child.stop()
        raise
    result = outcome(child)
    assert result["found"] == str(event_file), "data in a folder inotify couldn't watch was missed"
    assert result["observers"] == [None, FALLBACK_POLL], "one inotify observer, then one polling observer"
    warnings = [line for line in child.stderr if line.startswith("[warn]")]
    assert len(warnings) == 1, child.stderr
    assert "inotify watch limit reached" in warnings[0] and "polling every 1s" in warnings[0]


def test_a_tree_beyond_the_watch_limit_at_the_start_is_polled(tmp_path):
    logdir = tmp_path / "logs"
    for i in range(3 * LIMIT):
        (logdir / f"run{i:02d}").mkdir(parents=True)
    child, _ = detect_in_namespace(tmp_path, logdir)  # ready: the polling observer's watch is placed
    try:
        event_file = write_scalar(logdir / f"run{3 * LIMIT - 1:02d}")
    except BaseException:
        child.stop()
        raise
    result = outcome(child)
    assert result["found"] == str(event_file)
    assert result["observers"] == [None, FALLBACK_POLL]
    warnings = [line for line in child.stderr if line.startswith("[warn]")]
    assert len(warnings) == 1 and "inotify watch limit reached" in warnings[0], child.stderr


def test_a_log_folder_on_a_network_file_system_is_polled(tmp_path, monkeypatch, capsys):
    """Stand-in for the mount table only (no NFS server can be mounted here): the log folder's
    mount point is reported as nfs4. The detector must choose polling for it by itself."""
    import psutil

    logdir = tmp_path / "logs"
    logdir.mkdir()
    real = psutil.disk_partitions(all=True)
    nfs = SimpleNamespace(device="server:/export", mountpoint=str(tmp_path), fstype="nfs4", opts="rw")
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: [*real, nfs])
    made = []

    def factory(poll):
        made.append(poll)
        return make_observer(poll)

    event_file = write_scalar(logdir)
    assert wait_for_new_data(logdir, since=None, timeout=30, observer_factory=factory) == event_file
    assert made == [FALLBACK_POLL], "a network file system is polled from the start"
    assert "is on nfs4" in capsys.readouterr().err
