"""``python -m mlx_train.infer --checkpoint PATH --prompt TEXT [--chat] ...``

Generation from a checkpoint (a stage's out_dir: its newest run's latest step; a run's folder: its
latest step) with mlx-lm's KV-cached ``stream_generate``; greedy unless --temperature > 0. stdout
carries the generated text only (``… | head -1`` is its first line); the checkpoint (with its run
and step) and the prompt are echoed on stderr."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from mlx_train.blas import blas_note, reexec_with_fast_blas
from mlx_train.config import OneLineParser
from mlx_train.runs import CheckpointError, describe, find_checkpoint

__all__ = ["generate_text", "main", "whole_characters"]


def generate_text(checkpoint: Path | str, prompt: str, *, chat: bool = False,
                  max_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                  stream=None) -> str:
    """Generate a completion of ``prompt`` (a user message when ``chat``) and return it.

    ``stream``, when given, receives each text piece as it is produced; only whole characters
    are given out (``whole_characters``)."""
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(find_checkpoint(checkpoint)))
    if chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                               add_generation_prompt=True, tokenize=False)
    sampler = make_sampler(temp=temperature, top_p=top_p)
    pieces = []
    responses = stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=sampler)
    for piece in whole_characters(response.text for response in responses):
        pieces.append(piece)
        if stream is not None:
            stream(piece)
    return "".join(pieces)


def whole_characters(pieces: Iterable[str]) -> Iterator[str]:
    """``pieces`` with trailing U+FFFD held back until more text follows: a token boundary inside
    a multi-byte UTF-8 character decodes as U+FFFD; at the end (``max_tokens`` reached) it is dropped."""
    held = ""
    for piece in pieces:
        text = held + piece
        whole = text.rstrip("\ufffd")
        held = text[len(whole):]
        if whole:
            yield whole


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = OneLineParser(prog="python -m mlx_train.infer",
                           description="Generate text from an mlx_train checkpoint.")
    parser.add_argument("--checkpoint", required=True,
                        help="a step_XXXXXXX folder, a run's folder (its latest step), a stage's out_dir "
                             "(its newest run's latest step) or any mlx-lm model folder (e.g. an mlx_lm "
                             "fuse output)")
    parser.add_argument("--prompt", required=True, help="prompt text (a user message with --chat)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    parser.add_argument("--max_tokens", type=int, default=128, help="tokens to generate (128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling (1.0: off)")
    args = parser.parse_args(argv)
    if args.max_tokens < 1:
        parser.error(f"--max_tokens={args.max_tokens} must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        parser.error(f"--temperature={args.temperature} must be >= 0 and "
                     f"--top_p={args.top_p} in (0, 1]")
    try:
        ckpt = find_checkpoint(args.checkpoint)
        note = blas_note()
        if note:
            print(note, file=sys.stderr)
        print(f"[infer] {describe(ckpt)}", file=sys.stderr)
        print(f"[infer] prompt: {args.prompt}", file=sys.stderr, flush=True)
        generate_text(ckpt, args.prompt, chat=args.chat, max_tokens=args.max_tokens,
                      temperature=args.temperature, top_p=args.top_p,
                      stream=lambda text: print(text, end="", flush=True))
        print(flush=True)
    except BrokenPipeError:  # the reader had enough (`| head -1`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    if not {"-h", "--help"} & set(sys.argv[1:]):
        reexec_with_fast_blas(["-m", "mlx_train.infer", *sys.argv[1:]])
    sys.exit(main())
