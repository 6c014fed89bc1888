"""``tb-lazy watch`` end to end: real watcher processes, real TensorBoards, real event files."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import append_record, free_port, get_json, header_only, tensorboard_pids, wait_for, write_scalar

from tb_lazy.launch import port_is_free
from tb_lazy.process import pid_alive

LINE = re.compile(r"^\[tensorboard\] http://127\.0\.0\.1:(\d+) \(pid=(\d+)(, reused)?\)$")


def served(line: str | None) -> tuple[int, int, bool]:
    """(port, pid, reused) from the one URL line; fails the test on anything else."""
    assert line is not None, "the watcher printed no URL line"
    match = LINE.match(line)
    assert match, f"unexpected output line: {line!r}"
    return int(match[1]), int(match[2]), bool(match[3])


def scalar_tags(port: int) -> dict:
    return get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")


def test_nothing_starts_without_an_event_file(tb_env):
    logdir = tb_env.root / "logs"
    watcher = tb_env.run("watch", str(logdir))
    tb_env.watching(watcher)
    (logdir / "run").mkdir(parents=True)
    (logdir / "run" / "events.txt").write_text("not an event file")
    (logdir / "run" / "model.ckpt").write_bytes(b"\0" * 64)
    time.sleep(1.5)
    assert watcher.proc.poll() is None, "the watcher gave up although nothing was logged"
    assert watcher.stdout == []
    assert port_is_free("127.0.0.1", tb_env.port), "something listens on the port although nothing was logged"
    assert tensorboard_pids(tb_env.root) == []


def test_late_deeply_nested_folder_is_detected_and_url_means_serving(tb_env):
    logdir = tb_env.root / "not" / "yet" / "there"
    watcher = tb_env.run("watch", str(logdir))
    tb_env.watching(watcher)  # waiting on an ancestor by now
    run = logdir / "stage" / "a" / "b" / "c"
    write_scalar(run, tag="train/loss", value=2.5)
    port, pid, reused = served(watcher.next_line(60))
    assert not reused and port == tb_env.port
    # The line comes only once TensorBoard answers: no retry needed for the first request.
    assert get_json(f"http://127.0.0.1:{port}/data/environment")["data_location"] == str(logdir)
    tags = wait_for(lambda: scalar_tags(port), timeout=30)
    assert tags and any("train/loss" in run_tags for run_tags in tags.values()), tags
    assert watcher.wait() == 0
    assert pid_alive(pid), "TB_KEEP defaults to 1: TensorBoard outlives the watcher"
    assert tensorboard_pids(tb_env.root) == [pid]


def test_existing_data_triggers_at_once_when_asked_and_json_output(tb_env):
    logdir = tb_env.root / "logs"
    write_scalar(logdir / "pretrain")
    watcher = tb_env.run("watch", str(logdir), "--existing", "--json", "--timeout", "60")
    info = json.loads(watcher.next_line(60))
    assert info["port"] == tb_env.port and info["reused"] is False
    assert info["logdir"] == str(logdir) and info["url"] == f"http://127.0.0.1:{tb_env.port}"
    assert watcher.wait() == 0


def test_busy_preferred_port_falls_back_to_a_free_one(tb_env):
    logdir = tb_env.root / "logs"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", tb_env.port))
        squatter.listen()
        write_scalar(logdir)
        watcher = tb_env.run("watch", str(logdir), "--existing")
        port, _, _ = served(watcher.next_line(60))
        assert port != tb_env.port
        assert get_json(f"http://127.0.0.1:{port}/data/environment")["data_location"] == str(logdir)
        assert watcher.wait() == 0


def test_second_watch_on_same_folder_or_subfolder_reuses(tb_env):
    logdir = tb_env.root / "tf_dir"
    write_scalar(logdir / "pretrain")
    first = tb_env.run("watch", str(logdir), "--existing")
    port, pid, reused = served(first.next_line(60))
    assert not reused and first.wait() == 0
    for step, target in enumerate((logdir, logdir / "pretrain")):
        again = tb_env.run("watch", str(target), "--port", str(free_port()))
        tb_env.watching(again)
        write_scalar(logdir / "pretrain", step=step + 1)  # this run's data, beside the earlier run's
        assert served(again.next_line(60)) == (port, pid, True)
        assert again.wait() == 0
    assert tensorboard_pids(tb_env.root) == [pid]


def test_two_watchers_triggered_by_the_same_file_start_one_tensorboard(tb_env):
    logdir = tb_env.root / "tf_dir"
    pipeline = tb_env.run("watch", str(logdir))
    tb_env.watching(pipeline)
    trainer = tb_env.run("watch", str(logdir / "sft"), "--port", str(free_port()))
    tb_env.watching(trainer)
    write_scalar(logdir / "sft")
    a, b = served(pipeline.next_line(60)), served(trainer.next_line(60))
    assert a == (tb_env.port, a[1], False), "the watcher of the parent folder starts TensorBoard"
    assert b == (a[0], a[1], True), "the subfolder's watcher reuses it"
    assert pipeline.wait() == 0 and trainer.wait() == 0
    assert tensorboard_pids(tb_env.root) == [a[1]]
    assert get_json(f"http://127.0.0.1:{a[0]}/data/environment")["data_location"] == str(logdir)


def test_two_watchers_of_one_folder_start_one_tensorboard_the_first_one(tb_env):
    """The first watcher is started as the installed ``tb-lazy`` script, the second as a module."""
    script = Path(sys.executable).with_name("tb-lazy")
    if not script.exists():
        pytest.skip("the tb-lazy console script is not installed beside this interpreter")
    logdir = tb_env.root / "tf_dir" / "distill"
    first = tb_env.spawn([str(script), "watch", str(logdir)])
    tb_env.watching(first)
    second = tb_env.run("watch", str(logdir), "--port", str(free_port()))
    tb_env.watching(second)
    write_scalar(logdir)
    a, b = served(first.next_line(60)), served(second.next_line(60))
    assert a == (tb_env.port, a[1], False) and b == (a[0], a[1], True)
    assert first.wait() == 0 and second.wait() == 0
    assert tensorboard_pids(tb_env.root) == [a[1]]


def test_dead_instance_is_not_reused(tb_env):
    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    first = tb_env.run("watch", str(logdir), "--existing")
    _, old_pid, _ = served(first.next_line(60))
    first.wait()
    subprocess.run([sys.executable, "-m", "tb_lazy", "stop", str(logdir)], env=tb_env.env, check=True)
    # A stale info file from a TensorBoard killed without cleanup must not count either.
    info_dir = Path(tb_env.env["TMPDIR"]) / ".tensorboard-info"
    info_dir.mkdir(exist_ok=True)
    stale = {"pid": old_pid, "port": 1, "logdir": str(logdir), "start_time": int(time.time())}
    (info_dir / f"pid-{old_pid}.info").write_text(json.dumps(stale))
    second = tb_env.run("watch", str(logdir), "--existing")
    _, new_pid, reused = served(second.next_line(60))
    assert not reused and new_pid != old_pid
    second.wait()


def test_exit_with_a_dead_parent_leaves_nothing_behind(tb_env):
    parent = tb_env.spawn([sys.executable, "-c", "import time; time.sleep(1)"])
    watcher = tb_env.run("watch", str(tb_env.root / "logs"), "--exit-with", str(parent.pid))
    assert parent.wait() == 0
    assert watcher.wait(timeout=10) == 0
    assert watcher.stdout == []
    assert "ended before it wrote any event data" in "\n".join(watcher.stderr)
    assert tensorboard_pids(tb_env.root) == []


def test_no_keep_stops_tensorboard_with_its_parent(tb_env):
    logdir = tb_env.root / "logs"
    parent = tb_env.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    watcher = tb_env.run("watch", str(logdir), "--exit-with", str(parent.pid), env={"TB_KEEP": "0"})
    write_scalar(logdir)
    _, pid, _ = served(watcher.next_line(60))
    assert watcher.proc.poll() is None, "without keep the watcher stays to stop TensorBoard later"
    parent.stop()
    assert watcher.wait(timeout=20) == 0
    assert not pid_alive(pid)
    assert tensorboard_pids(tb_env.root) == []


def test_keep_survives_the_pipelines_ctrl_c(tb_env):
    """A 'pipeline' (a Python parent with Ctrl-C's default action) in its own process group
    runs the watcher in the foreground group; Ctrl-C then hits the whole group."""
    logdir = tb_env.root / "logs"
    parent = (
        "import os, subprocess, sys, time; "
        "args = ['watch', sys.argv[1], '--exit-with', str(os.getpid())]; "
        "subprocess.run([sys.executable, '-m', 'tb_lazy', *args]); time.sleep(600)"
    )
    pipeline = tb_env.spawn([sys.executable, "-c", parent, str(logdir)], start_new_session=True)
    write_scalar(logdir)
    _, pid, _ = served(pipeline.next_line(60))
    os.killpg(pipeline.pid, signal.SIGINT)
    assert pipeline.wait(timeout=20) != 0, "the pipeline itself dies of the Ctrl-C"
    assert pid_alive(pid), "TensorBoard died with the pipeline's Ctrl-C although TB_KEEP=1"
    with urllib.request.urlopen(f"http://127.0.0.1:{tb_env.port}/data/environment", timeout=5) as response:
        assert response.status == 200


def test_polling_mode_finds_a_late_folder(tb_env):
    logdir = tb_env.root / "nfs" / "logs"
    watcher = tb_env.run("watch", str(logdir), "--poll", "0.2")
    tb_env.watching(watcher)
    write_scalar(logdir / "run")
    port, _, _ = served(watcher.next_line(60))
    assert port == tb_env.port and watcher.wait() == 0


def test_paths_with_spaces_quotes_and_non_ascii(tb_env):
    logdir = tb_env.root / "运行 1" / "it's \"quoted\""
    watcher = tb_env.run("watch", str(logdir), "--json")
    tb_env.watching(watcher)
    write_scalar(logdir / "stage")
    info = json.loads(watcher.next_line(60))
    assert info["logdir"] == str(logdir)
    assert get_json(f"{info['url']}/data/environment")["data_location"] == str(logdir)
    assert watcher.wait() == 0


def test_public_host_warns_about_authentication(tb_env):
    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    watcher = tb_env.run("watch", str(logdir), "--host", "0.0.0.0", "--json", "--existing")
    info = json.loads(watcher.next_line(60))
    assert watcher.wait() == 0
    assert info["host"] == "0.0.0.0"
    assert any(line.startswith("[warn]") and "authentication" in line for line in watcher.stderr), watcher.stderr
    assert get_json(f"http://127.0.0.1:{info['port']}/data/environment")["data_location"] == str(logdir)


def test_only_rank_zero_starts_anything(tb_env):
    logdir = tb_env.root / "logs"
    write_scalar(logdir)
    watcher = tb_env.run("watch", str(logdir), "--existing", env={"RANK": "1"})
    assert watcher.wait() == 0 and watcher.stdout == []
    assert tensorboard_pids(tb_env.root) == []


# --- only event data written during this run counts ------------------------------------------

WRITER = """
import sys, time
from tensorboardX import SummaryWriter
writer = SummaryWriter(sys.argv[1])  # flush_secs=120: nothing but the header reaches the disk before close()
{body}
"""


def test_an_earlier_runs_file_starts_nothing_until_a_record_is_appended(tb_env):
    logdir = tb_env.root / "tf_dir"
    old = write_scalar(logdir / "pretrain")
    header_only(logdir / "crashed-run")
    time.sleep(0.2)  # that run ended before this one began (the watcher's process start is this run's)
    watcher = tb_env.run("watch", str(logdir))
    tb_env.watching(watcher)
    time.sleep(1.5)
    assert watcher.stdout == [] and tensorboard_pids(tb_env.root) == [], "an earlier run's logs started TensorBoard"
    append_record(old)  # a resumed run appends to its event file
    port, pid, reused = served(watcher.next_line(60))
    assert not reused and watcher.wait() == 0
    assert get_json(f"http://127.0.0.1:{port}/data/environment")["data_location"] == str(logdir)


def test_a_writer_that_never_logs_starts_nothing(tb_env):
    """A third-party script builds its writer at start-up, then dies loading data."""
    logdir = tb_env.root / "logs"
    trainer = tb_env.spawn([sys.executable, "-c", WRITER.format(body="writer.close(); sys.exit(3)"), str(logdir)])
    watcher = tb_env.run("watch", str(logdir), "--exit-with", str(trainer.pid))
    assert trainer.wait() == 3
    assert watcher.wait(timeout=10) == 0
    assert list(logdir.glob("*tfevents*")), "the writer created its (header-only) file"
    assert watcher.stdout == [] and tensorboard_pids(tb_env.root) == []


def test_a_writer_that_flushes_only_at_close_starts_tensorboard_as_its_process_ends(tb_env):
    logdir = tb_env.root / "logs"
    body = "time.sleep(1); writer.add_scalar('train/loss', 2.0, 0); writer.close()"
    trainer = tb_env.spawn([sys.executable, "-c", WRITER.format(body=body), str(logdir)])
    watcher = tb_env.run("watch", str(logdir), "--exit-with", str(trainer.pid))
    port, pid, _ = served(watcher.next_line(60))
    assert trainer.wait() == 0 and watcher.wait() == 0
    assert pid_alive(pid), "TB_KEEP=1: TensorBoard stays although the writing process ended"
    tags = wait_for(lambda: scalar_tags(port), timeout=30)
    assert tags and any("train/loss" in run_tags for run_tags in tags.values()), tags


def test_a_watcher_started_after_the_run_began_writing_still_starts(tb_env):
    logdir = tb_env.root / "logs"
    body = "writer.add_scalar('train/loss', 1.0, 0); writer.close(); time.sleep(600)"
    trainer = tb_env.spawn([sys.executable, "-c", WRITER.format(body=body), str(logdir)])
    assert wait_for(lambda: any(f.stat().st_size > 40 for f in logdir.glob("*tfevents*")), timeout=30)
    time.sleep(2)
    watcher = tb_env.run("watch", str(logdir), "--exit-with", str(trainer.pid))
    port, _, reused = served(watcher.next_line(60))
    assert not reused and watcher.wait() == 0
    trainer.stop()
