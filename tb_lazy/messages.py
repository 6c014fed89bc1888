"""The two kinds of line tb_lazy writes besides the URL: warnings and notes, both on stderr."""

from __future__ import annotations

import sys


def warn(message: str) -> None:
    """``[warn] …`` on stderr: something the user should know, but not an error."""
    print(f"[warn] {message}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """``[tb_lazy] …`` on stderr: why nothing was started."""
    print(f"[tb_lazy] {message}", file=sys.stderr, flush=True)


def tunnel(command: str, port: int) -> None:
    """The one hint a remote (SSH) user needs to open TensorBoard on their own machine."""
    note(f"on your own machine, run: {command}  -- then open http://127.0.0.1:{port}")
