"""mlx_train data, tokenizer, config, checkpoint discovery and learning-rate schedule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.optimizers as optim
import numpy as np
import pytest

from mlx_train import data as data_mod
from mlx_train.config import ConfigError, resolve_config
from mlx_train.data import ChatData, DataError, JsonlSource, PairData
from mlx_train.datagen import FILES, write_all
from mlx_train.packing import make_dataset
from mlx_train.runs import CheckpointError, find_checkpoint
from mlx_train.tblog import TBLogger
from mlx_train.tokenizer import Tok, train_tokenizer
from mlx_train.trainer import get_lr


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("gen"), seed=0, scale=0.05)


@pytest.fixture(scope="module")
def tok(tmp_path_factory, files) -> Tok:
    texts = [json.loads(line)["text"] for line in files["pretrain"].read_text().splitlines()]
    texts += ["<think>x</think><answer>y</answer>"]
    return train_tokenizer(texts, vocab_size=400, out_dir=tmp_path_factory.mktemp("tok"))


def test_generator_is_deterministic_and_every_line_is_valid(tmp_path, files):
    again = write_all(tmp_path, seed=0, scale=0.05)
    for task, path in files.items():
        assert path.name == FILES[task]
        assert path.read_bytes() == again[task].read_bytes()
        records = JsonlSource(path, task).read_new()
        assert len(records) == len(path.read_text().splitlines()) > 10
    assert write_all(tmp_path / "other", seed=1, scale=0.05)["sft"].read_bytes() != \
        files["sft"].read_bytes()
    text = files["sft"].read_text(encoding="utf-8")
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text) and "What is" in text


def test_data_cli_writes_all_files(tmp_path, capsys):
    assert data_mod.main(["--out_dir", str(tmp_path), "--scale", "0.01"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES.values())


@pytest.mark.parametrize("task,line,message", [
    ("pretrain", '{"txt": "x"}', 'expected {"text"'),
    ("pretrain", "[1, 2]", "a JSON list"),
    ("sft", '{"conversations": [{"role": "bot", "content": "x"}]}', '"conversations"[0]'),
    ("sft", '{"conversations": [{"role": "user", "content": "x"}]}', "no assistant"),
    ("r1", '{"conversations": [{"role": "user", "content": "q"}, '
           '{"role": "assistant", "content": "just an answer"}]}', "<think>"),
    ("dpo", '{"chosen": [{"role": "user", "content": "q"}]}', '"rejected"'),
    ("sft", '{"conversations": [', "invalid JSON"),
])
def test_malformed_line_names_file_and_line(tmp_path, files, task, line, message):
    good = files[task].read_text(encoding="utf-8").splitlines()[:3]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(good + ["", line] + good) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        JsonlSource(path, task).read_new()
    assert str(exc.value).startswith(f"{path}:5: ") and message in str(exc.value)


def test_growing_file_ignores_partial_tail_and_picks_up_new_lines(tmp_path, files):
    lines = files["sft"].read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / "growing.jsonl"
    path.write_text(lines[0] + lines[1] + lines[2][:15], encoding="utf-8")
    source = JsonlSource(path, "sft")
    assert len(source.read_new(growing=True)) == 2
    with pytest.raises(DataError, match=":3: invalid JSON"):     # not growing: an error
        JsonlSource(path, "sft").read_new()
    with path.open("a", encoding="utf-8") as f:
        f.write(lines[2][15:] + lines[3] + "{broken\n")
    with pytest.raises(DataError, match=rf"{path}:5: invalid JSON"):
        source.read_new(growing=True)
    path.write_text("".join(lines[:4]) + lines[4].rstrip("\n"), encoding="utf-8")
    source = JsonlSource(path, "sft")
    assert len(source.read_new()) == 5        # a complete last line without its newline counts


def test_sft_loss_mask_covers_only_assistant_tokens(tok):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 plus 2?"},
                {"role": "assistant", "content": "2 plus 2 equals 4."},
                {"role": "user", "content": "你是谁？"},
                {"role": "assistant", "content": "我是 MiniMLX。"}]
    ids, mask = tok.encode_chat(messages)
    assert tok.decode(ids) == tok.render_chat(messages)
    learned = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(learned) == "2 plus 2 equals 4.<|im_end|>我是 MiniMLX。<|im_end|>"
    # the collated batch: a target is weighted exactly when it is an assistant token
    data = ChatData(tok, 256)
    data.extend([{"conversations": messages}])
    batch = data.collate([0])
    targets, weights = batch["tokens"][0, 1:], batch["weights"][0]
    assert tok.decode(targets[weights > 0].tolist()) == tok.decode(learned)
    assert weights.shape == targets.shape and set(np.unique(weights)) == {0.0, 1.0}


def test_r1_weighs_tags_and_dpo_puts_chosen_first(tok):
    r1 = make_dataset("r1", tok, 256)
    r1.extend([{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant",
               "content": "<think>a</think><answer>b</answer>"}]}])
    b = r1.collate([0])
    tagged = np.isin(b["tokens"][0, 1:], tok.tag_ids)
    assert tagged.sum() == 4 and (b["weights"][0][tagged] == data_mod.R1_TAG_WEIGHT).all()
    pairs = PairData(tok, 256)
    q = [{"role": "user", "content": "q"}]
    pairs.extend([{"chosen": q + [{"role": "assistant", "content": "good"}],
                   "rejected": q + [{"role": "assistant", "content": "bad answer"}]}] * 3)
    b = pairs.collate([0, 1])
    assert b["tokens"].shape[0] == 4
    assert "good" in tok.decode(b["tokens"][1].tolist()) and "bad" in tok.decode(b["tokens"][3].tolist())


def test_tokenizer_loads_with_mlx_lm_and_renders_the_same_template(tok, tmp_path):
    tok.save(tmp_path)
    from mlx_lm.utils import load_tokenizer
    wrapper = load_tokenizer(tmp_path)
    messages = [{"role": "user", "content": "hello 你好"}]
    assert wrapper.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
        tok.render_chat(messages, add_generation_prompt=True)
    assert wrapper.encode("a <think>b</think>", add_special_tokens=False) == tok.encode("a <think>b</think>")
    assert tok.decode(tok.encode("<answer>42</answer>")) == "<answer>42</answer>"


def test_find_checkpoint_takes_latest_complete_step(tmp_path):
    def make(name: str, *files: str) -> Path:
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_text("{}")
        return tmp_path / name
    make("step_0000003", "config.json", "model.safetensors")
    latest = make("step_0000010", "config.json", "model.safetensors")
    make("step_0000015", "config.json")                                  # incomplete
    make(".tmp_step_0000020_123", "config.json", "model.safetensors")    # interrupted save
    assert find_checkpoint(tmp_path) == latest
    assert find_checkpoint(latest) == latest
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")


def test_resolve_config_flags_beat_env_beat_defaults():
    env = {"MLX_TRAIN_BATCH_SIZE": "16", "MLX_TRAIN_SEQ_LEN": "128"}
    cfg = resolve_config(["--data_path", "d.jsonl", "--seq_len", "64"], env)
    assert (cfg.batch_size, cfg.seq_len, cfg.task) == (16, 64, "pretrain")
    assert resolve_config(["--data_path", "d", "--task", "dpo"], {}).learning_rate == 1e-4
    with pytest.raises(ConfigError, match="MLX_TRAIN_BATCH_SIZE='many'"):
        resolve_config(["--data_path", "d"], {"MLX_TRAIN_BATCH_SIZE": "many"})
    with pytest.raises(ConfigError, match="hidden_size=100 is not divisible by num_heads=3"):
        resolve_config(["--data_path", "d", "--hidden_size", "100", "--num_heads", "3"], {})


def test_get_lr_warms_up_then_decays_to_the_floor():
    lrs = [get_lr(s, peak=1.0, warmup=10, total=100, min_ratio=0.1) for s in range(120)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert max(lrs) == pytest.approx(1.0, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[100] == lrs[119] == pytest.approx(0.1)
    # the decay is a cosine from 1.0 to 0.1 over steps 10..100, as MLX's own schedule computes it
    # (a linear decay would give 0.85 a sixth of the way, and 0.25 five sixths of the way)
    assert [round(lrs[s], 4) for s in (10, 25, 55, 85)] == [1.0, 0.9397, 0.55, 0.1603]
    cosine = optim.cosine_decay(1.0, 90, 0.1)
    assert lrs[10:101] == pytest.approx([cosine(s - 10).item() for s in range(10, 101)], abs=1e-6)


def test_tblogger_creates_its_event_file_only_when_logging(tmp_path):
    logger = TBLogger(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()
    logger.scalars(1, {"train/loss": 1.0})
    assert [p.name for p in (tmp_path / "tb").iterdir() if "tfevents" in p.name]
    logger.close()
    logger.close()
    TBLogger(None).scalars(1, {"train/loss": 1.0})         # no logdir: nothing, no error


def test_two_tbloggers_in_one_folder_in_one_second_write_two_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first, second = TBLogger(tmp_path), TBLogger(tmp_path)
    for step in (1, 2):
        first.scalars(step, {"train/loss": 1.0})
        second.scalars(step, {"train/loss": 2.0})
    first.close()
    second.close()
    files = sorted(p for p in tmp_path.iterdir() if "tfevents" in p.name)
    assert len(files) == 2 and all(f".{os.getpid()}." in p.name for p in files)
    for path in files:
        acc = EventAccumulator(str(path))
        acc.Reload()
        assert len({e.value for e in acc.Scalars("train/loss")}) == 1     # one run's values per file
        assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
