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

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "TAG_TOKENS", "TOKENIZER_FILES", "Tok",
           "render_chat", "train_tokenizer"]

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# Reasoning tags: single tokens, but ordinary text when decoding (not skipped as special).
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# Same settings as transformers' apply_chat_template, so both render identical text.
_TEMPLATE = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(CHAT_TEMPLATE)


def render_chat(messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
    """The chat template applied to ``messages`` (what mlx_lm's apply_chat_template gives)."""
    return _TEMPLATE.render(messages=messages, add_generation_prompt=add_generation_prompt)


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
    tok.save(str(out_dir / "tokenizer.json"))
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

    def render_chat(self, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
        """The chat template applied to ``messages``."""
        return render_chat(messages, add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        """Token ids of the rendered chat and a 0/1 mask marking assistant tokens.

        The mask covers each assistant turn's content and its closing <|im_end|>: what the
        model must learn to produce. Role headers, user and system turns are 0.
        """
        ids: list[int] = []
        mask: list[int] = []
        for message in messages:
            head = self.encode(f"{IM_START}{message['role']}\n")
            body = self.encode(message["content"]) + [self.eos_id]
            tail = self.encode("\n")
            learn = 1 if message["role"] == "assistant" else 0
            ids += head + body + tail
            mask += [0] * len(head) + [learn] * len(body) + [0] * len(tail)
        return ids, mask
