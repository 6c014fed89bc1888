"""Throughput figures that count real tokens: a real tiny SFT run on conversations whose token
counts we compute from the data, the logged figures checked against them, and tokens_seen
continuing across --resume (also from a checkpoint written before it was counted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlx_train import train
from mlx_train.data import ChatData, JsonlSource
from mlx_train.heldout import split_indices
from mlx_train.tokenizer import Tok

TINY = ["--preset", "tiny", "--hidden_size", "64", "--num_heads", "4", "--intermediate_size",
        "128", "--seq_len", "64", "--vocab_size", "300", "--warmup_steps", "2",
        "--sample_tokens", "0", "--eval_interval", "100", "--eval_batches", "1"]
B, N = 4, 21          # 21 conversations: 20 train (every 20th held out) = 5 batches of 4 an epoch


@pytest.fixture(autouse=True)
def no_tensorboard(monkeypatch):
    monkeypatch.setenv("TB_AUTO", "0")      # never start a TensorBoard from these tests


def scalars(tbdir: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(tbdir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def write_sft(path: Path) -> Path:
    """Conversations of different lengths (prompt and answer both vary)."""
    lines = []
    for i in range(N):
        user = "count " + " ".join(str(j) for j in range(2 + i % 7))
        answer = " ".join(["ok"] * (1 + i % 4))
        lines.append(json.dumps({"conversations": [{"role": "user", "content": user},
                                                   {"role": "assistant", "content": answer}]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def epoch_counts(data_path: Path, tok: Tok, seq_len: int) -> tuple[int, int]:
    """Real (non-padding) and loss-bearing tokens of one epoch over every training conversation."""
    data = ChatData(tok, seq_len)
    data.extend(JsonlSource(data_path, "sft").read_new())
    assert len(data) == N
    train_rows = [data.rows[i] for i in split_indices(N)[0]]
    real = sum(len(ids) - 1 for ids, _ in train_rows)           # inputs whose target is data
    trained = sum(sum(1 for x in w[1:] if x > 0) for _, w in train_rows)
    return real, trained


def test_logged_throughput_counts_real_and_trained_tokens_and_resume_continues(tmp_path, capsys):
    data_path = write_sft(tmp_path / "sft.jsonl")
    out = tmp_path / "out"
    args = ["--task", "sft", "--data_path", str(data_path), "--out_dir", str(out), "--run_name", "r",
            "--batch_size", str(B), "--epochs", "2", "--save_interval", "5", "--keep_last", "5",
            "--log_interval", "5", *TINY]
    assert train.main([*args, "--tensorboard_dir", str(tmp_path / "tb")]) == 0
    assert "tok/s (real)" in capsys.readouterr().err
    real, trained = epoch_counts(data_path, Tok.load(out / "tokenizer"), 64)
    assert 0 < trained < real
    s = scalars(tmp_path / "tb" / "r")
    assert s["train/tokens_seen"] == {5: real, 10: 2 * real}
    for step in (5, 10):      # a window of 5 steps is one epoch: rate x time = that epoch's tokens
        window = s["train/step_time"][step] * 5
        assert s["train/tokens_per_sec"][step] * window == pytest.approx(real, rel=1e-3)
        assert s["train/trained_tokens_per_sec"][step] * window == pytest.approx(trained, rel=1e-3)
    state = json.loads((out / "r" / "step_0000005" / "trainer_state.json").read_text())
    assert state["tokens_seen"] == real

    # killed after step 5: the resumed run continues the count
    shutil.rmtree(out / "r" / "step_0000010")
    assert train.main([*args, "--resume", "--tensorboard_dir", str(tmp_path / "tb2")]) == 0
    assert scalars(tmp_path / "tb2" / "r")["train/tokens_seen"] == {10: 2 * real}

    # a checkpoint from before tokens_seen was counted: the resumed run counts from 0
    shutil.rmtree(out / "r" / "step_0000010")
    state_file = out / "r" / "step_0000005" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["tokens_seen"]
    state_file.write_text(json.dumps(state))
    assert train.main([*args, "--resume", "--tensorboard_dir", str(tmp_path / "tb3")]) == 0
    assert scalars(tmp_path / "tb3" / "r")["train/tokens_seen"] == {10: real}
