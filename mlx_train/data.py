"""JSONL training data: reading (errors name file and line), token datasets per task, and the
commands ``python -m mlx_train.data --out_dir DIR`` (the bundled data set) and
``python -m mlx_train.data export --task T --data_path FILE --out_dir DIR`` (as mlx-lm's data).

Formats, one JSON object per line (`mlx_train.formats` has the details):
    pretrain  {"text": "..."}
    sft       {"conversations": [messages]} (MiniMind), {"messages": [messages], "tools": [...]}
              or {"prompt": "...", "completion": "..."} (mlx-lm)
    r1        like sft; every assistant turn is "<think>...</think><answer>...</answer>"
    dpo       {"chosen": [messages], "rejected": [messages]}   (both end with an assistant turn)

A file may still be growing (distillation appends while training runs): a last line without
its newline is ignored when ``growing`` is set, and `JsonlSource.read_new` picks up only the
complete lines added since the previous read.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from mlx_train.formats import PARSERS
from mlx_train.tokenizer import Tok

__all__ = ["R1_TAG_WEIGHT", "ChatData", "DataError", "Dataset", "JsonlSource", "PackedText", "PairData", "main",
           "tokenizer_texts"]

R1_TAG_WEIGHT = 10.0   # R1 stresses the reasoning tags in its loss (as MiniMind does)
PAD_MULTIPLE = 32      # chat rows are padded to a multiple of this: few distinct shapes to compile


class DataError(ValueError):
    """Malformed or insufficient data; the message names the file and line."""


class JsonlSource:
    """A JSONL file read incrementally: each `read_new` returns the complete lines added since."""

    def __init__(self, path: Path, task: str):
        self.path, self.parse = Path(path), PARSERS[task]
        self.offset = 0      # bytes consumed
        self.line = 0        # lines consumed

    def read_new(self, *, growing: bool = False,
                 agree: Callable[[int], int] | None = None) -> list[dict]:
        """Parse the lines after the last read. Raises DataError naming file and line.

        ``agree`` (ranks reading a file that may still grow): given the number of records read,
        returns how many to keep (the least any rank read: `World.least`); the rest are left
        for the next read, so every rank holds the same records."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError as e:
            raise DataError(f"{self.path}: cannot read ({e.strerror or e})") from None
        start = (self.offset, self.line)
        records, ends = [], []          # ends: (offset, line) after each record
        pieces = chunk.split(b"\n")
        tail = pieces.pop()              # b"" when the chunk ends with a newline
        for raw in pieces:
            self.line += 1
            self.offset += len(raw) + 1
            if raw.strip():
                records.append(self._parse(raw, self.line))
                ends.append((self.offset, self.line))
        if tail.strip():
            try:
                record = self._parse(tail, self.line + 1)
            except DataError:
                if not growing:
                    raise
            else:                        # a complete last line that merely lacks its newline
                self.line += 1
                self.offset += len(tail)
                records.append(record)
                ends.append((self.offset, self.line))
        if agree is not None:
            keep = agree(len(records))
            if keep < len(records):
                self.offset, self.line = ends[keep - 1] if keep else start
                records = records[:keep]
        return records

    def _parse(self, raw: bytes, line: int) -> dict:
        where = f"{self.path}:{line}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise DataError(f"{where}: JSON nested too deeply") from None
        except ValueError as e:         # an integer of more than 4300 digits
            raise DataError(f"{where}: invalid JSON ({str(e).split(';')[0]})") from None
        if _SURROGATE.search(raw):
            _check_unicode(obj, where, raw)
        try:
            return self.parse(obj)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None


# a \uD800-\uDFFF escape: JSON allows one alone, but it is no character (text with one can't be
# tokenized or written as UTF-8); a high one followed by a low one is a valid pair
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})|"
                             rb"(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _check_unicode(obj: object, where: str, raw: bytes) -> None:
    """DataError if a string in ``obj`` holds a lone surrogate (from a ``\\ud800`` escape)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    except UnicodeEncodeError:
        match = _LONE_SURROGATE.search(raw)
        at = f" at column {len(raw[:match.start()].decode('utf-8')) + 1}" if match else ""
        escape = match[0].decode() if match else "\\ud800-\\udfff"
        raise DataError(f"{where}: invalid Unicode (a lone surrogate {escape}{at}: "
                        "not a character)") from None


def tokenizer_texts(task: str, records: Sequence[dict], render: Callable) -> list[str]:
    """The strings a new tokenizer is trained on for ``task``'s records (``render``: chat
    messages -> text)."""
    if task == "pretrain":
        return [r["text"] for r in records]
    if task == "dpo":
        return [render(r[k]) for r in records for k in ("chosen", "rejected")]
    return [render(r["conversations"], tools=r.get("tools")) for r in records]


# ---------------------------------------------------------------------------------------------
# token datasets: extend(records) with new data, collate(indices) -> numpy batch
#   tokens  (R, L+1) int32   rows to feed: inputs tokens[:, :-1], targets tokens[:, 1:]
#   weights (R, L)   float32 loss weight per target (0 on padding and non-assistant tokens)
#   real_tokens (R,) int32   real (non-padding) positions per row: inputs whose target is data;
#                            a host-side count, the trainer takes it out before the step

class Dataset(Protocol):
    example_prompt: list[int] | None

    def __len__(self) -> int: ...
    def extend(self, records: Sequence[dict]) -> None: ...
    def collate(self, indices: Sequence[int]) -> dict[str, np.ndarray]: ...


class PackedText:
    """Pretraining: all texts joined by <|endoftext|> into one stream, cut in rows of seq_len+1."""

    def __init__(self, tok: Tok, seq_len: int):
        self.tok, self.seq_len = tok, seq_len
        self.stream: list[int] = []
        self.example_prompt: list[int] | None = None

    def __len__(self) -> int:
        return max(0, (len(self.stream) - 1) // self.seq_len)

    def extend(self, records: Sequence[dict]) -> None:
        for r in records:
            ids = self.tok.encode(r["text"])
            if self.example_prompt is None:
                self.example_prompt = ids[:6]
            self.stream += ids + [self.tok.endoftext_id]

    def collate(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        T = self.seq_len
        tokens = np.array([self.stream[i * T: i * T + T + 1] for i in indices], np.int32)  # (B, T+1)
        return {"tokens": tokens, "weights": np.ones((len(indices), T), np.float32),
                "real_tokens": np.full(len(indices), T, np.int32)}


def _pad(rows: Sequence[tuple[list[int], list[float]]], *, pad_id: int,
         seq_len: int) -> dict[str, np.ndarray]:
    longest = max(len(ids) for ids, _ in rows) - 1
    L = min(seq_len, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)
    tokens = np.full((len(rows), L + 1), pad_id, np.int32)              # (R, L+1)
    weights = np.zeros((len(rows), L), np.float32)                      # (R, L)
    for r, (ids, w) in enumerate(rows):
        tokens[r, :len(ids)] = ids
        weights[r, :len(ids) - 1] = w[1:]
    real = np.array([len(ids) - 1 for ids, _ in rows], np.int32)       # (R,)
    return {"tokens": tokens, "weights": weights, "real_tokens": real}


class ChatData:
    """SFT and R1: one conversation per row, loss only on assistant tokens.

    ``tag_weight`` > 1 (R1) weighs the <think>/<answer> tag tokens more inside assistant turns.
    """

    def __init__(self, tok: Tok, seq_len: int, *, tag_weight: float = 1.0):
        self.tok, self.seq_len, self.tag_weight = tok, seq_len, tag_weight
        self.rows: list[tuple[list[int], list[float]]] = []
        self.dropped = 0        # conversations whose assistant part lies beyond seq_len
        self.example_prompt: list[int] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _row(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], list[float]] | None:
        ids, mask = self.tok.encode_chat(messages, tools=tools)
        ids, mask = ids[:self.seq_len + 1], mask[:self.seq_len + 1]
        if not any(mask[1:]):
            return None
        tags = set(self.tok.tag_ids)
        w = [float(m) * (self.tag_weight if i in tags else 1.0) for i, m in zip(ids, mask, strict=True)]
        return ids, w

    def extend(self, records: Sequence[dict]) -> None:
        for r in records:
            messages, tools = r["conversations"], r.get("tools")
            if self.example_prompt is None:
                last_user = max(i for i, m in enumerate(messages) if m["role"] == "user") \
                    if any(m["role"] == "user" for m in messages) else 0
                self.example_prompt = self.tok.encode(self.tok.render_chat(
                    messages[:last_user + 1], add_generation_prompt=True, tools=tools))
            row = self._row(messages, tools)
            if row is None:
                self.dropped += 1
            else:
                self.rows.append(row)

    def collate(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        return _pad([self.rows[i] for i in indices], pad_id=self.tok.pad_id, seq_len=self.seq_len)


class PairData(ChatData):
    """DPO: each sample is a (chosen, rejected) pair; a batch of B pairs has 2B rows,
    the B chosen rows first."""

    def __init__(self, tok: Tok, seq_len: int):
        super().__init__(tok, seq_len)
        self.pairs: list[tuple[tuple, tuple]] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def extend(self, records: Sequence[dict]) -> None:
        for r in records:
            if self.example_prompt is None:
                self.example_prompt = self.tok.encode(
                    self.tok.render_chat(r["chosen"][:-1], add_generation_prompt=True))
            chosen, rejected = self._row(r["chosen"]), self._row(r["rejected"])
            if chosen is None or rejected is None:
                self.dropped += 1
            else:
                self.pairs.append((chosen, rejected))

    def collate(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        rows = [self.pairs[i][0] for i in indices] + [self.pairs[i][1] for i in indices]
        return _pad(rows, pad_id=self.tok.pad_id, seq_len=self.seq_len)


# ---------------------------------------------------------------------------------------------
# python -m mlx_train.data --out_dir DIR
# python -m mlx_train.data export --task T --data_path FILE --out_dir DIR

def main(argv: Sequence[str] | None = None) -> int:
    """Write the bundled bilingual data set (pretrain/sft/dpo/r1 JSONL) into --out_dir, or with
    ``export`` first, a task's data file as mlx-lm's train.jsonl/valid.jsonl."""
    from mlx_train.config import OneLineParser
    from mlx_train.datagen import write_all
    from mlx_train.errors import report_os_error

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    parser = OneLineParser(
        prog="python -m mlx_train.data",
        description="Write deterministic offline training data: pretrain.jsonl, sft.jsonl, "
                    "dpo.jsonl and r1.jsonl.",
        epilog="python -m mlx_train.data export -h: write a task's data as mlx-lm's "
               "train.jsonl/valid.jsonl.")
    parser.add_argument("--out_dir", required=True, help="folder to write the JSONL files into")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the number of samples per file (default 1.0)")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale={args.scale} must be positive")
    try:
        paths = write_all(Path(args.out_dir), seed=args.seed, scale=args.scale)
    except OSError as e:
        return report_os_error(e)
    _list_written(paths)
    return 0


def _list_written(paths: dict[str, Path]) -> None:
    """One line per file written: what it is, where, how many lines and kilobytes (a note: on stderr)."""
    for name, path in paths.items():
        lines = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{name:9s} {path}  ({lines} lines, {path.stat().st_size / 1024:.0f} KB)", file=sys.stderr)


def export_main(argv: Sequence[str]) -> int:
    """``export``: read and validate a task's data file, write it as mlx-lm's train/valid JSONL."""
    from mlx_train.config import OneLineParser
    from mlx_train.errors import report_os_error
    from mlx_train.formats import export

    parser = OneLineParser(
        prog="python -m mlx_train.data export",
        description="Write a task's JSONL data (any format mlx_train reads) as mlx-lm's "
                    "train.jsonl and valid.jsonl (every 20th row held out), for mlx_lm.lora --data DIR.")
    parser.add_argument("--task", required=True, choices=sorted(PARSERS),
                        help="how to read --data_path (dpo: the chosen conversations are exported)")
    parser.add_argument("--data_path", required=True, help="JSONL file to read")
    parser.add_argument("--out_dir", required=True, help="folder for train.jsonl and valid.jsonl")
    args = parser.parse_args(argv)
    try:
        records = JsonlSource(Path(args.data_path), args.task).read_new()
        if not records:
            raise DataError(f"{args.data_path}: no samples")
        paths = export(args.task, records, Path(args.out_dir))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        return report_os_error(e)
    _list_written(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
