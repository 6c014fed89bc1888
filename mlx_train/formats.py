"""The JSONL row formats mlx_train reads, per task, and the export to mlx-lm's ``train.jsonl`` /
``valid.jsonl``.

Every parser takes one decoded JSON row and returns the task's record (or raises ValueError with
the reason; `mlx_train.data.JsonlSource` adds file and line). Each line may use any format its
task accepts:

    pretrain  {"text": "..."}                                             (MiniMind, mlx-lm)
    sft, r1   {"conversations": [messages]}                               (MiniMind)
              {"messages": [messages], "tools": [...]}                    (mlx-lm / OpenAI chat)
              {"prompt": "...", "completion": "..."}                      (mlx-lm; a user and an
                                                                           assistant turn)
    dpo       {"chosen": [messages], "rejected": [messages]}              (MiniMind)

A message is {"role": "system"|"user"|"assistant"|"tool", "content": str}; an assistant message may
carry OpenAI "tool_calls" (content may then be null), whose "arguments" may be a JSON string.
"tools" (OpenAI function signatures) is kept with the record and rendered by the chat template
(`mlx_train.tokenizer.CHAT_TEMPLATE`): mlx_lm.lora, mlx_lm.server and mlx_train see the same text.
R1 assistant replies (those without tool calls) must be "<think>...</think><answer>...</answer>".

Records: pretrain {"text"}; sft/r1 {"conversations": [...]} plus "tools" when the row has
some; dpo {"chosen", "rejected"}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlx_train.heldout import split_indices
from tb_lazy import atomic

__all__ = ["PARSERS", "ROLES", "export", "mlx_lm_row"]

ROLES = ("system", "user", "assistant", "tool")
R1_REPLY = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
CHAT_KEYS = ('"conversations"', '"messages"', '"prompt" + "completion"')


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        return f"an object with keys {sorted(obj)[:6]}"
    return f"a JSON {type(obj).__name__}"


def _tool_call(call: Any, where: str) -> dict:
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f'{where} must be {{"function": {{"name": str, "arguments": ...}}}}, '
                         f"got {json.dumps(call, ensure_ascii=False)[:80]}")
    args = fn.get("arguments", {})
    if isinstance(args, str):              # OpenAI sends the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} arguments are not JSON ({e.msg})") from None
    return {"type": "function", "function": {"name": fn["name"], "arguments": args}}


def _messages(value: Any, key: str, *, r1: bool = False) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f'"{key}" must be a non-empty list of messages, got {type(value).__name__}')
    out = []
    for i, m in enumerate(value):
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if content is None and calls and m.get("role") == "assistant":
            content = ""
        if not isinstance(m, dict) or not isinstance(content, str) or m.get("role") not in ROLES:
            raise ValueError(f'"{key}"[{i}] must be {{"role": one of {"/".join(ROLES)}, '
                             f'"content": str}}, got {json.dumps(m, ensure_ascii=False)[:80]}')
        message = {"role": m["role"], "content": content}
        if calls:
            if m["role"] != "assistant" or not isinstance(calls, list):
                raise ValueError(f'"{key}"[{i}] "tool_calls" must be a list, on an assistant message')
            message["tool_calls"] = [_tool_call(c, f'"{key}"[{i}].tool_calls[{j}]') for j, c in enumerate(calls)]
        elif r1 and m["role"] == "assistant" and not R1_REPLY.fullmatch(content):
            raise ValueError(f'"{key}"[{i}] assistant content must be '
                             f'"<think>...</think><answer>...</answer>", got {content[:60]!r}')
        out.append(message)
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError(f'"{key}" has no assistant message')
    return out


def parse_pretrain(obj: Any) -> dict:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"]:
        raise ValueError(f'expected {{"text": non-empty string}}, got {_describe(obj)}')
    return {"text": obj["text"]}


def parse_chat(obj: Any, *, r1: bool = False) -> dict:
    """A conversation from MiniMind's "conversations", mlx-lm's "messages" (with "tools") or
    mlx-lm's "prompt"/"completion"."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected one of {', '.join(CHAT_KEYS)}, got {_describe(obj)}")
    if "conversations" in obj:
        key, messages = "conversations", obj["conversations"]
    elif "messages" in obj:
        key, messages = "messages", obj["messages"]
    elif "prompt" in obj and "completion" in obj:
        if not isinstance(obj["prompt"], str) or not isinstance(obj["completion"], str):
            raise ValueError('"prompt" and "completion" must be strings')
        key, messages = "completion", [{"role": "user", "content": obj["prompt"]},
                                       {"role": "assistant", "content": obj["completion"]}]
    else:
        raise ValueError(f"expected one of {', '.join(CHAT_KEYS)}, got {_describe(obj)}")
    record = {"conversations": _messages(messages, key, r1=r1)}
    tools = obj.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise ValueError(f'"tools" must be a list of objects, got {json.dumps(tools, ensure_ascii=False)[:80]}')
        record["tools"] = tools
    return record


def parse_dpo(obj: Any) -> dict:
    if not isinstance(obj, dict) or "chosen" not in obj or "rejected" not in obj:
        raise ValueError(f'expected {{"chosen": [...], "rejected": [...]}}, got {_describe(obj)}')
    pair = {k: _messages(obj[k], k) for k in ("chosen", "rejected")}
    for k, msgs in pair.items():
        if msgs[-1]["role"] != "assistant":
            raise ValueError(f'"{k}" must end with an assistant message')
    return pair


PARSERS: dict[str, Callable[[Any], dict]] = {
    "pretrain": parse_pretrain, "sft": parse_chat, "dpo": parse_dpo,
    "r1": lambda obj: parse_chat(obj, r1=True)}


# ---------------------------------------------------------------------------------------------
# export: python -m mlx_train.data export --task T --data_path FILE --out_dir DIR

def mlx_lm_row(task: str, record: dict) -> dict:
    """``record`` as one row of mlx-lm's data: {"text"} for pretrain, {"messages"[, "tools"]}
    for sft/r1, and for dpo the chosen conversation (mlx_lm.lora has no preference training)."""
    if task == "pretrain":
        return {"text": record["text"]}
    if task == "dpo":
        return {"messages": record["chosen"]}
    row = {"messages": record["conversations"]}
    if record.get("tools"):
        row["tools"] = record["tools"]
    return row


def export(task: str, records: Sequence[dict], out_dir: Path) -> dict[str, Path]:
    """Write ``records`` as ``out_dir/train.jsonl`` and ``valid.jsonl`` (each atomically).

    The held-out rows are mlx_train's own (`mlx_train.heldout`: every 20th); with fewer than
    20 rows the last one, so that mlx_lm.lora always has a validation set."""
    train, valid = split_indices(len(records))
    if not valid and len(records) > 1:
        train, valid = train[:-1], train[-1:]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, indices in (("train", train), ("valid", valid)):
        paths[name] = out_dir / f"{name}.jsonl"
        with atomic.atomic_file(paths[name]) as f:
            for i in indices:
                f.write(json.dumps(mlx_lm_row(task, records[i]), ensure_ascii=False) + "\n")
    return paths
