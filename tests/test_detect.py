"""Detection with a real watchdog observer (inotify, or polling) on real folders."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

from conftest import write_scalar

from tb_lazy.detect import find_event_file, is_event_file, make_observer, wait_for_event_file


def wait_in_thread(logdir: Path, **options) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(wait_for_event_file(logdir, **options)), daemon=True)
    thread.start()
    time.sleep(0.5)  # let the observer settle on the nearest existing ancestor
    return thread, result


def finish(thread: threading.Thread, result: list):
    thread.join(timeout=30)
    assert not thread.is_alive(), "the wait did not end"
    return result[0]


def test_event_file_names_follow_tensorboard():
    assert is_event_file("events.out.tfevents.1700000000.host.123.0")
    assert is_event_file("/a/b/events.out.tfevents.1.x.v2")
    assert not is_event_file("events.txt") and not is_event_file("/runs/tfevents_dir/model.ckpt")


def test_finds_an_event_file_deep_under_a_folder_created_later(tmp_path):
    logdir = tmp_path / "a" / "b" / "logs"
    thread, result = wait_in_thread(logdir, timeout=30)
    event_file = write_scalar(logdir / "stage" / "x" / "y")
    assert finish(thread, result) == event_file


def test_a_file_renamed_into_place_counts(tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    staging = tmp_path / "staging.tmp"
    staging.write_bytes(b"\0" * 40)
    thread, result = wait_in_thread(logdir, timeout=30)
    target = logdir / "events.out.tfevents.123.host"
    os.rename(staging, target)
    assert finish(thread, result) == target


def test_a_folder_moved_into_place_counts(tmp_path):
    logdir = tmp_path / "logs"
    staged = tmp_path / "staged"
    event_file = write_scalar(staged / "run")
    thread, result = wait_in_thread(logdir, timeout=30)
    os.rename(staged, logdir)
    assert finish(thread, result) == logdir / "run" / event_file.name


def test_other_files_and_files_beside_the_folder_never_trigger(tmp_path):
    logdir = tmp_path / "logs" / "mine"
    thread, result = wait_in_thread(logdir, timeout=2.0)
    write_scalar(tmp_path / "logs" / "someone-else")  # a sibling, not under DIR
    (logdir / "run").mkdir(parents=True)
    (logdir / "run" / "checkpoint.safetensors").write_bytes(b"x")
    (logdir / "notes-tfevent.txt").write_text("close, but not 'tfevents'")
    assert finish(thread, result) is None


def test_existing_file_is_found_without_waiting(tmp_path):
    event_file = write_scalar(tmp_path / "logs" / "run")
    assert wait_for_event_file(tmp_path / "logs", timeout=0.01) == event_file


def test_should_stop_ends_the_wait(tmp_path):
    stop = threading.Event()
    thread, result = wait_in_thread(tmp_path / "logs", should_stop=stop.is_set)
    stop.set()
    assert finish(thread, result) is None


def test_polling_finds_a_late_folder(tmp_path):
    logdir = tmp_path / "nfs" / "logs"
    thread, result = wait_in_thread(logdir, poll=0.1, timeout=30)
    event_file = write_scalar(logdir / "run")
    assert finish(thread, result) == event_file


def test_falls_back_to_polling_when_inotify_is_exhausted(tmp_path, capsys):
    """Stand-in: reaching the system-wide inotify watch limit on purpose would disturb the machine."""
    made = []

    def exhausted_inotify(poll):
        observer = make_observer(poll)
        if poll is None:
            def refuse(*args, **kwargs):
                raise OSError(errno.ENOSPC, "inotify watch limit reached")

            observer.schedule = refuse
        made.append((poll, observer))
        return observer

    logdir = tmp_path / "logs"
    thread, result = wait_in_thread(logdir, timeout=30, observer_factory=exhausted_inotify)
    event_file = write_scalar(logdir)
    assert finish(thread, result) == event_file
    assert [poll for poll, _ in made] == [None, 1.0]
    assert "[warn] can't watch" in capsys.readouterr().err


def test_find_event_file_ignores_missing_roots(tmp_path):
    assert find_event_file(tmp_path / "nope") is None


def test_falls_back_to_polling_when_inotify_instances_run_out(tmp_path, capsys):
    """Stand-in: exhausting the per-user inotify instances would break other programs here."""
    made = []

    def no_instances(poll):
        if poll is None:
            raise OSError(errno.EMFILE, "inotify instance limit reached")
        made.append(poll)
        return make_observer(poll)

    logdir = tmp_path / "logs"
    thread, result = wait_in_thread(logdir, timeout=30, observer_factory=no_instances)
    event_file = write_scalar(logdir)
    assert finish(thread, result) == event_file
    assert made == [1.0] and "polling every 1s" in capsys.readouterr().err


def test_a_file_deep_in_a_tree_of_ten_thousand_folders_is_seen(tmp_path):
    """Our own scans open every folder: inotify must not be flooded with those events."""
    logdir = tmp_path / "logs"
    for i in range(100):
        for j in range(100):
            (logdir / f"run{i:03d}" / f"sub{j:03d}").mkdir(parents=True)
    thread, result = wait_in_thread(logdir, timeout=10)
    time.sleep(1.0)  # let the start-up scans and the recursive watch settle
    target = logdir / "run057" / "sub042" / "events.out.tfevents.1.host"
    target.write_bytes(b"\0" * 40)
    assert finish(thread, result) == target


def test_network_file_systems_are_recognised_from_the_mount_table():
    """The mount table is given: an NFS server can't be mounted here to test with."""
    mounts = (
        "/dev/vda / ext4 rw 0 0\n"
        "server:/export /mnt/shared nfs4 rw 0 0\n"
        "host:/data /mnt/with\\040space fuse.sshfs rw 0 0\n"
        "tmpfs /mnt/shared/local tmpfs rw 0 0\n"
    )
    from tb_lazy.detect import NETWORK_FILE_SYSTEMS, file_system_type

    assert file_system_type(Path("/mnt/shared/runs/x"), mounts) == "nfs4"
    assert file_system_type(Path("/mnt/shared/local/x"), mounts) == "tmpfs", "the deepest mount point wins"
    assert file_system_type(Path("/mnt/sharedX"), mounts) == "ext4", "a name prefix is not a mount point"
    assert file_system_type(Path("/mnt/with space/logs"), mounts) == "fuse.sshfs"
    assert {"nfs4", "fuse.sshfs"} <= NETWORK_FILE_SYSTEMS and "ext4" not in NETWORK_FILE_SYSTEMS


def test_the_local_file_system_is_not_polled(tmp_path, capsys):
    event_file = write_scalar(tmp_path / "logs")
    assert wait_for_event_file(tmp_path / "logs", timeout=5) == event_file
    assert "polling" not in capsys.readouterr().err
