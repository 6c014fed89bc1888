"""Data-parallel mlx_train under the real ``mlx.launch`` (ring backend, two ranks over loopback
on this machine), against a plain one-process run: same numbers, one writer, honest failures.

Tolerance: with pretraining rows every rank's slice holds the same number of target tokens, so
the mean of the two ranks' losses (and gradients) is the global batch's mean; only the order of
floating-point sums differs. Losses agree to a relative 1e-4 (measured: ~1e-6)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, isolated_env, tensorboard_pids, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlx_train.datagen import write_all

RTOL = 1e-4
TINY = ["--preset", "tiny", "--hidden_size", "64", "--num_heads", "4", "--intermediate_size", "128",
        "--seq_len", "64", "--vocab_size", "512", "--warmup_steps", "0", "--min_lr_ratio", "1",
        "--log_interval", "1", "--eval_interval", "3", "--save_interval", "3", "--eval_batches", "2",
        "--sample_tokens", "8", "--keep_last", "10"]
RUN = "r"          # the run every trainer() here trains or resumes


def ring_port() -> int:
    """A port p with p and p+1 free on loopback (the ring's two ranks listen on both), below the
    ephemeral range: there the ranks' own outgoing connections could take it before a rank binds."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's usual start of the ephemeral range
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, min(low, 32768) - 2)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports")


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
    env.update(TB_AUTO="0", OPENBLAS_NUM_THREADS="1", TMPDIR=str(TMPDIR))
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
    assert "2 ranks x 4 rows" in pretrain["two"].stderr


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
    from mlx_lm import generate, load

    model, tokenizer = load(str(pretrain["dp"] / "out" / RUN / "step_0000006"))
    assert isinstance(generate(model, tokenizer, prompt="The", max_tokens=4), str)

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


@pytest.mark.parametrize("victim", ["rank 1", "launcher"])
def test_a_killed_rank_or_a_stopped_launcher_ends_everything_within_30_s(tmp_path, data, victim):
    """SIGKILL to rank 1 (a rank that dies), or SIGTERM to the launcher (what a pipeline's
    cleanup sends): the run ends non-zero within 30 s and none of its processes is left."""
    log = tmp_path / "stderr.log"
    argv = launcher() + trainer("pretrain", data["pretrain"], tmp_path, "--batch_size", "8",
                                "--max_steps", "100000", tb=False)
    with log.open("w") as err:
        proc = subprocess.Popen(argv, env=env_for(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=err, stdin=subprocess.DEVNULL)
    family: list[psutil.Process] = []
    try:
        assert wait_for(lambda: "step 1/" in log.read_text(), timeout=240), log.read_text()
        family = psutil.Process(proc.pid).children(recursive=True)
        ranks = {p.environ()["MLX_RANK"]: p for p in family if "MLX_RANK" in p.environ()}
        assert set(ranks) == {"0", "1"}, family
        if victim == "rank 1":
            ranks["1"].send_signal(signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGTERM)
        killed_at = time.monotonic()
        status = proc.wait(timeout=30)
        assert time.monotonic() - killed_at < 30
    finally:       # on a failed assertion: the wrapper stops its group; anything left is killed
        if proc.poll() is None:
            stragglers = psutil.Process(proc.pid).children(recursive=True)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for p in stragglers:
                if p.is_running():
                    p.kill()
    if victim == "rank 1":
        assert status == 128 + signal.SIGKILL
        assert "error: rank 1 was killed (SIGKILL)" in log.read_text().splitlines()[-1]
    else:
        assert status == 128 + signal.SIGTERM
    alive = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left running: {alive}"
    assert strays() == []


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


def test_packed_sft_under_two_ranks_splits_the_packed_rows_and_counts_every_real_token(tmp_path, data):
    """Packing (on by default for SFT) packs the global batch, then each rank takes its rows:
    the two ranks train on exactly the rows, data position and real tokens of one process."""
    args = ("--batch_size", "4", "--max_steps", "3", "--eval_interval", "3", "--seq_len", "256")
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
    assert "2 ranks x 2 rows" in two.stderr
