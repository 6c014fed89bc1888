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
    for code, _, err in results:      # stderr: the summary, one line per file written
        assert code == 0 and sorted(line.split()[0] for line in err.splitlines()) == sorted(FILES), err
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


# ---- issue 16, item 2: hostile data and full or read-only disks are one line ----------------

HOSTILE = {
    "nesting": ("[" * 200_000, "JSON nested too deeply"),
    "huge integer": ('{"text": "a", "n": ' + "7" * 5000 + "}", "Exceeds the limit (4300 digits)"),
    "lone surrogate": ('{"text": "ab\\ud800c"}', "lone surrogate \\ud800 at column 13"),
}


@pytest.mark.parametrize("command", ["train", "export"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_jsonl_is_one_line_with_file_and_line_and_exit_2(tmp_path, pretrain_data, start, command, kind):
    line, reason = HOSTILE[kind]
    good = pretrain_data.read_text(encoding="utf-8").splitlines()[:30]
    data = tmp_path / "hostile.jsonl"
    data.write_text("\n".join([*good, line, *good]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    if command == "train":
        args = ["-m", "mlx_train.train", *TINY, "--data_path", str(data), "--out_dir", str(out),
                "--tensorboard_dir", str(tmp_path / "tb"), "--max_steps", "2"]
    else:
        args = ["-m", "mlx_train.data", "export", "--task", "pretrain", "--data_path", str(data),
                "--out_dir", str(out)]
    code, stdout, stderr = finish(start(args), timeout=120)
    assert code == 2, stderr
    assert stderr.splitlines() == [stderr.splitlines()[0]] and stderr.startswith(f"error: {data}:31: "), stderr
    assert reason in stderr
    assert stdout == "" and not out.exists() and not (tmp_path / "tb").exists()


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a real tmpfs of ``size`` (a mount option: "64k", "2m") at a fresh
    folder; ``small_disk.resize(folder, size)`` remounts it bigger, files kept. Skipped where
    mounting is impossible (not root, no mount namespace); unmounted at teardown."""
    mounted: list[Path] = []

    def mount(size: str, *options: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                               str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(folder)
        return folder

    def resize(folder: Path, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    mount.resize = resize
    yield mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def run_train(start, *args: str) -> tuple[int, list[str], str]:
    """A training run's exit code, its stderr lines other than progress, and the whole stderr."""
    code, _, err = finish(start(["-m", "mlx_train.train", *TINY, *args]), timeout=300)
    other = [line for line in err.splitlines() if not line.startswith(("[pretrain] ", "[blas] "))]
    return code, other, err


def assert_no_partial_output(out: Path) -> None:
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")] if out.is_dir() else []
    assert hidden == [], f"left behind: {hidden}"


@pytest.fixture(scope="module")
def checkpoint_size(tmp_path_factory, pretrain_data) -> dict[str, int]:
    """Bytes of a tiny run's files, measured on a normal disk: the tokenizer cache, a step
    folder, and its weights."""
    out = tmp_path_factory.mktemp("measure") / "out"
    subprocess.run([sys.executable, "-m", "mlx_train.train", *TINY, "--data_path", str(pretrain_data),
                    "--out_dir", str(out), "--run_name", "m", "--max_steps", "1"], env=child_env(), cwd=REPO,
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    step = out / "m" / "step_0000001"
    return {"tokenizer": size(out / "tokenizer"), "step": size(step),
            "weights": (step / "model.safetensors").stat().st_size,
            "published": sum(p.stat().st_size for p in out.iterdir() if p.is_file()
                             and p.name != "model.safetensors")}


@pytest.mark.parametrize("failing", ["model.safetensors", "optimizer.safetensors"])
def test_disk_full_during_a_save_is_one_line_and_resume_on_a_bigger_disk_continues(
        tmp_path, pretrain_data, start, small_disk, checkpoint_size, failing):
    """A real tmpfs with room for the tokenizer and one checkpoint (step 2), not for the next
    one (step 4): the weights, or the optimizer state written after them, don't fit."""
    kb = checkpoint_size
    first = kb["tokenizer"] + kb["published"] + kb["step"]
    room = kb["weights"] // 2 if failing == "model.safetensors" else kb["weights"] + kb["weights"] // 2
    disk = small_disk(f"{(first + room) // 4096 * 4}k")
    out = disk / "out"
    series = out / "r"
    common = ["--data_path", str(pretrain_data), "--out_dir", str(out), "--run_name", "r", "--save_interval", "2",
              "--keep_last", "10", "--eval_interval", "1000"]
    code, other, err = run_train(start, *common, "--max_steps", "6")
    assert code == 74, err
    assert other == [f"error: cannot write {series}/step_0000004/{failing}: No space left on device; free some "
                     f"space (or write elsewhere), then rerun with --resume to continue from {series}/step_0000002"]
    assert [p.name for p in list_checkpoints(series)] == ["step_0000002"]
    assert_no_partial_output(out)
    assert_no_partial_output(series)

    small_disk.resize(disk, "64m")
    code, other, err = run_train(start, *common, "--max_steps", "6", "--resume")
    assert code == 0 and other == [], err
    assert f"resuming {series}/step_0000002 (run r, step 2)" in err
    assert [p.name for p in list_checkpoints(series)] == ["step_0000002", "step_0000004", "step_0000006"]


def test_disk_full_while_caching_the_tokenizer_is_one_line_and_leaves_nothing(
        tmp_path, pretrain_data, start, small_disk):
    disk = small_disk("8k")
    out = disk / "out"
    common = ["--data_path", str(pretrain_data), "--out_dir", str(out), "--run_name", "r", "--max_steps", "2"]
    code, other, err = run_train(start, *common)
    assert code == 74, err
    assert other == [f"error: cannot write {out}/tokenizer/tokenizer.json: No space left on device; free "
                     "some space (or write elsewhere), then rerun"]
    assert not (out / "tokenizer").exists()
    assert_no_partial_output(out)

    small_disk.resize(disk, "64m")
    code, other, err = run_train(start, *common, "--resume")
    assert code == 0 and other == [], err
    assert [p.name for p in list_checkpoints(out / "r")] == ["step_0000002"]


def test_disk_full_in_the_tensorboard_folder_is_one_line_and_resume_continues(
        tmp_path, pretrain_data, start, small_disk):
    """The event file fills a real 16 KB tmpfs after some steps (checkpoints go elsewhere)."""
    disk = small_disk("16k")
    out = tmp_path / "out"
    common = ["--data_path", str(pretrain_data), "--out_dir", str(out), "--tensorboard_dir", str(disk / "tb"),
              "--run_name", "r", "--log_interval", "1", "--save_interval", "5", "--keep_last", "100",
              "--eval_interval", "1000"]
    code, other, err = run_train(start, *common, "--max_steps", "100000")
    assert code == 74, err
    done = list_checkpoints(out / "r")
    assert done, "the disk filled before the first checkpoint: make the tmpfs bigger"
    assert other == [f"error: cannot write TensorBoard logs in {disk / 'tb'}: No space left on device; free "
                     f"some space (or write elsewhere), then rerun with --resume to continue from {done[-1]}"]
    assert_no_partial_output(out)

    small_disk.resize(disk, "64m")
    step = int(done[-1].name[5:])
    code, other, err = run_train(start, *common, "--max_steps", str(step + 2), "--resume")
    assert code == 0 and other == [], err
    assert f"resuming {done[-1]} (run r, step {step})" in err


def test_a_read_only_output_folder_is_one_line(tmp_path, pretrain_data, start, small_disk):
    disk = small_disk("1m", "ro")
    code, other, err = run_train(start, "--data_path", str(pretrain_data), "--out_dir", str(disk / "out"),
                                 "--max_steps", "2")
    assert code == 74, err
    assert other == [f"error: cannot write {disk / 'out'}: Read-only file system; choose a folder you can "
                     "write to, then rerun"]


@pytest.mark.parametrize("command", ["data", "export"])
def test_data_tools_on_a_full_disk_are_one_line_and_leave_nothing(tmp_path, pretrain_data, start, small_disk,
                                                                   command):
    out = small_disk("8k") / "out"
    if command == "data":
        args, first = ["-m", "mlx_train.data", "--out_dir", str(out)], "pretrain.jsonl"
    else:
        args, first = ["-m", "mlx_train.data", "export", "--task", "pretrain", "--data_path", str(pretrain_data),
                       "--out_dir", str(out)], "train.jsonl"
    code, stdout, stderr = finish(start(args), timeout=120)
    assert code == 74, stderr
    assert stderr.splitlines() == [f"error: cannot write {out / first}: No space left on device; free some "
                                   "space (or write elsewhere), then rerun"]
    assert stdout == "" and list(out.iterdir()) == []
