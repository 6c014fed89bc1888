"""mlx-lm's data formats in mlx_train (messages with tools, prompt/completion, text) beside
MiniMind's, the chat template's tool rendering against mlx-lm's own, and the export to mlx-lm's
train.jsonl/valid.jsonl read back by mlx-lm's dataset code."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from mlx_train import data as data_mod
from mlx_train.data import DataError, JsonlSource
from mlx_train.packing import make_dataset
from mlx_train.tokenizer import Tok, train_tokenizer

Q, A = "What is 2 plus 3?", "2 plus 3 equals 5."
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now> in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_ROW = {"messages": [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "北京天气怎么样？"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 3}'},
    {"role": "assistant", "content": "北京现在 3 度。"}], "tools": TOOLS}


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> tuple[Tok, Path]:
    folder = tmp_path_factory.mktemp("tok")
    texts = [Q, A, "北京天气怎么样？北京现在 3 度。", json.dumps(TOOLS), "<tool_call> get_weather city"] * 3
    return train_tokenizer(texts, vocab_size=400, out_dir=folder), folder


def test_sft_reads_minimind_and_mlx_lm_rows_alike(tmp_path):
    turns = [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]
    path = write(tmp_path / "mixed.jsonl", [{"conversations": turns}, {"messages": turns},
                                            {"prompt": Q, "completion": A}])
    records = JsonlSource(path, "sft").read_new()
    assert records == [{"conversations": turns}] * 3
    tool = JsonlSource(write(tmp_path / "tools.jsonl", [TOOL_ROW]), "sft").read_new()[0]
    assert tool["tools"] == TOOLS
    call = tool["conversations"][2]
    assert call["content"] == "" and call["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}]
    assert JsonlSource(write(tmp_path / "text.jsonl", [{"text": Q + " " + A}]), "pretrain").read_new() == \
        [{"text": Q + " " + A}]


@pytest.mark.parametrize("task,row,message", [
    ("pretrain", {"messages": [{"role": "user", "content": Q}]}, 'expected {"text"'),
    ("sft", {"text": Q}, '"conversations", "messages", "prompt" + "completion"'),
    ("sft", {"prompt": Q, "completion": 5}, '"prompt" and "completion" must be strings'),
    ("sft", {"messages": [{"role": "user", "content": Q}]}, '"messages" has no assistant'),
    ("sft", {"messages": TOOL_ROW["messages"], "tools": "get_weather"}, '"tools" must be a list'),
    ("sft", {"messages": [{"role": "user", "content": Q, "tool_calls": [{"function": {"name": "f"}}]},
                          {"role": "assistant", "content": A}]}, '"tool_calls" must be a list, on an assistant'),
    ("sft", {"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": None, "tool_calls": [
        {"function": {"name": "f", "arguments": "{oops"}}]}]}, '"messages"[1].tool_calls[0] arguments are not JSON'),
    ("r1", {"prompt": Q, "completion": A}, "<think>"),
    ("dpo", {"messages": [{"role": "user", "content": Q}]}, '"chosen"'),
])
def test_wrong_row_names_file_line_and_reason(tmp_path, task, row, message):
    path = write(tmp_path / "bad.jsonl", [{"text": "x"} if task == "pretrain" else {"prompt": "q", "completion":
              "<think>a</think><answer>b</answer>"} if task != "dpo" else {
              "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
              "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}, row])
    with pytest.raises(DataError) as exc:
        JsonlSource(path, task).read_new()
    assert str(exc.value).startswith(f"{path}:2: ") and message in str(exc.value), str(exc.value)


def test_tools_render_as_mlx_lm_renders_them_and_only_assistant_turns_are_learned(tmp_path, tok):
    tok, folder = tok
    from mlx_lm.utils import load_tokenizer

    record = JsonlSource(write(tmp_path / "t.jsonl", [TOOL_ROW]), "sft").read_new()[0]
    messages, tools = record["conversations"], record["tools"]
    ours = tok.render_chat(messages, tools=tools)
    theirs = load_tokenizer(folder).apply_chat_template(messages, tools=tools, tokenize=False)
    assert ours == theirs
    assert '{"name": "get_weather", "description": "Weather <now> in a city"' in ours      # JSON as is
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>' in ours
    assert ours.startswith("<|im_start|>system\nYou are helpful.\n\n# Tools") and ours.count("<|im_start|>system") == 1
    ids, mask = tok.encode_chat(messages, tools=tools)
    assert tok.decode(ids) == ours
    learned = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert learned == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>'
                       "北京现在 3 度。<|im_end|>")
    plain = [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]     # no tools: plain ChatML
    assert tok.render_chat(plain) == f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n{A}<|im_end|>\n"
    data = make_dataset("sft", tok, 256)
    data.extend([record])
    assert len(data) == 1 and tok.decode(data.example_prompt).startswith("<|im_start|>system\nYou are helpful.")


@pytest.mark.parametrize("task", ["pretrain", "sft", "r1", "dpo"])
def test_export_writes_what_mlx_lm_reads(tmp_path, tok, task, capsys):
    tok, folder = tok
    from mlx_lm.tuner.datasets import create_dataset
    from mlx_lm.utils import load_tokenizer

    turns = [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]
    r1 = [{"role": "user", "content": Q}, {"role": "assistant", "content": "<think>3+2</think><answer>5</answer>"}]
    rows = {"pretrain": [{"text": f"{Q} {A} {i}"} for i in range(25)],
            "sft": [{"conversations": turns}, {"prompt": Q, "completion": A}, TOOL_ROW] * 8 + [TOOL_ROW],
            "r1": [{"conversations": r1}] * 25,
            "dpo": [{"chosen": turns, "rejected": [turns[0], {"role": "assistant", "content": "7"}]}] * 25}[task]
    src = write(tmp_path / "in.jsonl", rows)
    assert data_mod.main(["export", "--task", task, "--data_path", str(src), "--out_dir", str(tmp_path / "d")]) == 0
    said = capsys.readouterr()
    assert said.out == "" and "train.jsonl" in said.err  # the summary is a note: stderr
    train = [json.loads(line) for line in (tmp_path / "d" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    valid = [json.loads(line) for line in (tmp_path / "d" / "valid.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (len(train), len(valid)) == (24, 1)
    key = "text" if task == "pretrain" else "messages"
    assert all(set(r) <= {key, "tools"} for r in train + valid)
    if task == "dpo":
        assert train[0]["messages"] == turns                       # the chosen conversation
    wrapper = load_tokenizer(folder)
    dataset = create_dataset(train, wrapper, types.SimpleNamespace())
    records = JsonlSource(src, task).read_new()
    for i in range(3):
        ids, _ = dataset.process(dataset[i])
        if task == "pretrain":
            assert wrapper.decode(ids).startswith(records[i]["text"])
        else:
            conv = records[i]["chosen"] if task == "dpo" else records[i]["conversations"]
            assert ids == tok.encode(tok.render_chat(conv, tools=records[i].get("tools")))


def test_export_of_a_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    src = write(tmp_path / "in.jsonl", [{"prompt": Q, "completion": A}, "{broken"])
    assert data_mod.main(["export", "--task", "sft", "--data_path", str(src), "--out_dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {src}:2: invalid JSON (Expecting property name enclosed in double quotes at column 2)"]
    assert not (tmp_path / "d").exists()
    with pytest.raises(SystemExit) as exc:
        data_mod.main(["export", "--task", "sft", "--out_dir", str(tmp_path / "d")])
    assert exc.value.code == 2
