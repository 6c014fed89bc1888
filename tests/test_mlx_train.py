"""End-to-end tests of mlx_train: real MLX training steps on a tiny LLaMA on CPU, TensorBoard
event files read back with TensorBoard's own reader, checkpoints loaded with mlx_lm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from greedy import greedy_text
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlx_train import train
from mlx_train.datagen import write_all
from mlx_train.runs import find_checkpoint, list_checkpoints

TINY = ["--preset", "tiny", "--hidden_size", "64", "--num_heads", "4", "--intermediate_size",
        "128", "--seq_len", "64", "--batch_size", "8", "--vocab_size", "512", "--warmup_steps", "2"]
REQUIRED = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "train/step_time",
            "train/epoch", "train/tokens_seen", "train/peak_memory_gb", "eval/loss", "eval/ppl",
            "eval/runtime"}
RUN = "run1"        # run_train's run name: checkpoints in out/RUN/, logs in tb/RUN/


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def data(data_dir) -> dict[str, Path]:
    return write_all(data_dir, seed=0, scale=0.1)


@pytest.fixture(autouse=True)
def no_tensorboard(monkeypatch):
    monkeypatch.setenv("TB_AUTO", "0")      # never start a TensorBoard from these tests


def run_train(tmp: Path, task: str, data_path: Path, *extra: str, name: str = "run",
              tb: bool = True) -> tuple[int, Path, Path]:
    """Train run RUN into ``tmp/name``: exit code, the stage folder, the run's TensorBoard folder."""
    out, tbdir = tmp / name / "out", tmp / name / "tb"
    argv = ["--task", task, "--data_path", str(data_path), "--out_dir", str(out), "--run_name", RUN, *TINY]
    if tb:
        argv += ["--tensorboard_dir", str(tbdir)]
    return train.main(argv + list(extra)), out, tbdir / RUN


def read_scalars(tbdir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(tbdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_texts(tbdir: Path, tag: str = "sample") -> list[str]:
    acc = EventAccumulator(str(tbdir))
    acc.Reload()
    return [t.tensor_proto.string_val[0].decode() for t in acc.Tensors(f"{tag}/text_summary")]


def event_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if "tfevents" in p.name]


@pytest.mark.parametrize("task", ["pretrain", "sft", "dpo", "r1"])
def test_each_task_trains_logs_tags_and_checkpoints(tmp_path, data, task):
    rc, out, tbdir = run_train(tmp_path, task, data[task], "--max_steps", "4", "--log_interval",
                               "2", "--eval_interval", "4", "--eval_batches", "1",
                               "--sample_tokens", "4")
    assert rc == 0
    assert len(event_files(tbdir)) == 1 and event_files(tbdir)[0].parent == tbdir
    scalars = read_scalars(tbdir)
    expected = REQUIRED | ({"dpo/accuracy", "dpo/reward_margin"} if task == "dpo" else set())
    assert expected <= set(scalars)
    assert [s for s, _ in scalars["train/loss"]] == [2, 4]
    texts = read_texts(tbdir)
    assert len(texts) == 1 and texts[0].strip("`\n")
    assert json.loads(read_texts(tbdir, "config")[0].strip("`\n").removeprefix("json\n"))["task"] == task
    ckpt = find_checkpoint(out)
    assert ckpt.name == "step_0000004"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "optimizer.safetensors", "trainer_state.json",
                 "train_config.json"):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "llama"
    assert json.loads((ckpt / "train_config.json").read_text())["task"] == task


def test_pretrain_loss_falls_on_bundled_data(tmp_path, data):
    rc, _, tbdir = run_train(tmp_path, "pretrain", data["pretrain"], "--max_steps", "40",
                             "--log_interval", "5", "--eval_interval", "40",
                             "--eval_batches", "1", "--sample_tokens", "0")
    assert rc == 0
    losses = [v for _, v in read_scalars(tbdir)["train/loss"]]
    assert len(losses) == 8
    assert losses[-1] < 0.6 * losses[0], losses


def test_resume_continues_at_same_step_with_identical_loss(tmp_path, data):
    args = ["--max_steps", "6", "--save_interval", "3", "--keep_last", "5", "--log_interval",
            "1", "--eval_interval", "100", "--eval_batches", "1", "--sample_tokens", "0"]
    rc, out, tbdir = run_train(tmp_path, "sft", data["sft"], *args)
    assert rc == 0
    full = dict(read_scalars(tbdir)["train/loss"])
    assert [p.name for p in list_checkpoints(out / RUN)] == ["step_0000003", "step_0000006"]
    # as if the run had been killed after its step-3 checkpoint
    import shutil
    shutil.rmtree(out / RUN / "step_0000006")
    rc = train.main(["--task", "sft", "--data_path", str(data["sft"]), "--out_dir", str(out),
                     "--tensorboard_dir", str(tmp_path / "tb_resumed"), "--resume", *TINY, *args])
    assert rc == 0
    resumed = dict(read_scalars(tmp_path / "tb_resumed" / RUN)["train/loss"])   # the run it resumed
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step
    state = json.loads((out / RUN / "step_0000006" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["run_name"] == RUN


def test_dpo_accuracy_rises_above_chance(tmp_path, data):
    rc, _, tbdir = run_train(tmp_path, "dpo", data["dpo"], "--max_steps", "24",
                             "--learning_rate", "2e-3", "--log_interval", "8",
                             "--eval_interval", "100", "--eval_batches", "1", "--sample_tokens", "0")
    assert rc == 0
    accuracy = [v for _, v in read_scalars(tbdir)["dpo/accuracy"]]
    margin = [v for _, v in read_scalars(tbdir)["dpo/reward_margin"]]
    assert accuracy[-1] > 0.6, accuracy
    assert margin[-1] > 0, margin


def test_checkpoint_loads_with_mlx_lm_and_generates(tmp_path, data):
    rc, out, _ = run_train(tmp_path, "sft", data["sft"], "--max_steps", "2", "--log_interval",
                           "1", "--eval_batches", "1", "--sample_tokens", "0", tb=False)
    assert rc == 0
    import mlx_lm
    model, tokenizer = mlx_lm.load(str(find_checkpoint(out)))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    text = mlx_lm.generate(model, tokenizer, prompt, max_tokens=5)
    assert text == greedy_text(model, tokenizer, prompt, max_tokens=5)  # the checkpoint's own argmax tokens
    from mlx_train.infer import generate_text
    greedy = generate_text(out, "What is 2 plus 3?", chat=True, max_tokens=5)
    assert greedy == generate_text(out, "What is 2 plus 3?", chat=True, max_tokens=5)


def test_init_from_takes_latest_step_and_carries_tokenizer(tmp_path, data):
    rc, pre, _ = run_train(tmp_path, "pretrain", data["pretrain"], "--max_steps", "4",
                           "--save_interval", "2", "--eval_interval", "100", "--eval_batches", "1",
                           "--sample_tokens", "0", name="pre", tb=False)
    assert rc == 0
    rc, sft, _ = run_train(tmp_path, "sft", data["sft"], "--max_steps", "1", "--init_from",
                           str(pre), "--eval_batches", "1", "--sample_tokens", "0", name="sft",
                           tb=False)
    assert rc == 0
    assert not (sft / "tokenizer").exists()        # no new tokenizer: the checkpoint's is used
    assert (find_checkpoint(sft) / "tokenizer.json").read_bytes() == \
        (pre / RUN / "step_0000004" / "tokenizer.json").read_bytes()
    state = json.loads((find_checkpoint(sft) / "trainer_state.json").read_text())
    assert state["init_from"] == str(pre / RUN / "step_0000004")


def test_no_event_file_without_tensorboard_dir(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run_train(tmp_path, "pretrain", data["pretrain"], "--max_steps", "2",
                           "--log_interval", "1", "--eval_batches", "1", tb=False)
    assert rc == 0 and list_checkpoints(out / RUN)
    assert event_files(tmp_path) == []


def test_no_event_file_before_first_log_step(tmp_path, data, monkeypatch):
    from mlx_train import tblog
    seen = []
    original = tblog.TBLogger.scalars

    def spy(self, step, values):
        if not seen:
            seen.append((step, event_files(tmp_path)))
        return original(self, step, values)

    monkeypatch.setattr(tblog.TBLogger, "scalars", spy)
    rc, _, tbdir = run_train(tmp_path, "pretrain", data["pretrain"], "--max_steps", "3",
                             "--log_interval", "3", "--eval_batches", "1", "--sample_tokens", "0")
    assert rc == 0
    assert seen == [(3, [])]                     # three steps trained, still no event file
    assert len(event_files(tbdir)) == 1


def test_too_few_samples_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"conversations": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) + "\n"
        for i in range(5)))
    rc = train.main(["--task", "sft", "--data_path", str(path), "--out_dir",
                     str(tmp_path / "out"), "--tensorboard_dir", str(tmp_path / "tb"), *TINY])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size=8 but only 5 training samples" in err[0]
    assert event_files(tmp_path) == []


def test_malformed_line_exits_2_with_line_number_and_writes_nothing(tmp_path, data):
    bad = tmp_path / "sft_bad.jsonl"
    lines = data["sft"].read_text(encoding="utf-8").splitlines()[:20]
    lines[6] = '{"conversations": [{"role": "user", "content": "hi"}'   # line 7: cut short
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out, tbdir = tmp_path / "out", tmp_path / "tb"
    env = dict(os.environ, TB_AUTO="0")
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_train.train", "--task", "sft", "--data_path", str(bad),
         "--out_dir", str(out), "--tensorboard_dir", str(tbdir), *TINY],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert f"{bad}:7:" in err[0] and "invalid JSON" in err[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not tbdir.exists()
    assert event_files(tmp_path) == []


def test_bad_flag_is_usage_error_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--task", "nope", "--data_path", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'nope'" in err and "Traceback" not in err, err
    rc = train.main(["--task", "sft", "--data_path", str(tmp_path / "missing.jsonl")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'missing.jsonl'}: cannot read (No such file or directory)\n", err
