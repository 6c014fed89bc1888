"""The pipelines end to end: real bash, real MLX training, real watchers and TensorBoards.

One smoke run (pretrain + SFT with TensorBoard auto-start) is shared by the tests that
only read its results; every other run gets its own folders. Each run is isolated from
TensorBoards elsewhere on the machine (tb_lazy state and temp folder under its root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    REPO,
    Proc,
    default_columns,
    free_port,
    get_json,
    isolated_env,
    pids_mentioning,
    pipeline_env,
    post_json,
    session_groups,
    stop_everything_under,
    tensorboard_pids,
    wait_for,
)

from mlx_train.runs import find_checkpoint

RUN_MLX = REPO / "pipelines" / "run_mlx.sh"
DISTILL = REPO / "pipelines" / "run_mlx_distill_ollama.sh"
URL_LINE = re.compile(r"^\[tensorboard\] (http://127\.0\.0\.1:\d+) \(pid=(\d+)\)$", re.M)


def run(script: Path, *args: str, env: dict[str, str], cwd: Path, timeout: float = 600):
    return subprocess.run(
        ["bash", str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def watchers_under(root: Path) -> list[int]:
    return [pid for pid in pids_mentioning(str(root)) if b"tb_lazy" in Path(f"/proc/{pid}/cmdline").read_bytes()]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``run_mlx.sh --smoke-test`` with TB_AUTO=1, once for the module."""
    root = tmp_path_factory.mktemp("smoke")
    env = pipeline_env(root)
    try:
        result = run(RUN_MLX, "--smoke-test", env=env, cwd=root)
        yield root, env, result
    finally:
        stop_everything_under(root, env)


@pytest.fixture
def own_root(tmp_path):
    """Folders for one run; whatever it leaves behind is stopped, and fails the test."""
    yield tmp_path
    leaked = stop_everything_under(tmp_path, isolated_env(tmp_path))
    assert not leaked, f"processes left running: {leaked}"


def test_smoke_pipeline_prints_one_url_and_serves_every_stage(smoke):
    root, env, result = smoke
    assert result.returncode == 0, result.stderr[-3000:]
    urls = URL_LINE.findall(result.stdout)
    assert len(urls) == 1, f"expected one [tensorboard] line:\n{result.stdout}"
    assert result.stdout.count("[tensorboard]") == 1
    url, pid = urls[0]
    assert tensorboard_pids(root) == [int(pid)], "exactly one TensorBoard for the whole run"
    assert get_json(f"{url}/data/environment")["data_location"] == env["TF_DIR"]
    wanted = {"train/loss", "train/lr", "eval/loss"}

    def every_stage_served():     # TensorBoard runs are <stage>/<run name>
        tags = get_json(f"{url}/data/plugin/scalars/tags")
        return all(any(wanted <= set(t) for run, t in tags.items() if run.startswith(f"{stage}/"))
                   for stage in ("pretrain", "sft")) and tags

    # TensorBoard reloads every few seconds: the last stage's last scalars may need one more.
    assert wait_for(every_stage_served, timeout=30), get_json(f"{url}/data/plugin/scalars/tags")
    assert watchers_under(root) == [], "the watcher must be gone when the pipeline ends"


def test_smoke_pipeline_stdout_is_the_url_and_the_sample_only(smoke):
    """stdout carries what a caller would pipe; [blas], progress, data notes go to stderr, once."""
    _, _, result = smoke
    assert result.returncode == 0
    out = [line for line in result.stdout.splitlines() if line.strip()]
    assert out[0].startswith("[tensorboard] ") and len(out) >= 2, result.stdout
    for line in out[1:]:
        assert not line.startswith(("[", "pretrain ", "sft ")), f"a note on stdout: {line!r}"
    err = result.stderr.splitlines()
    blas_lines = 3 if sys.platform.startswith("linux") else 0   # pretrain, sft, infer; none on macOS
    assert sum(line.startswith("[blas]") for line in err) == blas_lines, "once per mlx_train process"
    assert any("[pretrain] step" in line for line in err) and any("[sft] step" in line for line in err)
    assert sum("[infer] prompt: What is 12 + 7?" in line for line in err) == 1
    assert "No record of process" not in result.stderr and "Traceback" not in result.stderr


def test_infer_piped_to_head_gives_generated_text(smoke):
    root, env, _ = smoke
    checkpoint = root / "out" / "sft"
    infer = f'"$PY" -m mlx_train.infer --checkpoint "{checkpoint}" --prompt "What is 12 + 7?" --chat'
    full = subprocess.run(["bash", "-c", infer], env=env, capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr
    first = subprocess.run(["bash", "-c", f"set -o pipefail; {infer} | head -1"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() and first.stdout == full.stdout.splitlines(keepends=True)[0]
    assert not first.stdout.startswith("["), first.stdout
    assert "[infer] prompt: What is 12 + 7?" in first.stderr and "Traceback" not in first.stderr


# ---- the second run in the same folders: runs never mix -------------------------------------------

RUN_LINE = re.compile(r"^\[run_mlx\.sh\] run (\S+): ", re.M)


@pytest.fixture(scope="module")
def rerun(smoke):
    """After the smoke run, ``run_mlx.sh --smoke-test -- --max_steps 5`` in the same folders:
    the same TF_DIR, OUT_DIR and TensorBoard (the smoke run's, TB_KEEP=1)."""
    root, env, first = smoke
    assert first.returncode == 0, "the smoke run failed; nothing to run a second time over"
    second = run(RUN_MLX, "--smoke-test", "--", "--max_steps", "5", env=env, cwd=root)
    assert second.returncode == 0, second.stderr[-3000:]
    [name1], [name2] = RUN_LINE.findall(first.stderr), RUN_LINE.findall(second.stderr)
    assert name1 != name2
    return root, env, (first, name1), (second, name2)


def test_a_shorter_second_run_trains_from_and_samples_its_own_checkpoints(rerun):
    root, env, (_, name1), (second, name2) = rerun
    out = Path(env["OUT_DIR"])
    pretrain5, sft5 = out / "pretrain" / name2 / "step_0000005", out / "sft" / name2 / "step_0000005"
    err = second.stderr
    assert f"from {pretrain5} (run {name2}, step 5)" in err, "SFT starts from this run's pretrain"
    assert f"[infer] {sft5} (run {name2}, step 5)" in err, "the sample comes from this run's SFT"
    for stage in ("pretrain", "sft"):      # the stage folder (a model for mlx_lm) is this run's step 5
        assert (out / stage / "model.safetensors").stat().st_ino == \
            (out / stage / name2 / "step_0000005" / "model.safetensors").stat().st_ino, stage
        assert json.loads((out / stage / "train_config.json").read_text())["run_name"] == name2
        # the first run's checkpoints are where they were, and the output said so
        assert (out / stage / name1 / "step_0000040" / "model.safetensors").is_file(), stage
        assert f"[{stage}] earlier runs in {out / stage}: {name1} (kept;" in err, stage
    assert find_checkpoint(out / "sft") == sft5


def test_two_runs_are_two_tensorboard_runs_with_every_point_and_a_trial_each(rerun):
    root, _, (first, name1), (second, name2) = rerun
    [(url, pid)] = URL_LINE.findall(first.stdout)
    assert second.stdout.count("[tensorboard]") == 1
    assert f"[tensorboard] {url} (pid={pid}, reused)" in second.stdout, "one TensorBoard serves both runs"
    assert tensorboard_pids(root) == [int(pid)]
    wanted = {f"{stage}/{name}" for stage in ("pretrain", "sft") for name in (name1, name2)}

    def points(run_name: str) -> list[int]:
        rows = get_json(f"{url}/data/plugin/scalars/scalars?run={run_name}&tag=train/loss")
        return [step for _, step, _ in rows]

    def all_loaded():
        tags = get_json(f"{url}/data/plugin/scalars/tags")
        return wanted <= set(tags) and all(points(r) for r in wanted)

    assert wait_for(all_loaded, timeout=60), get_json(f"{url}/data/plugin/scalars/tags")
    for stage in ("pretrain", "sft"):
        assert points(f"{stage}/{name1}") == list(range(5, 41, 5))      # --log_interval 5 over 40 steps
        assert points(f"{stage}/{name2}") == [5]

    def trials():
        groups = session_groups(url)
        return groups if wanted <= set(groups) else None

    groups = wait_for(trials, timeout=60)
    assert groups and set(groups) == wanted, "HPARAMS: one trial per run and stage"
    experiment = post_json(f"{url}/data/plugin/hparams/experiment", {})
    shown = default_columns(experiment)
    assert {"learning_rate", "max_steps", "run_name"} <= set(shown), shown


def test_an_interrupted_run_continues_under_its_name(rerun, own_root):
    """``RUN_NAME=<its name> run_mlx.sh -- --resume``: every stage continues that run's own series
    (SFT too, though the pipeline hands it --init_from: a run that has a checkpoint resumes)."""
    root, env, _, (_, name2) = rerun
    for folder in ("out", "data"):              # a copy: the shared smoke folders stay as they are
        shutil.copytree(root / folder, own_root / folder)
    before = {stage: sorted(p.name for p in (own_root / "out" / stage).iterdir() if p.is_dir())
              for stage in ("pretrain", "sft")}
    env = pipeline_env(own_root, TB_AUTO="0", RUN_NAME=name2)
    result = run(RUN_MLX, "--smoke-test", "--skip-infer", "--", "--resume", "--max_steps", "8", env=env, cwd=own_root)
    assert result.returncode == 0, result.stderr[-3000:]
    out = own_root / "out"
    for stage in ("pretrain", "sft"):
        assert f"[{stage}] resuming run {name2}: checkpoints in {out / stage / name2}" in result.stderr
        assert f"(run {name2}, step 5)" in result.stderr
        assert (out / stage / name2 / "step_0000008" / "model.safetensors").is_file(), stage
        assert sorted(p.name for p in (out / stage).iterdir() if p.is_dir()) == before[stage], "no new run"
        assert find_checkpoint(out / stage) == out / stage / name2 / "step_0000008"


def test_infer_only_starts_nothing(smoke):
    root, env, _ = smoke
    before = tensorboard_pids(root)
    result = run(RUN_MLX, "--infer-only", env={**env, "TB_PORT": str(free_port())}, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[tensorboard]" not in result.stdout
    assert "[infer]" in result.stdout + result.stderr
    assert tensorboard_pids(root) == before and watchers_under(root) == []


def test_auto_off_trains_without_tensorboard(own_root):
    env = pipeline_env(own_root, TB_AUTO="0", SKIP_SFT="1")
    result = run(RUN_MLX, "--smoke-test", "--skip-infer", env=env, cwd=own_root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((own_root / "tf_dir" / "pretrain").glob("*/*tfevents*")), "training still logs"
    assert "[tensorboard]" not in result.stdout
    assert tensorboard_pids(own_root) == [] and watchers_under(own_root) == []


def test_all_stages_skipped_starts_nothing_and_leaves_nothing(own_root):
    env = pipeline_env(own_root, SKIP_PRETRAIN="1", SKIP_SFT="1")
    result = run(RUN_MLX, "--skip-infer", env=env, cwd=own_root)
    assert result.returncode == 0, result.stderr
    assert "[tensorboard]" not in result.stdout
    assert tensorboard_pids(own_root) == [] and watchers_under(own_root) == []


def test_failing_stage_propagates_its_status_and_leaves_no_watcher(own_root):
    bad = own_root / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    env = pipeline_env(own_root, PRETRAIN_DATA=str(bad))
    result = run(RUN_MLX, "--smoke-test", env=env, cwd=own_root)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "bad.jsonl" in result.stderr and ":2" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (own_root / "out" / "sft").exists(), "no later stage runs after a failure"
    assert tensorboard_pids(own_root) == [] and watchers_under(own_root) == []


def test_ctrl_c_exits_130_and_keeps_tensorboard(own_root):
    env = pipeline_env(own_root)
    pipeline = Proc(["bash", str(RUN_MLX), "--smoke-test"], env=env, cwd=own_root, start_new_session=True)
    try:
        line = pipeline.next_line(timeout=300)
        while line is not None and not line.startswith("[tensorboard]"):
            line = pipeline.next_line(timeout=300)
        assert line is not None, "no URL before the pipeline ended"
        tb_pid = int(URL_LINE.match(line)[2])
        os.killpg(pipeline.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        assert pipeline.wait(timeout=60) == 130
        assert watchers_under(own_root) == []
        assert tensorboard_pids(own_root) == [tb_pid], "TB_KEEP=1: TensorBoard survives Ctrl-C"
    finally:
        pipeline.stop()


def test_sigterm_reaches_a_long_stage_at_once(own_root):
    """A scheduler's TERM must not wait for the stage to finish (here: it never would)."""
    env = pipeline_env(own_root, TB_AUTO="0", SKIP_SFT="1")
    pipeline = Proc(["bash", str(RUN_MLX), "--smoke-test", "--", "--max_steps", "1000000"], env=env, cwd=own_root)
    try:
        # progress is on stderr (stdout is for the URL line and generated text)
        started = wait_for(lambda: any("step" in line for line in pipeline.stderr), timeout=300)
        assert started, f"training never started: {pipeline.stderr[-5:]}"
        pipeline.proc.terminate()  # the script only, as `kill PID` would
        assert pipeline.wait(timeout=60) == 143
        assert [pid for pid in pids_mentioning(str(own_root)) if pid != pipeline.pid] == []
    finally:
        pipeline.stop()


def test_keep_off_stops_tensorboard_when_the_pipeline_ends(own_root):
    env = pipeline_env(own_root, TB_KEEP="0", SKIP_SFT="1")
    result = run(RUN_MLX, "--smoke-test", "--skip-infer", env=env, cwd=own_root)
    assert result.returncode == 0, result.stderr[-2000:]
    (_, pid), = URL_LINE.findall(result.stdout)
    assert wait_for(lambda: tensorboard_pids(own_root) == [], timeout=15), f"TensorBoard {pid} outlived the run"
    assert watchers_under(own_root) == []


# ---- a second run on the same TF_DIR: only what this run writes counts ----------------------------


@pytest.fixture
def after_a_smoke_run(smoke, own_root):
    """Folders for a second run whose TF_DIR holds the smoke run's event files (times kept)."""
    _, _, result = smoke
    assert result.returncode == 0, "the smoke run failed; no earlier logs to start from"
    shutil.copytree(smoke[0] / "tf_dir", own_root / "tf_dir")  # copy2: modification times are kept
    return own_root


@pytest.mark.parametrize(
    "how, args, extra_env, status",
    [
        ("all stages skipped", ["--skip-infer"], {"SKIP_PRETRAIN": "1", "SKIP_SFT": "1"}, 0),
        ("bad data", ["--smoke-test"], {"PRETRAIN_DATA": "{root}/bad.jsonl"}, 2),
        ("bad training argument", ["--smoke-test", "--", "--bogus"], {}, 2),
    ],
)
def test_a_second_run_that_logs_nothing_starts_nothing(after_a_smoke_run, how, args, extra_env, status):
    root = after_a_smoke_run
    (root / "bad.jsonl").write_text('{"text": oops}\n')
    env = pipeline_env(root, **{k: v.format(root=root) for k, v in extra_env.items()})
    result = run(RUN_MLX, *args, env=env, cwd=root)
    assert result.returncode == status, (how, result.returncode, result.stderr[-2000:])
    assert "[tensorboard]" not in result.stdout, f"{how}: the earlier run's logs started TensorBoard"
    assert tensorboard_pids(root) == [] and watchers_under(root) == []


def test_a_second_run_that_trains_says_each_thing_once_on_0000_over_ssh(after_a_smoke_run):
    """TB_HOST=0.0.0.0 in an SSH session: the pipeline's watcher and the stage's own watcher
    both run, yet the URL line, the authentication warning and the tunnel hint come once each."""
    root = after_a_smoke_run
    ssh = "198.51.100.7 50022 192.0.2.10 22"  # documentation addresses: nothing is sent to them
    env = pipeline_env(root, SKIP_SFT="1", TB_HOST="0.0.0.0", SSH_CONNECTION=ssh)
    result = run(RUN_MLX, "--smoke-test", "--skip-infer", "--", "--max_steps", "10", env=env, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    port = int(env["TB_PORT"])
    lines = [line for line in result.stdout.splitlines() if line.startswith("[tensorboard]")]
    assert len(lines) == 1 and lines[0].startswith(f"[tensorboard] http://192.0.2.10:{port} (pid="), result.stdout
    assert lines[0].endswith(f", local http://127.0.0.1:{port})"), lines
    pid = int(lines[0].split("pid=")[1].split(",")[0])
    assert tensorboard_pids(root) == [pid]
    stderr = result.stderr.splitlines()
    assert sum("authentication" in line for line in stderr) == 1, result.stderr
    assert sum(f"ssh -N -L {port}:127.0.0.1:{port}" in line for line in stderr) == 1, result.stderr
    runs = wait_for(lambda: get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags"), timeout=30)
    stages = {run.split("/")[0] for run in runs}
    assert {"pretrain", "sft"} <= stages, "TensorBoard serves all of TF_DIR, the earlier runs too"


# ---- distillation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(smoke):
    """The smoke run's SFT checkpoint served by mlx_lm.server (OpenAI API) on a loopback port."""
    root, env, result = smoke
    assert result.returncode == 0, "the smoke run failed; no teacher to serve"
    port = free_port()
    hub = root / "hf-cache"
    hub.mkdir(exist_ok=True)
    checkpoint = find_checkpoint(root / "out" / "sft")  # mlx_lm takes one checkpoint folder
    server = Proc(
        [sys.executable, "-m", "mlx_lm.server", "--model", str(checkpoint), "--host", "127.0.0.1",
         "--port", str(port)],
        env={**env, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"},
    )
    try:
        def ready():
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        if not wait_for(ready, timeout=120, interval=0.2):
            pytest.fail(f"mlx_lm.server did not come up: {server.stderr[-5:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_distill_from_an_openai_compatible_teacher(teacher, smoke, tmp_path):
    root, _, _ = smoke
    run_root = tmp_path
    env = pipeline_env(
        run_root, TEACHER_API="openai", OLLAMA_URL=teacher, OLLAMA_MODEL="default_model", GEN_WORKERS="2",
        COLD_SAMPLES="6", TOTAL_SAMPLES="12", TEACHER_MAX_TOKENS="24", INIT_FROM=str(root / "out" / "sft"),
    )
    try:
        result = run(
            DISTILL, "--smoke-test", "--tensorboard_dir", str(run_root / "tf_dir" / "distill"),
            env=env, cwd=run_root,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in (run_root / "data" / "distill_sft.jsonl").read_text().splitlines()]
        assert 6 <= len(rows) <= 12
        for row in rows:
            user, assistant = row["conversations"]
            assert (user["role"], assistant["role"]) == ("user", "assistant")
            assert user["content"].strip() and isinstance(assistant["content"], str)
        assert len({row["conversations"][0]["content"] for row in rows}) == len(rows), "no duplicate prompts"
        urls = URL_LINE.findall(result.stdout)
        assert len(urls) == 1 and result.stdout.count("[tensorboard]") == 1, result.stdout
        tags = wait_for(lambda: get_json(f"{urls[0][0]}/data/plugin/scalars/tags"), timeout=30)
        assert tags and "train/loss" in next(iter(tags.values()))
        assert len(tensorboard_pids(run_root)) == 1
        assert list((run_root / "out" / "distill").glob("*/step_*/model.safetensors"))
        assert watchers_under(run_root) == [] and pids_mentioning("mlx_train.distill") == []
    finally:
        leaked = stop_everything_under(run_root, env)
    assert not leaked, leaked


def test_distill_without_tensorboard_dir_starts_no_tensorboard(teacher, smoke, own_root):
    root, _, _ = smoke
    env = pipeline_env(
        own_root, TEACHER_API="openai", OLLAMA_URL=teacher, OLLAMA_MODEL="default_model", GEN_WORKERS="2",
        COLD_SAMPLES="4", TOTAL_SAMPLES="4", TEACHER_MAX_TOKENS="16", INIT_FROM=str(root / "out" / "sft"),
    )
    result = run(DISTILL, "--smoke-test", "--max_steps", "6", env=env, cwd=own_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[tensorboard]" not in result.stdout
    assert not (own_root / "tf_dir").exists()
    assert tensorboard_pids(own_root) == [] and watchers_under(own_root) == []


def test_distill_names_the_models_a_real_openai_teacher_serves(teacher, smoke, own_root):
    """A wrong model name against mlx_lm.server: one line listing what it serves (its /v1/models),
    not "try --api ollama". (The server drops its loaded model on a failed load; the next request
    that names it loads it again.)"""
    root, _, _ = smoke
    out = own_root / "distill.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "mlx_train.distill", "--api", "openai", "--url", teacher, "--model", "no-such-model",
         "--out", str(out), "--retries", "0"],
        env=pipeline_env(own_root), cwd=own_root, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    served = str(find_checkpoint(root / "out" / "sft").resolve())
    assert len(lines) == 1 and "'no-such-model' is not served" in lines[0] and served in lines[0], lines
    assert "--api ollama" not in lines[0] and not out.exists()


def test_distill_with_unreachable_teacher_fails_before_training(own_root):
    env = pipeline_env(own_root, OLLAMA_URL=f"http://127.0.0.1:{free_port()}")
    result = run(DISTILL, "--tensorboard_dir", str(own_root / "tf_dir"), env=env, cwd=own_root, timeout=120)
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "ollama" in result.stderr.lower() and "127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (own_root / "out").exists() and not (own_root / "tf_dir").exists()
    assert tensorboard_pids(own_root) == [] and watchers_under(own_root) == []
