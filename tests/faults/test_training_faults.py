"""Fault injection for mlx_train (issue 8, items 4, 6 and 10), with real processes only:
two real trainers logging into one folder at once, two real data generators writing one
folder at once, and a real trainer frozen (SIGSTOP) in the middle of a checkpoint save and
then SIGKILLed, followed by a real resumed run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlx_train.data import JsonlSource
from mlx_train.datagen import FILES, write_all
from mlx_train.runs import list_checkpoints

pytestmark = pytest.mark.faults

TINY = ["--task", "pretrain", "--preset", "tiny", "--hidden_size", "64", "--num_heads", "4",
        "--intermediate_size", "128", "--seq_len", "64", "--batch_size", "4", "--vocab_size", "512",
        "--warmup_steps", "2", "--eval_batches", "1", "--sample_tokens", "0"]


@pytest.fixture(scope="module")
def pretrain_data(tmp_path_factory) -> Path:
    return write_all(tmp_path_factory.mktemp("data"), seed=0, scale=0.1)["pretrain"]


def child_env() -> dict[str, str]:
    """Our environment, this repo importable, and no TensorBoard auto-start."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, TB_AUTO="0", PYTHONPATH=path)


@pytest.fixture
def start():
    """``start(args)`` runs ``python ARGS`` in the background; whatever still runs at teardown is
    killed by PID."""
    procs: list[subprocess.Popen] = []

    def run(args: list[str]) -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, *args], env=child_env(), cwd=REPO, text=True,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
        return procs[-1]

    yield run
    for proc in procs:
        if proc.poll() is None:       # poll() also reaps one that has ended
            proc.kill()
            proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    """Wait for ``proc``; return its exit code, stdout and stderr."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper():
    """A live process that is not writing anything (a real PID to put into a leftover's name)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    time.sleep(0.1)      # its start time lies before anything the test plants next
    yield proc
    proc.kill()
    proc.wait()


def plant(path: Path, *, folder: bool, age: float = 0.0) -> Path:
    """Create a leftover at ``path``, last modified ``age`` seconds ago."""
    if folder:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half")
    else:
        path.write_text('{"half": ', encoding="utf-8")
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


# ---- item 4: two runs in one --tensorboard_dir keep two event files, in two TensorBoard runs -----

def test_two_trainers_started_together_in_one_tensorboard_dir_keep_all_their_scalars(tmp_path, pretrain_data,
                                                                                     start):
    """Started in the same second, both would take the same default run name (the start time):
    the folders are claimed exclusively, so the second one becomes NAME-2."""
    tbdir = tmp_path / "tf_dir"
    common = ["-m", "mlx_train.train", *TINY, "--data_path", str(pretrain_data), "--tensorboard_dir",
              str(tbdir), "--max_steps", "6", "--log_interval", "2", "--eval_interval", "6"]
    procs = [start([*common, "--out_dir", str(tmp_path / f"out{i}")]) for i in range(2)]
    results = [finish(p) for p in procs]
    for code, _, err in results:
        assert code == 0, err[-2000:]

    files = sorted(p for p in tbdir.rglob("*") if "tfevents" in p.name)
    assert len(files) == 2, [p.name for p in files]
    assert sorted(int(p.name.split(".")[-2]) for p in files) == sorted(p.pid for p in procs)
    assert len({p.parent for p in files}) == 2 and {p.parent.parent for p in files} == {tbdir}, files
    for path in files:      # each run's folder (a TensorBoard run of its own) holds all of that run
        acc = EventAccumulator(str(path.parent))
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6], path.name
        assert [e.step for e in acc.Scalars("eval/loss")] == [6], path.name


# ---- item 6: two data generators on one folder ---------------------------------------------

def test_two_data_generators_on_one_fresh_folder_both_succeed_and_stale_temps_go(tmp_path, sleeper, start):
    out = tmp_path / "fresh" / "data"           # neither the folder nor its parent exist yet
    procs = [start(["-m", "mlx_train.data", "--out_dir", str(out)]) for _ in range(2)]
    results = [finish(p, timeout=120) for p in procs]
    for code, _, err in results:
        assert code == 0 and err == "", err
    expected = write_all(tmp_path / "alone", seed=0)
    for task, name in FILES.items():
        assert (out / name).read_bytes() == expected[task].read_bytes(), name
        assert len(JsonlSource(out / name, task).read_new()) > 100
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values()), "no temporary left"

    # leftovers of interrupted runs: removed by the next run, unless a live writer may own them
    gone = [plant(out / f".tmp_sft.jsonl_{dead_pid()}_0123abcd", folder=False),
            plant(out / f".tmp_dpo.jsonl_{sleeper.pid}_0123abcd", folder=False, age=3600),  # untouched 1 h
            plant(out / "r1.jsonl.tmp", folder=False, age=3600)]                           # older versions
    kept = plant(out / f".tmp_pretrain.jsonl_{sleeper.pid}_4567cdef", folder=False)        # live, fresh
    code, _, err = finish(start(["-m", "mlx_train.data", "--out_dir", str(out), "--scale", "0.01"]))
    assert code == 0, err
    assert [p.name for p in gone if p.exists()] == []
    assert kept.exists()


# ---- item 10: a save interrupted by SIGKILL is cleaned up by the next run -------------------

def kill_mid_save(proc: subprocess.Popen, out: Path, timeout: float = 180) -> Path:
    """SIGKILL ``proc`` while a checkpoint save is under way; return its temporary folder.

    The trainer is frozen with SIGSTOP as soon as a temporary save folder is seen; if that
    folder is still there while it is frozen, the save is caught in the middle and the trainer
    is killed, else it is let go and the next save is tried.
    """
    ours = re.compile(rf"\.tmp_step_\d{{7}}_{proc.pid}(_[0-9a-f]+)?")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if list_checkpoints(out):                # a checkpoint to resume from exists already
            tmp = next((p for p in out.glob(".tmp_step_*") if ours.fullmatch(p.name)), None)
            if tmp is not None:
                os.kill(proc.pid, signal.SIGSTOP)
                if tmp.exists():
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return tmp
                os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.001)
    pytest.fail(f"no save caught in the middle (trainer exit code {proc.poll()})")


def test_save_killed_midway_is_cleaned_by_the_next_run_and_resume_works(tmp_path, pretrain_data, sleeper,
                                                                        start):
    """The interrupted save is real (SIGKILL in the middle of one). The live concurrent writer
    is a stand-in: a real live process that isn't writing, whose PID is put into a planted
    leftover's name (two real trainers can't be made to save into one folder at a set moment)."""
    out = tmp_path / "out" / "r"       # run r's series
    common = ["-m", "mlx_train.train", *TINY, "--data_path", str(pretrain_data), "--out_dir", str(out.parent),
              "--run_name", "r", "--log_interval", "1000", "--eval_interval", "1000", "--save_interval", "1",
              "--keep_last", "2"]
    trainer = start([*common, "--max_steps", "500"])
    left = kill_mid_save(trainer, out)
    assert finish(trainer, timeout=30)[0] == -signal.SIGKILL
    assert left.exists()
    latest = list_checkpoints(out)[-1]
    done = int(latest.name[5:])

    live = plant(out / f".tmp_step_0009999_{sleeper.pid}_89abcdef", folder=True)         # a live writer's
    reused = plant(out / f".tmp_step_0009998_{sleeper.pid}_89abcdef", folder=True, age=3600)  # PID reused since
    dead = plant(out / f".tmp_step_0009997_{dead_pid()}", folder=True)                   # older name format

    code, _, err = finish(start([*common, "--resume", "--max_steps", str(done + 2)]))
    assert code == 0, err[-2000:]
    assert f"resuming {latest} (run r, step {done})" in err, "progress and notes go to stderr"
    assert [p.name for p in list_checkpoints(out)] == [f"step_{done + 1:07d}", f"step_{done + 2:07d}"]
    state = json.loads((out / f"step_{done + 2:07d}" / "trainer_state.json").read_text())
    assert state["step"] == done + 2
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == [live.name], f"left behind: {hidden}"
    assert not left.exists() and not reused.exists() and not dead.exists()
