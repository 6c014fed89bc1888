"""The resumable JSONL output of a distillation run. `SampleFile` holds an exclusive lock on
the file, reads what it already holds (samples, their prompts, malformed lines), completes or
drops a trailing partial line, and appends each new sample as one whole, fsynced line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

try:  # advisory lock so two runs never append to the same file at once (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from mlx_train.config import ConfigError

__all__ = ["SampleFile"]


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _user_prompt(record: object) -> str | None:
    """The user prompt of one SFT record, or None if the record isn't a sample."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return None
    roles = {}
    for turn in record["conversations"]:
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            return None
        roles.setdefault(turn.get("role"), turn["content"])
    if "user" not in roles or "assistant" not in roles:
        return None
    return roles["user"]


class SampleFile:
    """The append-only JSONL output: an exclusive lock, a repaired tail, whole-line appends.

    Use as a context manager; `count` and `prompts` describe what the file holds.
    """

    def __init__(self, path: Path, *, fsync: bool = True):
        self.path, self.fsync = Path(path), fsync
        self.count, self.prompts, self.malformed = 0, set(), 0
        self._fd: int | None = None
        self._lock = threading.Lock()

    @staticmethod
    def scan(path: Path) -> tuple[int, set[str], int, bytes]:
        """(samples, their prompts, malformed whole lines, trailing bytes without newline)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0, set(), 0, b""
        cut = data.rfind(b"\n") + 1
        count, prompts, malformed = 0, set(), 0
        for line in data[:cut].split(b"\n"):
            if not line.strip():
                continue
            try:
                prompt = _user_prompt(json.loads(line))
            except (ValueError, UnicodeDecodeError):
                prompt = None
            if prompt is None:
                malformed += 1
            else:
                count += 1
                prompts.add(prompt)
        return count, prompts, malformed, data[cut:]

    def __enter__(self) -> SampleFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise ConfigError(f"another run is writing {self.path} (file is locked)") from None
        self._fd = fd
        self.count, self.prompts, self.malformed, tail = self.scan(self.path)
        if tail.strip():
            self._repair_tail(tail)
        return self

    def _repair_tail(self, tail: bytes) -> None:
        try:
            prompt = _user_prompt(json.loads(tail))
        except (ValueError, UnicodeDecodeError):
            prompt = None
        if prompt is not None:  # a whole sample that only lacks its newline: keep it
            os.write(self._fd, b"\n")
            self.count += 1
            self.prompts.add(prompt)
        else:  # a line cut off mid-write: drop it
            size = os.fstat(self._fd).st_size
            os.ftruncate(self._fd, size - len(tail))
            _err(f"[warn] dropped a partial last line ({len(tail)} bytes) from {self.path}")
        if self.fsync:
            os.fsync(self._fd)

    def append(self, prompt: str, answer: str, *, system: str | None = None) -> None:
        """Write one sample as one whole line (a single write of the line and its newline)."""
        turns = [{"role": "system", "content": system}] if system else []
        turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        line = (json.dumps({"conversations": turns}, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            assert self._fd is not None, "append() outside the with-block"
            view = memoryview(line)
            while view:  # O_APPEND: a short write continues at the end
                view = view[os.write(self._fd, view):]
            if self.fsync:
                os.fsync(self._fd)
            self.count += 1
            self.prompts.add(prompt)

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the flock
            self._fd = None
