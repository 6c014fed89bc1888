"""Byte-level BPE tokenizer trained locally with `tokenizers`, saved in Hugging Face layout
(tokenizer.json, tokenizer_config.json with a ChatML chat template, special_tokens_map.json)
so that ``mlx_lm.load`` and ``mlx_lm.utils.load_tokenizer`` accept it without any network.

Training code uses the light `Tok` wrapper (no transformers import); its chat rendering uses
the very template string saved in tokenizer_config.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import jinja2
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from mlx_train.errors import os_error_from

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "TAG_TOKENS", "TOKENIZER_FILES", "Tok", "chat_turns",
           "render_chat", "train_tokenizer"]

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# Reasoning tags: single tokens, but ordinary text when decoding (not skipped as special).
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

TOOLS_INTRO = ("# Tools\n\nYou may call one or more functions. Their signatures, one per line:\n<tools>")
TOOLS_OUTRO = ("\n</tools>\n\nTo call one, reply with <tool_call>\n"
               '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')

# ChatML. With ``tools`` (mlx-lm passes a row's "tools" through apply_chat_template), their JSON
# signatures are listed in the system turn (after the row's own system message, if any), and an
# assistant turn's "tool_calls" follow its content as <tool_call>{"name", "arguments"}</tool_call>
# (Qwen2.5/Hermes style, which mlx_lm.server parses back into OpenAI tool calls); "tool" turns
# carry tool results. Rows without tools render exactly as plain ChatML. `chat_turns` is the same
# rule in Python (for the loss mask); the tests hold the two together.
CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "{{ '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + '\n\n' }}{%- endif -%}"
    "{{ " + repr(TOOLS_INTRO) + " }}"
    "{%- for tool in tools -%}{{ '\n' + (tool | tojson) }}{%- endfor -%}"
    "{{ " + repr(TOOLS_OUTRO) + " + '<|im_end|>' + '\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (tools and loop.first and message['role'] == 'system') -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}"
    "{%- if message.tool_calls -%}{%- for tool_call in message.tool_calls -%}"
    "{%- if tool_call.function is defined -%}{%- set tool_call = tool_call.function -%}{%- endif -%}"
    "{{ ('\n' if (message['content'] or not loop.first) else '') + '<tool_call>\n{\"name\": \"' "
    "+ tool_call.name + '\", \"arguments\": ' + (tool_call.arguments | tojson) + '}\n</tool_call>' }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>' + '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """transformers' ``tojson`` for chat templates (Jinja's own escapes HTML and sorts keys)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


# Same settings as transformers' apply_chat_template, so both render identical text.
_ENV = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
_ENV.filters["tojson"] = _tojson
_TEMPLATE = _ENV.from_string(CHAT_TEMPLATE)


def render_chat(messages: Sequence[dict], *, add_generation_prompt: bool = False,
                tools: Sequence[dict] | None = None) -> str:
    """The chat template applied to ``messages`` (what mlx_lm's apply_chat_template gives)."""
    return _TEMPLATE.render(messages=messages, tools=tools or None,
                            add_generation_prompt=add_generation_prompt)


def chat_turns(messages: Sequence[dict], *, tools: Sequence[dict] | None = None) -> list[tuple[str, str]]:
    """(role, text) of each turn the template renders: ``<|im_start|>role\ntext<|im_end|>\n``."""
    turns = []
    messages = list(messages)
    if tools:
        system = messages.pop(0)["content"] + "\n\n" if messages and messages[0]["role"] == "system" else ""
        listed = "".join("\n" + _tojson(tool) for tool in tools)
        turns.append(("system", system + TOOLS_INTRO + listed + TOOLS_OUTRO))
    for message in messages:
        text = message.get("content") or ""
        for i, call in enumerate(message.get("tool_calls") or []):
            call = call.get("function", call)
            text += ("\n" if text or i else "") + '<tool_call>\n{"name": "' + call["name"] + \
                '", "arguments": ' + _tojson(call["arguments"]) + "}\n</tool_call>"
        turns.append((message["role"], text))
    return turns


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, out_dir: Path,
                    max_length: int = 2048) -> "Tok":
    """Train a byte-level BPE on ``texts`` and save it in Hugging Face layout under ``out_dir``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    save_tokenizer(tok, out_dir=out_dir, max_length=max_length)
    return Tok(tok)


def save_tokenizer(tok: Tokenizer, *, out_dir: Path, max_length: int = 2048) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        tok.save(str(out_dir / "tokenizer.json"))
    except Exception as e:          # tokenizers: a bare Exception("... (os error 28)")
        failure = os_error_from(e, out_dir / "tokenizer.json")
        if failure is None:
            raise
        raise failure from None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "additional_special_tokens": [IM_START, IM_END],
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special = {"eos_token": IM_END, "pad_token": ENDOFTEXT,
               "additional_special_tokens": [IM_START, IM_END]}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n",
                                                     encoding="utf-8")


class Tok:
    """Encoding, decoding and chat rendering over a `tokenizers.Tokenizer`."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.eos_id = self._id(IM_END)
        self.endoftext_id = self._id(ENDOFTEXT)
        self.pad_id = self.endoftext_id
        self.tag_ids = tuple(self._id(t) for t in TAG_TOKENS)

    @classmethod
    def load(cls, folder: Path) -> "Tok":
        """Load the tokenizer saved in ``folder`` (a tokenizer folder or a checkpoint)."""
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        return cls(Tokenizer.from_file(str(path)))

    def _id(self, token: str) -> int:
        idx = self.tok.token_to_id(token)
        if idx is None:
            raise ValueError(f"tokenizer has no {token!r} token")
        return idx

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.tok.get_vocab_size(with_added_tokens=True)

    def save(self, out_dir: Path, *, max_length: int = 2048) -> None:
        """Write the Hugging Face tokenizer files into ``out_dir``."""
        save_tokenizer(self.tok, out_dir=out_dir, max_length=max_length)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of ``ids``."""
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def render_chat(self, messages: Sequence[dict], *, add_generation_prompt: bool = False,
                    tools: Sequence[dict] | None = None) -> str:
        """The chat template applied to ``messages``."""
        return render_chat(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    def encode_chat(self, messages: Sequence[dict], *,
                    tools: Sequence[dict] | None = None) -> tuple[list[int], list[int]]:
        """Token ids of the rendered chat and a 0/1 mask marking assistant tokens.

        The mask covers each assistant turn's content (its tool calls included) and its closing
        <|im_end|>: what the model must learn to produce. Role headers, user, system and tool
        turns (and the tool list) are 0.
        """
        ids: list[int] = []
        mask: list[int] = []
        for role, text in chat_turns(messages, tools=tools):
            head = self.encode(f"{IM_START}{role}\n")
            body = self.encode(text) + [self.eos_id]
            tail = self.encode("\n")
            learn = 1 if role == "assistant" else 0
            ids += head + body + tail
            mask += [0] * len(head) + [learn] * len(body) + [0] * len(tail)
        return ids, mask
