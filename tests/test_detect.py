"""Detection with a real watchdog observer (inotify, or polling) on real folders and real
tensorboardX event files: only event data written during this run counts."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

from conftest import append_record, finish, flush_scalar, header_only, wait_in_thread, write_scalar

from tb_lazy.detect.detect import is_event_file, wait_for_new_data
from tb_lazy.detect.observe import file_system_type, make_observer


def test_event_file_names_follow_tensorboard():
    assert is_event_file("events.out.tfevents.1700000000.host.123.0")
    assert is_event_file("/a/b/events.out.tfevents.1.x.v2")
    assert not is_event_file("events.txt") and not is_event_file("/runs/tfevents_dir/model.ckpt")


def test_finds_data_deep_under_a_folder_created_later(tmp_path):
    logdir = tmp_path / "a" / "b" / "logs"
    thread, result = wait_in_thread(logdir, timeout=30)
    event_file = write_scalar(logdir / "stage" / "x" / "y")
    assert finish(thread, result) == event_file


def test_a_header_only_file_does_not_count_until_its_first_record_is_flushed(tmp_path):
    from tensorboardX import SummaryWriter

    logdir = tmp_path / "logs"
    thread, result = wait_in_thread(logdir, timeout=30)
    writer = SummaryWriter(str(logdir))  # creates the file with its header, as at a trainer's start-up
    event_file = next(logdir.glob("*tfevents*"))
    time.sleep(1.0)
    assert thread.is_alive(), f"a header-only file triggered: {result}"
    flush_scalar(writer, event_file)
    assert finish(thread, result) == event_file
    writer.close()


def test_a_writer_closed_without_logging_never_counts(tmp_path):
    logdir = tmp_path / "logs"
    thread, result = wait_in_thread(logdir, timeout=2.0)
    header_only(logdir / "run")
    assert finish(thread, result) is None


def test_old_data_left_untouched_does_not_count_but_an_appended_record_does(tmp_path):
    logdir = tmp_path / "logs"
    old = write_scalar(logdir / "earlier-run")
    header = header_only(logdir / "earlier-crash")
    time.sleep(0.1)
    thread, result = wait_in_thread(logdir, timeout=30)
    time.sleep(0.5)
    assert thread.is_alive(), f"an earlier run's file triggered: {result}"
    append_record(old)  # a resumed run appends
    assert finish(thread, result) == old
    time.sleep(0.2)  # the next run begins later than the append (file times have a tick's slack)
    thread, result = wait_in_thread(logdir, timeout=30)
    append_record(header)
    assert finish(thread, result) == header


def test_an_old_file_rewritten_in_place_counts(tmp_path):
    """tensorboardX names files by second and host: a writer started in the same second as an
    earlier one rewrites that file in place, same inode, maybe the same size."""
    logdir = tmp_path / "logs"
    old = write_scalar(logdir)
    time.sleep(1.1)  # a later second: the header's wall time differs
    thread, result = wait_in_thread(logdir, timeout=30)
    newer = write_scalar(tmp_path / "elsewhere").read_bytes()  # this run's writer, staged to write at once
    assert len(newer) == old.stat().st_size
    with open(old, "r+b") as handle:
        handle.write(newer)
    assert finish(thread, result) == old


def test_existing_data_counts_at_once_when_asked(tmp_path):
    event_file = write_scalar(tmp_path / "logs" / "run")
    header_only(tmp_path / "logs" / "header-only")
    assert wait_for_new_data(tmp_path / "logs", since=None, timeout=0.01) == event_file


def test_data_written_since_the_run_began_counts_although_the_watch_began_later(tmp_path):
    began = time.time()
    event_file = write_scalar(tmp_path / "logs")
    time.sleep(0.3)
    assert wait_for_new_data(tmp_path / "logs", since=began, timeout=0.01) == event_file
    assert wait_for_new_data(tmp_path / "logs", since=time.time(), timeout=0.3) is None


def test_a_file_renamed_into_place_counts_if_written_during_the_run(tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    stale = write_scalar(tmp_path / "stale")
    time.sleep(0.1)
    thread, result = wait_in_thread(logdir, timeout=2.0)
    os.rename(stale, logdir / stale.name)  # old data moved in: not this run's
    assert finish(thread, result) is None
    thread, result = wait_in_thread(logdir, timeout=30)
    fresh = write_scalar(tmp_path / "staging")
    target = logdir / "events.out.tfevents.123.host"
    os.rename(fresh, target)
    assert finish(thread, result) == target


def test_a_folder_moved_into_place_counts(tmp_path):
    logdir = tmp_path / "logs"
    thread, result = wait_in_thread(logdir, timeout=30)
    event_file = write_scalar(tmp_path / "staged" / "run")
    os.rename(tmp_path / "staged", logdir)
    assert finish(thread, result) == logdir / "run" / event_file.name


def test_other_files_and_files_beside_the_folder_never_trigger(tmp_path):
    logdir = tmp_path / "logs" / "mine"
    thread, result = wait_in_thread(logdir, timeout=2.0)
    write_scalar(tmp_path / "logs" / "someone-else")  # a sibling, not under DIR
    (logdir / "run").mkdir(parents=True)
    (logdir / "run" / "checkpoint.safetensors").write_bytes(b"x")
    (logdir / "notes-tfevent.txt").write_text("close, but not 'tfevents'")
    (logdir / "events.out.tfevents.1.garbage").write_bytes(os.urandom(200))  # not TFRecord framing
    assert finish(thread, result) is None


def test_should_stop_ends_the_wait_after_a_last_look(tmp_path):
    stop = threading.Event()
    thread, result = wait_in_thread(tmp_path / "logs", should_stop=stop.is_set)
    stop.set()
    assert finish(thread, result) is None
    logdir = tmp_path / "logs2"
    began = time.time()
    event_file = write_scalar(logdir)
    assert wait_for_new_data(logdir, since=began, should_stop=lambda: True) == event_file


def test_polling_sees_a_late_folder_and_a_header_gaining_data(tmp_path):
    from tensorboardX import SummaryWriter

    logdir = tmp_path / "nfs" / "logs"
    thread, result = wait_in_thread(logdir, poll=0.1, timeout=30)
    writer = SummaryWriter(str(logdir / "run"))
    event_file = next((logdir / "run").glob("*tfevents*"))
    time.sleep(0.5)
    assert thread.is_alive(), f"polling took a header-only file for data: {result}"
    flush_scalar(writer, event_file)
    assert finish(thread, result) == event_file
    writer.close()


def test_falls_back_to_polling_when_inotify_is_exhausted(tmp_path, capsys):
    """Stand-in: reaching the system-wide inotify watch limit on purpose would disturb the machine
    (tests/faults reaches a real one inside a user namespace)."""
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


def test_data_deep_in_a_tree_of_ten_thousand_folders_is_seen(tmp_path):
    """Our own scans open every folder: inotify must not be flooded with those events."""
    logdir = tmp_path / "logs"
    for i in range(100):
        for j in range(100):
            (logdir / f"run{i:03d}" / f"sub{j:03d}").mkdir(parents=True)
    thread, result = wait_in_thread(logdir, timeout=10)
    event_file = header_only(logdir / "run057" / "sub042")
    append_record(event_file)
    assert finish(thread, result) == event_file


def test_network_file_systems_are_recognised_from_the_mount_table():
    """The mount table is given: an NFS server can't be mounted here to test with."""
    mounts = [("/", "ext4"), ("/mnt/shared", "nfs4"), ("/mnt/with space", "fuse.sshfs"), ("/mnt/shared/local", "tmpfs")]
    assert file_system_type(Path("/mnt/shared/runs/x"), mounts) == "nfs4"
    assert file_system_type(Path("/mnt/shared/local/x"), mounts) == "tmpfs", "the deepest mount point wins"
    assert file_system_type(Path("/mnt/sharedX"), mounts) == "ext4", "a name prefix is not a mount point"
    assert file_system_type(Path("/mnt/with space/logs"), mounts) == "fuse.sshfs"


def test_the_systems_own_mount_table_is_read(tmp_path):
    """psutil reads the real mount table: the temp folder's file system has a type, / is known."""
    assert file_system_type(Path("/")) and file_system_type(tmp_path)


def test_the_local_file_system_is_not_polled(tmp_path, capsys):
    event_file = write_scalar(tmp_path / "logs")
    assert wait_for_new_data(tmp_path / "logs", since=None, timeout=5) == event_file
    assert "polling" not in capsys.readouterr().err


def test_what_inotify_watches_is_read_from_the_kernel_not_from_watchdog(tmp_path):
    """``unwatched`` asks the kernel (``/proc/self/fdinfo``), so it works with any watchdog version."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    from tb_lazy.detect.observe import unwatched

    watched, elsewhere = tmp_path / "logs", tmp_path / "elsewhere"
    (watched / "a" / "b").mkdir(parents=True)
    elsewhere.mkdir()
    observer = Observer()
    observer.start()
    try:
        watch = observer.schedule(FileSystemEventHandler(), str(watched), recursive=True)
        assert unwatched(observer, watch, [str(watched), str(watched / "a"), str(watched / "a" / "b")]) is None
        assert unwatched(observer, watch, [str(watched / "a"), str(elsewhere)]) == str(elsewhere)
    finally:
        observer.stop()
        observer.join(timeout=5)
