"""Data-parallel mlx_train under the real ``mlx.launch`` (ring backend, two ranks over loopback
on this machine), against a plain one-process run: same numbers, one writer, honest failures.

Tolerance: with pretraining rows every rank's slice holds the same number of target tokens, so
the mean of the two ranks' losses (and gradients) is the global batch's mean; only the order of
floating-point sums differs. Losses agree to a relative 1e-4 (measured: ~1e-6)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from conftest import REPO, isolated_env, tensorboard_pids, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlx_train.datagen import write_all
from mlx_train.launch import ring_port

RTOL = 1e-4
TINY = ["--preset", "tiny", "--hidden_size", "64", "--num_heads", "4", "--intermediate_size", "128",
        "--seq_len", "64", "--vocab_size", "512", "--warmup_steps", "0", "--min_lr_ratio", "1",
        "--log_interval", "1", "--eval_interval", "3", "--save_interval", "3", "--eval_batches", "2",
        "--sample_tokens", "8", "--keep_last", "10"]
RUN = "r"          # the run every trainer() here trains or resumes


def launcher(n: int = 2) -> list[str]:
    return [sys.executable, "-m", "mlx_train.launch", "-n", str(n), "--backend", "ring", "-p", str(ring_port())]


def trainer(task: str, data: Path, root: Path, *extra: str, tb: bool = True) -> list[str]:
    """Run RUN: checkpoints in root/out/RUN, logs in root/tb/RUN (a --resume continues it)."""
    argv = [sys.executable, "-m", "mlx_train.train", "--task", task, "--data_path", str(data),
            "--out_dir", str(root / "out"), "--run_name", RUN, *TINY, *extra]
    return argv + (["--tensorboard_dir", str(root / "tb")] if tb else [])


@pytest.fixture(scope="module", autouse=True)
def shared_tmp(tmp_path_factory) -> Path:
    """One temp folder for every run here, where a rank's stray temporary file would show. MLX
    keeps its compiled CPU kernels in TMPDIR/mlx (a cold cache costs minutes on a busy machine):
    that one is linked to the usual, warm one."""
    global TMPDIR
    TMPDIR = tmp_path_factory.mktemp("tmp")
    kernels = Path(tempfile.gettempdir()) / "mlx"
    kernels.mkdir(exist_ok=True)
    (TMPDIR / "mlx").symlink_to(kernels, target_is_directory=True)
    return TMPDIR


TMPDIR: Path


def strays() -> list[str]:
    """What the runs left in the temp folder, MLX's kernel cache aside."""
    return sorted(name for name in os.listdir(TMPDIR) if name != "mlx")


def env_for(root: Path) -> dict[str, str]:
    env = isolated_env(root)
    # PYTHONUNBUFFERED as in many containers: mlx.launch's warnings must still be whole lines
    env.update(TB_AUTO="0", OPENBLAS_NUM_THREADS="1", TMPDIR=str(TMPDIR), PYTHONUNBUFFERED="1")
    return env


def run(argv: list[str], root: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.run(argv, env=env_for(root), cwd=root, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def scalars(tbdir: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(tbdir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def assert_close(got: dict[int, float], want: dict[int, float], steps: range) -> None:
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=RTOL), f"step {step}: {got[step]} vs {want[step]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("data"), seed=0, scale=0.1)


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory, data):
    """One process for 10 steps; two ranks for 6 (same global batch 8, constant learning rate);
    then one process resuming the two ranks' run to step 8, and two ranks resuming that to 10."""
    base = tmp_path_factory.mktemp("pretrain")
    single, dp = base / "single", base / "dp"
    ref = run(trainer("pretrain", data["pretrain"], single, "--batch_size", "8", "--max_steps", "10"), single)
    assert ref.returncode == 0, ref.stderr
    two = run(launcher() + trainer("pretrain", data["pretrain"], dp, "--batch_size", "8", "--max_steps", "6"), dp)
    assert two.returncode == 0, two.stderr
    written = sorted(str(p.relative_to(dp)) for p in dp.rglob("*"))
    resumed = run(trainer("pretrain", data["pretrain"], dp, "--batch_size", "8", "--max_steps", "8",
                          "--resume", tb=False), dp)
    resumed_two = run(launcher() + trainer("pretrain", data["pretrain"], dp, "--batch_size", "8",
                                           "--max_steps", "10", "--resume", tb=False), dp)
    return dict(single=single, dp=dp, ref=ref, two=two, written=written, resumed=resumed,
                resumed_two=resumed_two)


def printed_losses(stderr: str) -> dict[int, float]:
    """step -> loss of the progress lines (printed to 4 decimals)."""
    return {int(line.split("step ")[1].split("/")[0]): float(line.split("loss ")[1].split()[0])
            for line in stderr.splitlines() if "] step " in line}


def test_two_ranks_train_as_one_process_with_the_global_batch(pretrain):
    ref, two = scalars(pretrain["single"] / "tb" / RUN), scalars(pretrain["dp"] / "tb" / RUN)
    assert_close(two["train/loss"], ref["train/loss"], range(1, 7))
    assert_close(two["train/grad_norm"], ref["train/grad_norm"], range(1, 7))
    assert_close(two["eval/loss"], ref["eval/loss"], range(3, 7, 3))
    assert "2 ranks x 4 samples" in pretrain["two"].stderr


def test_rank_0_alone_writes_logs_checkpoints_and_progress(pretrain):
    dp, two = pretrain["dp"], pretrain["two"]
    events = [p for p in pretrain["written"] if "tfevents" in p]
    assert len(events) == 1, events
    top = {p for p in pretrain["written"] if "/" not in p}
    assert {"out", "tb"} <= top <= {"out", "tb", "tmp"}, top
    stage_model = {"out/config.json", "out/model.safetensors", "out/train_config.json", "out/tokenizer.json",
                   "out/tokenizer_config.json", "out/special_tokens_map.json"}  # the stage folder is a model too
    assert {p for p in pretrain["written"] if p.startswith("out/") and p.count("/") == 1} == \
        {f"out/{RUN}", "out/tokenizer"} | stage_model
    assert {p for p in pretrain["written"] if p.startswith(f"out/{RUN}/") and p.count("/") == 2} == \
        {f"out/{RUN}/step_0000003", f"out/{RUN}/step_0000006"}
    assert strays() == [], "a rank left a temporary file"
    assert not any(name.startswith(".") for name in os.listdir(dp / "out") + os.listdir(dp / "out" / RUN)), \
        "leftover temporaries"
    assert two.stdout == ""                                   # progress goes to stderr
    for line in ("step 1/6 ", "eval step 3 ", "saved ", "tokenizer: trained", "[blas]"):
        count = two.stderr.count(line)
        assert count == (2 if line == "saved " else 1), f"{line!r} printed {count} times:\n{two.stderr}"


def test_two_rank_checkpoint_loads_in_mlx_lm_and_resumes_in_one_process(pretrain):
    from greedy import greedy_text
    from mlx_lm import generate, load

    model, tokenizer = load(str(pretrain["dp"] / "out" / RUN / "step_0000006"))
    assert generate(model, tokenizer, prompt="The", max_tokens=4) == greedy_text(model, tokenizer, "The", max_tokens=4)

    resumed = pretrain["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {pretrain['dp'] / 'out' / RUN / 'step_0000006'} (run {RUN}, step 6)" in resumed.stderr
    # the same data position and weights: steps 7 and 8 give the one-process run's losses
    losses = printed_losses(resumed.stderr)
    ref = scalars(pretrain["single"] / "tb" / RUN)["train/loss"]
    for step in (7, 8):
        assert losses[step] == pytest.approx(ref[step], abs=1e-4)   # printed to 4 decimals


def test_two_ranks_resume_at_the_same_position(pretrain):
    resumed = pretrain["resumed_two"]
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count(f"(run {RUN}, step 8)") == 1          # said once, by rank 0
    state = json.loads((pretrain["dp"] / "out" / RUN / "step_0000010" / "trainer_state.json").read_text())
    ref_state = json.loads((pretrain["single"] / "out" / RUN / "step_0000010" / "trainer_state.json").read_text())
    assert {k: state[k] for k in ("step", "epoch", "batch")} == {k: ref_state[k] for k in ("step", "epoch", "batch")}
    losses, ref = printed_losses(resumed.stderr), scalars(pretrain["single"] / "tb" / RUN)["train/loss"]
    for step in (9, 10):
        assert losses[step] == pytest.approx(ref[step], abs=1e-4)


def test_dpo_with_its_frozen_reference_under_two_ranks(tmp_path, data):
    args = ("--batch_size", "4", "--max_steps", "3", "--eval_interval", "3")
    ref = run(trainer("dpo", data["dpo"], tmp_path / "single", *args), tmp_path / "single")
    two = run(launcher() + trainer("dpo", data["dpo"], tmp_path / "dp", *args), tmp_path / "dp")
    assert ref.returncode == 0 and two.returncode == 0, two.stderr
    want, got = scalars(tmp_path / "single" / "tb" / RUN), scalars(tmp_path / "dp" / "tb" / RUN)
    for tag in ("train/loss", "dpo/accuracy", "dpo/reward_margin"):
        assert_close(got[tag], want[tag], range(1, 4))


def test_batch_not_divisible_by_the_ranks_is_one_line_and_exit_2(tmp_path, data):
    result = run(launcher() + trainer("pretrain", data["pretrain"], tmp_path, "--batch_size", "7"), tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --batch_size=7 (the global batch) is not divisible by the 2 ranks of this run"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "tb").exists()
    assert strays() == []


def start_run(tmp_path: Path, data: dict[str, Path]) -> tuple[subprocess.Popen, Path, dict[str, psutil.Process]]:
    """A 2-rank pretraining run that would go on for hours, once both ranks have taken a step:
    the launcher, its stderr log, and the ranks by MLX_RANK."""
    log = tmp_path / "stderr.log"
    argv = launcher() + trainer("pretrain", data["pretrain"], tmp_path, "--batch_size", "8",
                                "--max_steps", "100000", tb=False)
    with log.open("w") as err:
        proc = subprocess.Popen(argv, env=env_for(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=err, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: "step 1/" in log.read_text(), timeout=240), log.read_text()
        family = psutil.Process(proc.pid).children(recursive=True)
        ranks = {p.environ()["MLX_RANK"]: p for p in family if "MLX_RANK" in p.environ()}
        assert set(ranks) == {"0", "1"}, family
    except BaseException:
        stop_all(proc, psutil.Process(proc.pid).children(recursive=True))
        raise
    return proc, log, ranks


def stop_all(proc: subprocess.Popen, family: list[psutil.Process]) -> None:
    """After a failed assertion: the wrapper stops its group; anything left is killed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for p in family:
        if p.is_running():
            p.kill()


def alive(family: list[psutil.Process]) -> list[int]:
    running = []
    for p in family:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                running.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return running


def test_a_stopped_launcher_ends_everything_within_30_s(tmp_path, data):
    """SIGTERM to the launcher (what a pipeline's cleanup sends): the run ends 143 within 30 s
    and none of its processes is left."""
    proc, _, ranks = start_run(tmp_path, data)
    family = psutil.Process(proc.pid).children(recursive=True)
    try:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
    finally:
        stop_all(proc, family)
    assert status == 128 + signal.SIGTERM
    assert alive(family) == [], "left running"
    assert strays() == []


def test_a_sigkilled_launcher_takes_its_ranks_and_the_next_launch_cleans_up(tmp_path, data):
    """SIGKILL to the launcher (a scheduler's timeout): mlx.launch and both ranks end with it,
    whatever they were doing; what the launch left in the temp folder goes with the next launch."""
    proc, _, ranks = start_run(tmp_path, data)
    family = psutil.Process(proc.pid).children(recursive=True)
    try:
        proc.kill()
        proc.wait()
        gone = wait_for(lambda: alive(family) == [], timeout=30)   # measured: ~0.05 s
        left = alive(family)
    finally:
        for p in family:
            if p.is_running():
                p.kill()
    assert gone and left == [], f"left running: {left}"
    assert [name for name in strays() if name.startswith("mlx_train-launch.")], strays()
    quick = run(launcher() + [sys.executable, "-c", "pass"], tmp_path / "next")
    assert quick.returncode == 0, quick.stderr
    assert strays() == []


@pytest.mark.parametrize("attempt", [1, 2, 3])   # the order of the ranks' ends varies
def test_a_killed_rank_is_one_line_naming_it_and_exit_137(tmp_path, data, attempt):
    """SIGKILL to rank 1: the run ends 137 within 30 s, the terminal shows one line naming rank 1
    (rank 0's lost-connection traceback goes to the log that line names), nothing is left."""
    proc, log, ranks = start_run(tmp_path, data)
    family = psutil.Process(proc.pid).children(recursive=True)
    before = len(log.read_text().splitlines())
    try:
        ranks["1"].send_signal(signal.SIGKILL)
        status = proc.wait(timeout=30)
    finally:
        stop_all(proc, family)
        saved = [TMPDIR / p for p in strays() if p.endswith(".log")]
        texts = {str(path): path.read_text() for path in saved}
        for path in saved:             # the next attempt starts from an empty temp folder
            path.unlink()
    after = log.read_text().splitlines()[before:]
    assert status == 128 + signal.SIGKILL, after
    assert "Traceback" not in log.read_text()
    errors = [line for line in after if not line.startswith("[pretrain] ")]
    assert len(errors) == 1 and errors[0].startswith("error: rank 1 was killed (SIGKILL); the other "
                                                     "ranks were stopped"), after
    for path, text in texts.items():
        assert path in errors[0] and "[ring]" in text
    assert alive(family) == [], "left running"
    assert strays() == []


def test_shard_refuses_a_batch_that_does_not_split_over_the_ranks():
    from mlx_train.distributed import World

    assert World(rank=1, size=2).shard([10, 11, 12, 13]) == [12, 13]
    with pytest.raises(ValueError, match="a batch of 3 does not split over 2 ranks"):
        World(rank=1, size=2).shard([10, 11, 12])


def test_lines_agreed_away_are_read_again_next_time_with_their_line_numbers(tmp_path):
    from mlx_train.data import DataError, JsonlSource

    path = tmp_path / "data.jsonl"
    path.write_text("".join(f'{{"text": "t{i}"}}\n' for i in range(5)) + "\n", encoding="utf-8")
    source = JsonlSource(path, "pretrain")
    assert [r["text"] for r in source.read_new(agree=lambda n: min(n, 3))] == ["t0", "t1", "t2"]
    with path.open("a", encoding="utf-8") as f:
        f.write('{"text": "t5"}\n{"oops": 1}\n')
    with pytest.raises(DataError, match=r"data.jsonl:8: "):   # line 6 is blank
        source.read_new()
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c', encoding="utf-8")   # the last still growing
    source = JsonlSource(path, "pretrain")
    assert source.read_new(growing=True, agree=lambda n: 0) == []
    assert [r["text"] for r in source.read_new(growing=True)] == ["a", "b"]


APPENDER = """
import sys, time
src, dst = sys.argv[1], sys.argv[2]
lines = open(src, encoding="utf-8").read().splitlines(keepends=True)
with open(dst, "a", encoding="utf-8") as out:
    while True:
        for line in lines:
            half = len(line) // 2          # a line is sometimes seen half-written
            out.write(line[:half]); out.flush(); time.sleep(0.05)
            out.write(line[half:]); out.flush(); time.sleep(0.05)
"""


def test_two_ranks_agree_on_data_and_eval_pool_while_the_file_grows(tmp_path, data):
    """--reload_data while another process appends to the data file (lines half-written at times):
    every read, epoch and evaluation, both ranks' own logs show the same numbers."""
    lines = data["pretrain"].read_text(encoding="utf-8").splitlines(keepends=True)
    growing = tmp_path / "growing.jsonl"
    growing.write_text("".join(lines[:40]), encoding="utf-8")
    logs = tmp_path / "ranks"
    logs.mkdir()
    appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(data["pretrain"]), str(growing)])
    try:
        argv = launcher() + trainer("pretrain", growing, tmp_path, "--batch_size", "8", "--epochs", "3",
                                    "--reload_data", "--eval_interval", "5", "--save_interval", "1000", tb=False)
        env = dict(env_for(tmp_path), MLX_TRAIN_RANK_LOG=str(logs))
        result = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                stdin=subprocess.DEVNULL)
    finally:
        appender.kill()
        appender.wait()
    assert result.returncode == 0, result.stderr
    # each rank's own count ("262 here") may differ (measured: 262 and 255 lines at the first
    # read); what they decided ("255 on every rank", epoch sizes, eval pools) may not
    rank0, rank1 = ([re.sub(r"\d+ here, ", "", line) for line in (logs / f"rank{r}.log").read_text().splitlines()]
                    for r in (0, 1))
    assert rank0 == rank1
    epochs = [int(line.split(": ")[1].split()[0]) for line in rank0 if line.startswith("epoch ") and "samples" in line]
    assert len(epochs) >= 2 and epochs == sorted(epochs) and epochs[-1] > epochs[0], rank0   # the data grew
    assert sum(line.startswith("eval pool: ") for line in rank0) >= 3, rank0
    assert sum("on every rank" in line for line in rank0) == len(epochs) + 1, rank0   # start, then each epoch


@pytest.mark.parametrize("lines, rank, status", [
    # rank 0 lost its peer and exited 1 before mlx.launch saw rank 1's SIGKILL: rank 1 is blamed
    (["Node with rank 0 exited with code 1", "Node with rank 1 exited with code -9"], 1, 137),
    # the one mlx.launch stopped ("was killed", or SIGTERM after the first failure) is never blamed
    (["Node with rank 1 exited with code 3", "Node with rank 0 was killed"], 1, 3),
    (["Node with rank 1 exited with code 2", "Node with rank 0 exited with code -15"], 1, 2),
    (["Node with rank 0 exited with code -15", "Node with rank 1 exited with code 1"], 0, 143),
])
def test_the_rank_blamed_is_the_first_that_failed_on_its_own(lines, rank, status):
    from mlx_train.launch import blame, parse_rank_exit

    failures = [parse_rank_exit(f"\x1b[33m[WARN] {line}\x1b[0m\n") for line in lines]
    cause = blame(failures)
    assert (cause.rank, cause.status) == (rank, status)


def test_the_relay_holds_back_tracebacks_and_ring_messages_and_keeps_the_rest(capsys):
    from mlx_train.launch import _Relay

    relay = _Relay()
    lines = ["[pretrain] step 1/9 | loss 6.8\n", "[ring] Socket 4 was closed by the peer\n",
             "Traceback (most recent call last):\n", '  File "x.py", line 1, in <module>\n',
             "OSError: first\n", "\n", "During handling of the above exception, another exception occurred:\n",
             "\n", "Traceback (most recent call last):\n", '  File "x.py", line 3, in <module>\n',
             "RuntimeError: [ring] connection to a peer was lost\n", "\x1b[33m[WARN] Node with rank 1 exited with "
             "code -9\x1b[0m\n", "error: a rank's own one line\n"]
    for line in lines:
        relay.feed(line)
    assert capsys.readouterr().err == "[pretrain] step 1/9 | loss 6.8\nerror: a rank's own one line\n"
    assert relay.held == lines[1:11]
    assert [(f.rank, f.code) for f in relay.failures] == [(1, -9)]


def test_a_warning_printed_inside_a_ranks_line_leaves_that_line_whole(capsys):
    """MLX's C++ writes a message and its newline apart, and mlx.launch can print its warning in
    between (seen once in CI: a stray empty line on the terminal). The lines are crafted here:
    the interleaving can't be caused on demand."""
    from mlx_train.launch import _Relay

    relay = _Relay()
    warning = "\x1b[33m[WARN] Node with rank 1 exited with code -9 \x1b[0m\n"
    for line in ["[ring] Socket 3 was closed by the peer" + warning, "\n", "[pretrain] step 2" + warning,
                 " | loss 6.1\n", "[sft] cut and never ended" + warning]:
        relay.feed(line)
    relay.finish()
    assert capsys.readouterr().err == "[pretrain] step 2 | loss 6.1\n[sft] cut and never ended\n"
    assert relay.held == ["[ring] Socket 3 was closed by the peer\n"]
    assert [(f.rank, f.code) for f in relay.failures] == [(1, -9)] * 3


def test_pipeline_runs_every_stage_under_mlx_launch_and_starts_tensorboard_once(tb_env, tmp_path):
    env = dict(tb_env.env, PY=sys.executable, TF_DIR=str(tmp_path / "tf_dir"), OUT_DIR=str(tmp_path / "out"),
               DATA_DIR=str(tmp_path / "data"), OPENBLAS_NUM_THREADS="1", TMPDIR=str(TMPDIR),
               MLX_LAUNCH=f"mlx.launch -n 2 --backend ring -p {ring_port()}")
    result = subprocess.run(["bash", str(REPO / "pipelines" / "run_mlx.sh"), "--smoke-test", "--skip-infer",
                             "--", "--max_steps", "4", "--save_interval", "4", "--eval_interval", "4",
                             "--sample_tokens", "4"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    urls = [line for line in result.stdout.splitlines() if line.startswith("[tensorboard] ")]
    assert len(urls) == 1, result.stdout
    for stage in ("pretrain", "sft"):
        assert len(list((tmp_path / "tf_dir" / stage).glob("*/*tfevents*"))) == 1     # <stage>/<run>/
        assert [p.name for p in (tmp_path / "out" / stage).glob("*/step_*")] == ["step_0000004"]
        assert result.stderr.count(f"[{stage}] step 4/4 ") == 1
    assert len(tensorboard_pids(tmp_path)) == 1


def test_packed_sft_under_two_ranks_packs_each_share_and_counts_every_real_token(tmp_path, data):
    """Packing (--packing): each rank packs its share of the batch's conversations; the two
    ranks train on exactly the conversations, data position and real tokens of one process."""
    args = ("--batch_size", "4", "--max_steps", "3", "--eval_interval", "3", "--seq_len", "256", "--packing")
    ref = run(trainer("sft", data["sft"], tmp_path / "single", *args), tmp_path / "single")
    two = run(launcher() + trainer("sft", data["sft"], tmp_path / "dp", *args), tmp_path / "dp")
    assert ref.returncode == 0 and two.returncode == 0, two.stderr
    want, got = scalars(tmp_path / "single" / "tb" / RUN), scalars(tmp_path / "dp" / "tb" / RUN)
    assert got["train/tokens_seen"] == want["train/tokens_seen"]           # summed over the ranks
    assert got["train/trained_tokens_per_sec"].keys() == want["train/tokens_seen"].keys()
    state, ref_state = (json.loads((root / "out" / RUN / "step_0000003" / "trainer_state.json").read_text())
                        for root in (tmp_path / "dp", tmp_path / "single"))
    assert {k: state[k] for k in ("step", "epoch", "batch", "tokens_seen")} == \
        {k: ref_state[k] for k in ("step", "epoch", "batch", "tokens_seen")}
    assert "2 ranks x 2 samples" in two.stderr
