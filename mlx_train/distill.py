"""Generate SFT data from a teacher model over HTTP (Ollama's /api/chat or an OpenAI-compatible
/v1/chat/completions), appending one JSON line per answered prompt:

    {"conversations": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]}

(with a leading {"role": "system", ...} turn when --system is given).

The output is append-only and resumable: on start the existing file is read (a trailing partial
line is cut off, or completed with its newline when it is a whole sample), prompts already
answered are skipped, and generation stops once the file holds the target number of samples.
`--until cold` stops at COLD_SAMPLES so a pipeline can start training early, then run
`--until total` in the background while the trainer re-reads the file each epoch.

Layering: `Teacher` talks HTTP, `SampleFile` owns the output file, `generate()` runs the worker
pool, `main()` resolves flags and environment and turns failures into one line and an exit code.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import queue
import random
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlx_train.prompts import PromptFileError, iter_builtin_prompts, load_prompts_file

try:  # advisory lock so two runs never append to the same file at once (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DistillConfig", "GenerateResult", "SampleFile", "Teacher", "TeacherError", "UsageError",
    "generate", "main", "resolve_config",
]

EXIT_OK = 0
EXIT_FAILED = 1       # every request failed, or the teacher kept failing
EXIT_USAGE = 2        # bad flag / environment value / prompts file / busy output file
EXIT_TEACHER = 3      # teacher unreachable, model missing, or wrong protocol (nothing generated)
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

APIS = ("ollama", "openai")
THINK_MODES = ("strip-empty", "strip", "keep")
DEFAULT_URL = "http://127.0.0.1:11434"
DEFAULT_MODEL = "qwen3:0.6b"
BACKOFF_CAP = 30.0
PREFLIGHT_PROMPT = "Hi"
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>\s*", re.DOTALL)
_EMPTY_THINK_BLOCK = re.compile(r"<think>\s*</think>\s*")
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# configuration: flags > environment > defaults


class UsageError(ValueError):
    """Bad flag or environment value; main() prints it as one line and exits 2."""


@dataclass(frozen=True)
class DistillConfig:
    """Everything one run needs, resolved from flags, environment and defaults."""

    out: Path = field(metadata={"help": "JSONL output file (appended to; resumable)"})
    api: str = field(default="ollama", metadata={"help": "teacher protocol: ollama or openai"})
    url: str = field(default=DEFAULT_URL, metadata={"help": "teacher base URL"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "teacher model name"})
    until: str = field(default="total", metadata={"help": "stop at COLD_SAMPLES or TOTAL_SAMPLES"})
    cold_samples: int = field(default=32, metadata={"help": "samples that make the data 'ready'"})
    total_samples: int = field(default=256, metadata={"help": "samples in all"})
    workers: int = field(default=4, metadata={"help": "parallel requests"})
    prompts_file: Path | None = field(default=None, metadata={"help": "user prompts (else built-in)"})
    timeout: float = field(default=60.0, metadata={"help": "seconds per request"})
    retries: int = field(default=3, metadata={"help": "retries per prompt after the first try"})
    backoff: float = field(default=0.5, metadata={"help": "first retry delay in seconds; doubles"})
    seed: int = field(default=0, metadata={"help": "built-in prompt order and retry jitter"})
    max_tokens: int = field(default=512, metadata={"help": "answer length limit in tokens"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    system: str | None = field(default=None, metadata={"help": "optional system prompt"})
    think: str = field(default="strip-empty", metadata={"help": "<think> handling"})
    log_every: int = field(default=10, metadata={"help": "progress line every N samples"})

    @property
    def target(self) -> int:
        return self.cold_samples if self.until == "cold" else self.total_samples


_HELP_EPILOG = """\
environment (a flag beats its variable):
  TEACHER_API     ollama | openai                          (default ollama)
  TEACHER_URL     teacher base URL for either protocol; wins over OLLAMA_URL, so an
                  OpenAI-compatible server (mlx_lm.server, vLLM, llama.cpp) can be named
                  without touching OLLAMA_URL
  OLLAMA_URL      teacher base URL when TEACHER_URL is unset   (default http://127.0.0.1:11434)
  OLLAMA_MODEL    teacher model                              (default qwen3:0.6b)
  GEN_WORKERS     parallel requests                          (default 4)
  COLD_SAMPLES    samples needed before --until cold returns (default 32; capped at
                  TOTAL_SAMPLES unless given explicitly)
  TOTAL_SAMPLES   samples in all                             (default 256)
  PROMPTS_FILE    one prompt per line, or JSONL {"prompt": ...} (default: built-in generator)

URLs: the base URL may end in /v1 for --api openai; requests go to BASE/api/chat (ollama)
or BASE/v1/chat/completions (openai). A preflight 1-token chat checks the teacher before
anything is written; it is skipped when the output already holds the target.

output: one JSON object per line, appended and fsynced as each answer arrives:
  {"conversations": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]}
  (a {"role": "system"} turn comes first when --system is given). Re-running resumes:
  prompts already in the file are skipped, a trailing partial line is dropped.

--think: strip-empty (default) removes empty <think></think> blocks and keeps real ones;
  strip removes every think block (answers that are only thinking are dropped);
  keep leaves content as is and adds the server's separate thinking field as <think>..</think>.

stdout: one line when done, "[distill] ready: N samples in PATH (target T, ...)";
  progress, warnings and errors go to stderr.

exit codes: 0 target reached (or prompts exhausted, with a warning); 1 every request failed,
  or max(10, 2 x workers) prompts failed in a row; 2 bad usage or input, or another run holds the
  output file; 3 teacher unreachable / model not found / not that protocol (nothing written);
  130 interrupted (SIGINT); 143 terminated (SIGTERM). Signals stop new requests at once,
  drop the ones in flight and never leave a partial line.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m mlx_train.distill",
        description="Generate SFT data (JSONL) from a teacher model over HTTP.",
        epilog=_HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="JSONL output file (appended to; resumable)")
    p.add_argument("--api", help="teacher protocol: ollama or openai [TEACHER_API, ollama]")
    p.add_argument("--url", help="teacher base URL [TEACHER_URL, OLLAMA_URL, %s]" % DEFAULT_URL)
    p.add_argument("--model", help="teacher model [OLLAMA_MODEL, %s]" % DEFAULT_MODEL)
    p.add_argument("--until", default="total", help="cold | total: stop when that many samples exist [total]")
    p.add_argument("--cold", dest="cold_samples", help="samples for --until cold [COLD_SAMPLES, 32]")
    p.add_argument("--total", dest="total_samples", help="samples in all [TOTAL_SAMPLES, 256]")
    p.add_argument("--workers", help="parallel requests [GEN_WORKERS, 4]")
    p.add_argument("--prompts-file", "--prompts_file", dest="prompts_file",
                   help="one prompt per line, or JSONL {\"prompt\": ...} [PROMPTS_FILE, built-in]")
    p.add_argument("--timeout", default="60", help="seconds per request [60]")
    p.add_argument("--retries", default="3", help="retries per prompt, exponential backoff with jitter [3]")
    p.add_argument("--backoff", default="0.5", help="first retry delay in seconds, doubling up to 30 [0.5]")
    p.add_argument("--seed", default="0", help="built-in prompt order and retry jitter [0]")
    p.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", default="512",
                   help="answer length limit: num_predict (ollama) / max_tokens (openai) [512]")
    p.add_argument("--temperature", default="0.7", help="sampling temperature [0.7]")
    p.add_argument("--system", help="system prompt sent to the teacher and kept in the data [none]")
    p.add_argument("--think", default="strip-empty", help="strip-empty | strip | keep [strip-empty]")
    p.add_argument("--log-every", "--log_every", dest="log_every", default="10",
                   help="progress line on stderr every N samples [10]")
    return p


def _number(name: str, raw: str, kind: type, *, minimum: float, allow_equal: bool = True):
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"{name}={raw!r} is not {what}") from None
    if value < minimum or (value == minimum and not allow_equal):
        bound = ">=" if allow_equal else ">"
        raise UsageError(f"{name}={raw!r} must be {bound} {minimum:g}")
    return value


def _choice(name: str, raw: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if raw not in choices:
        raise UsageError(f"{name}={raw!r} is not one of: {', '.join(choices)}")
    return raw


def _normalize_url(raw: str) -> str:
    url = raw.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url  # OLLAMA_HOST style "127.0.0.1:11434"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"teacher URL {raw!r} is not an http(s) URL")
    return url


def resolve_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> DistillConfig:
    """Build the run's config from flags > environment > defaults; raise UsageError when bad."""
    env = os.environ if environ is None else environ
    args = _build_parser().parse_args(argv)

    def pick(flag_value, flag: str, var: str, default):
        """(value, name to blame in an error message)"""
        if flag_value is not None:
            return flag_value, flag
        if env.get(var, "").strip():
            return env[var].strip(), var
        return default, var

    api, api_src = pick(args.api, "--api", "TEACHER_API", "ollama")
    api = _choice(api_src, api, APIS)
    url = args.url or env.get("TEACHER_URL", "").strip() or env.get("OLLAMA_URL", "").strip() or DEFAULT_URL
    model, _ = pick(args.model, "--model", "OLLAMA_MODEL", DEFAULT_MODEL)
    total_raw, total_src = pick(args.total_samples, "--total", "TOTAL_SAMPLES", "256")
    total = _number(total_src, total_raw, int, minimum=1)
    cold_raw, cold_src = pick(args.cold_samples, "--cold", "COLD_SAMPLES", None)
    if cold_raw is None:
        cold = min(32, total)  # the default never exceeds the total asked for
    else:
        cold = _number(cold_src, cold_raw, int, minimum=0)
        if cold > total:
            raise UsageError(f"{cold_src}={cold} is larger than {total_src}={total}")
    workers_raw, workers_src = pick(args.workers, "--workers", "GEN_WORKERS", "4")
    prompts_raw, _ = pick(args.prompts_file, "--prompts-file", "PROMPTS_FILE", None)
    if not str(model).strip():
        raise UsageError("teacher model name is empty")
    return DistillConfig(
        out=Path(args.out),
        api=api,
        url=_normalize_url(url),
        model=str(model).strip(),
        until=_choice("--until", args.until, ("cold", "total")),
        cold_samples=cold,
        total_samples=total,
        workers=_number(workers_src, workers_raw, int, minimum=1),
        prompts_file=Path(prompts_raw) if prompts_raw else None,
        timeout=_number("--timeout", args.timeout, float, minimum=0, allow_equal=False),
        retries=_number("--retries", args.retries, int, minimum=0),
        backoff=_number("--backoff", args.backoff, float, minimum=0),
        seed=_number("--seed", args.seed, int, minimum=-(2**63)),
        max_tokens=_number("--max-tokens", args.max_tokens, int, minimum=1),
        temperature=_number("--temperature", args.temperature, float, minimum=0),
        system=args.system or None,
        think=_choice("--think", args.think, THINK_MODES),
        log_every=_number("--log-every", args.log_every, int, minimum=1),
    )


# ---------------------------------------------------------------------------------------------
# the teacher over HTTP


class TeacherError(Exception):
    """A failed teacher request.

    `kind`: unreachable (can't connect), connection (dropped mid-answer), timeout, http,
    model_missing, protocol (not the expected API or format), empty (nothing left to keep).
    """

    def __init__(self, message: str, *, kind: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def retryable(self) -> bool:
        if self.kind in ("unreachable", "connection", "timeout"):
            return True
        return self.kind == "http" and self.status in _RETRYABLE_STATUS


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error_text(body: bytes) -> str:
    """The server's own error message: Ollama {"error": str}, OpenAI {"error": {"message": str}}."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace").strip()[:200]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if isinstance(error, str):
        return error
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        return data["detail"]
    return json.dumps(data)[:200]


def _clean_answer(content: str, thinking: str | None, mode: str) -> str:
    """Apply the --think mode to an answer (content) and the server's separate thinking field."""
    if mode == "keep":
        if thinking and thinking.strip() and "<think>" not in content:
            content = f"<think>\n{thinking.strip()}\n</think>\n\n{content.lstrip()}"
        return content.strip()
    if mode == "strip":
        content = _THINK_BLOCK.sub("", content)
        if content.lstrip().startswith("<think>"):  # cut off by max_tokens: thinking only
            return ""
        return content.strip()
    return _EMPTY_THINK_BLOCK.sub("", content).strip()


class Teacher:
    """One teacher endpoint: Ollama's POST /api/chat or OpenAI's POST /v1/chat/completions."""

    def __init__(self, *, api: str, url: str, model: str, timeout: float = 60.0,
                 max_tokens: int = 512, temperature: float = 0.7, system: str | None = None,
                 think: str = "strip-empty"):
        if api not in APIS:
            raise ValueError(f"api={api!r} is not one of {APIS}")
        self.api, self.url, self.model = api, url.rstrip("/"), model
        self.timeout, self.max_tokens, self.temperature = timeout, max_tokens, temperature
        self.system, self.think = system, think
        if api == "ollama":
            self.endpoint = self.url + "/api/chat"
        elif self.url.endswith("/v1"):
            self.endpoint = self.url + "/chat/completions"
        else:
            self.endpoint = self.url + "/v1/chat/completions"
        host = urllib.parse.urlsplit(self.url).hostname or ""
        # a proxy from the environment must not swallow requests to a local teacher
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(host) else []
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def where(self) -> str:
        return f"{self.api} API at {self.url}"

    def messages(self, prompt: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": prompt}]

    def payload(self, prompt: str, *, max_tokens: int | None = None) -> dict:
        n = self.max_tokens if max_tokens is None else max_tokens
        if self.api == "ollama":
            return {"model": self.model, "messages": self.messages(prompt), "stream": False,
                    "options": {"temperature": self.temperature, "num_predict": n}}
        return {"model": self.model, "messages": self.messages(prompt), "max_tokens": n,
                "temperature": self.temperature, "stream": False}

    def chat(self, prompt: str, *, max_tokens: int | None = None) -> str:
        """One request; return the cleaned answer or raise TeacherError."""
        body = self._post(self.payload(prompt, max_tokens=max_tokens))
        content, thinking = self._parse(body)
        return _clean_answer(content, thinking, self.think)

    def preflight(self, *, retries: int = 0, backoff: float = 0.5, rng: random.Random | None = None) -> None:
        """A 1-token chat: raise TeacherError unless the teacher answers in its protocol.

        Connection refused and 404 fail at once; timeouts and 5xx are retried like any request.
        """
        def once() -> str:
            body = self._post(self.payload(PREFLIGHT_PROMPT, max_tokens=1))
            self._parse(body)  # an empty 1-token answer is fine; the shape is what we check
            return ""
        _with_retries(once, retries=retries, backoff=backoff, rng=rng or random.Random(0),
                      stop=threading.Event(), fail_fast=("unreachable",))

    def _post(self, payload: dict) -> bytes:
        data = json.dumps(payload).encode()
        req = urllib.request.Request(self.endpoint, data=data, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            text = _error_text(exc.read() or b"")
            if exc.code == 404 and "not found" in text.lower() and "model" in text.lower():
                raise TeacherError(f"model {self.model!r} not found on {self.where}: {text}",
                                   kind="model_missing", status=404) from None
            if exc.code in (404, 405):
                other = "openai" if self.api == "ollama" else "ollama"
                raise TeacherError(f"{self.endpoint} answered HTTP {exc.code} ({text or exc.reason}): "
                                   f"not an {self.api} API here? try --api {other}",
                                   kind="protocol", status=exc.code) from None
            raise TeacherError(f"HTTP {exc.code} from {self.endpoint}: {text or exc.reason}",
                               kind="http", status=exc.code) from None
        except (TimeoutError, socket.timeout):
            raise TeacherError(f"no answer from {self.endpoint} within {self.timeout:g}s",
                               kind="timeout") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise TeacherError(f"no answer from {self.endpoint} within {self.timeout:g}s",
                                   kind="timeout") from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise TeacherError(f"cannot connect to {self.endpoint}: {text}", kind="unreachable") from None
        except (OSError, http.client.HTTPException) as exc:  # dropped mid-response, ...
            raise TeacherError(f"connection to {self.endpoint} failed: {exc!r}", kind="connection") from None

    def _parse(self, body: bytes) -> tuple[str, str | None]:
        """(content, thinking) from a response body, or TeacherError(kind=protocol)."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = self._parse_ndjson(body)
        try:
            if self.api == "ollama":
                if "error" in data:
                    raise TeacherError(f"{self.where}: {data['error']}", kind="http", status=500)
                message = data["message"]
            else:
                message = data["choices"][0]["message"]
            content = message.get("content") or ""
            thinking = message.get("thinking") or message.get("reasoning_content") or message.get("reasoning")
            if not isinstance(content, str):
                raise TypeError("content is not a string")
        except (KeyError, IndexError, TypeError, AttributeError):
            shown = body[:120].decode("utf-8", "replace")
            other = "openai" if self.api == "ollama" else "ollama"
            raise TeacherError(f"{self.endpoint} did not answer in the {self.api} format "
                               f"(got {shown!r}); try --api {other}?", kind="protocol") from None
        return content, thinking if isinstance(thinking, str) else None

    def _parse_ndjson(self, body: bytes) -> dict:
        """A streamed Ollama answer (server ignored stream=false): join the message chunks."""
        parts, last = [], None
        try:
            for line in body.decode("utf-8").splitlines():
                if line.strip():
                    last = json.loads(line)
                    parts.append(last.get("message", {}).get("content", ""))
        except (ValueError, AttributeError):
            last = None
        if self.api != "ollama" or not isinstance(last, dict):
            return {}
        return {"message": {"role": "assistant", "content": "".join(parts)}}


def _with_retries(call: Callable[[], str], *, retries: int, backoff: float, rng: random.Random,
                  stop: threading.Event, fail_fast: tuple[str, ...] = ()) -> str:
    """Run `call`, retrying retryable TeacherErrors with exponential backoff and jitter."""
    for attempt in range(retries + 1):
        try:
            return call()
        except TeacherError as exc:
            if attempt == retries or not exc.retryable or exc.kind in fail_fast:
                raise
            base = min(BACKOFF_CAP, backoff * 2**attempt)
            if stop.wait(base / 2 + rng.uniform(0, base / 2)):  # stopping: give up quietly
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def teacher_hint(teacher: Teacher) -> str:
    """What to check when the teacher can't be used."""
    if teacher.api == "ollama":
        return f"is `ollama serve` running? is the model pulled: `ollama pull {teacher.model}`"
    return ("is the server running (`ollama serve`, `mlx_lm.server --model ...`, vLLM, llama.cpp) "
            f"and serving model {teacher.model!r}?")


# ---------------------------------------------------------------------------------------------
# the output file


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
                raise UsageError(f"another run is writing {self.path} (file is locked)") from None
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


# ---------------------------------------------------------------------------------------------
# generation


@dataclass(frozen=True)
class GenerateResult:
    """How a generate() call ended."""

    count: int              # samples in the file now
    written: int            # samples written by this call
    failures: int           # prompts given up on after all retries
    last_error: str | None
    reason: str             # "target", "exhausted", "failing" or "stopped"


@dataclass(frozen=True)
class _Outcome:
    prompt: str
    answer: str | None
    error: TeacherError | None


def _worker(teacher: Teacher, jobs: queue.Queue, results: queue.Queue, *, retries: int,
            backoff: float, rng: random.Random, stop: threading.Event) -> None:
    while (prompt := jobs.get()) is not None:
        try:
            answer = _with_retries(lambda: teacher.chat(prompt), retries=retries, backoff=backoff,
                                   rng=rng, stop=stop)
            if not answer:
                raise TeacherError("empty answer (after --think handling)", kind="empty")
            results.put(_Outcome(prompt, answer, None))
        except TeacherError as exc:
            if exc.retryable and retries:
                exc = TeacherError(f"{exc} (after {retries + 1} tries)", kind=exc.kind, status=exc.status)
            results.put(_Outcome(prompt, None, exc))
        except Exception as exc:  # never let a worker die silently with a job in flight
            results.put(_Outcome(prompt, None, TeacherError(repr(exc), kind="protocol")))


def generate(teacher: Teacher, prompts: Iterable[str], out: SampleFile, *, target: int,
             workers: int = 4, retries: int = 3, backoff: float = 0.5, seed: int = 0,
             log_every: int = 10, stop: threading.Event | None = None,
             give_up_after: int | None = None) -> GenerateResult:
    """Ask the teacher about prompts not yet in `out` until it holds `target` samples.

    At most `target - out.count` requests are in flight, so the file never overshoots. A prompt
    that still fails after `retries` is counted and skipped. Gives up ("failing") after
    `give_up_after` failures in a row (default max(10, 2 * workers)); returns promptly when
    `stop` is set, dropping requests in flight.
    """
    stop = stop or threading.Event()
    give_up_after = give_up_after or max(10, 2 * workers)
    jobs: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()
    quit_workers = threading.Event()
    pool = [threading.Thread(target=_worker, name=f"distill-{i}", daemon=True,
                             args=(teacher, jobs, results),
                             kwargs=dict(retries=retries, backoff=backoff, stop=quit_workers,
                                         rng=random.Random(seed * 1000 + i)))
            for i in range(min(workers, max(1, target - out.count)))]
    for t in pool:
        t.start()

    pending: Iterator[str] = (p for p in prompts if p not in out.prompts)
    in_flight = written = failures = failures_in_a_row = 0
    last_error: str | None = None
    exhausted, reason = False, "target"
    started = time.monotonic()
    try:
        while True:
            if stop.is_set():
                reason = "stopped"
                break
            while not exhausted and out.count + in_flight < target:
                prompt = next(pending, None)
                if prompt is None:
                    exhausted = True
                else:
                    jobs.put(prompt)
                    in_flight += 1
            if in_flight == 0:
                reason = "target" if out.count >= target else "exhausted"
                break
            try:
                outcome = results.get(timeout=0.1)
            except queue.Empty:
                continue
            in_flight -= 1
            if outcome.answer is not None:
                out.append(outcome.prompt, outcome.answer, system=teacher.system)
                written += 1
                failures_in_a_row = 0
                if written % log_every == 0 or out.count >= target:
                    rate = written / max(time.monotonic() - started, 1e-9)
                    _err(f"[distill] {out.count}/{target} samples  {rate:.2f} samples/s  "
                         f"failures={failures}")
            else:
                failures += 1
                failures_in_a_row += 1
                last_error = str(outcome.error)
                _err(f"[warn] prompt skipped (failures={failures}): {last_error}")
                if failures_in_a_row >= give_up_after:
                    reason = "failing"
                    break
    finally:
        quit_workers.set()  # ends retry back-offs at once
        for _ in pool:
            jobs.put(None)
        if reason in ("target", "exhausted"):  # workers are idle: they end right away
            for t in pool:
                t.join(timeout=teacher.timeout)
    return GenerateResult(out.count, written, failures, last_error, reason)


# ---------------------------------------------------------------------------------------------
# command line


class _Signals:
    """SIGINT/SIGTERM set an event instead of raising, so no write is ever cut in half."""

    def __init__(self, *, enabled: bool = True):
        self.stop = threading.Event()
        self.signum: int | None = None
        self.enabled = enabled
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self.stop.set()

    def __enter__(self) -> _Signals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _prompt_source(cfg: DistillConfig) -> Iterable[str]:
    if cfg.prompts_file is None:
        return iter_builtin_prompts(seed=cfg.seed)
    try:
        return load_prompts_file(cfg.prompts_file)
    except PromptFileError as exc:
        raise UsageError(str(exc)) from None


def run(cfg: DistillConfig, *, handle_signals: bool = True) -> int:
    """Run one distillation pass described by `cfg`; return the exit code.

    Until the output file is opened, Ctrl-C raises KeyboardInterrupt and SIGTERM keeps its
    default action (nothing has been written). While writing, both only set a stop flag.
    """
    prompts = _prompt_source(cfg)  # bad prompts file: exit 2 before anything else
    target = cfg.target
    try:
        have = SampleFile.scan(cfg.out)[0]
    except OSError as exc:
        raise UsageError(f"cannot read {cfg.out}: {exc.strerror or exc}") from None
    if have >= target:
        print(f"[distill] ready: {have} samples in {cfg.out} (target {target})", flush=True)
        return EXIT_OK

    teacher = Teacher(api=cfg.api, url=cfg.url, model=cfg.model, timeout=cfg.timeout,
                      max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                      system=cfg.system, think=cfg.think)
    try:
        teacher.preflight(retries=cfg.retries, backoff=cfg.backoff, rng=random.Random(cfg.seed))
    except TeacherError as exc:
        if exc.kind == "unreachable":
            _err(f"[error] teacher unreachable: {teacher.where} ({exc}); {teacher_hint(teacher)}")
        elif exc.kind == "model_missing" and cfg.api == "ollama":
            _err(f"[error] model {cfg.model!r} not found on {teacher.where}: "
                 f"pull it with `ollama pull {cfg.model}`")
        elif exc.kind == "model_missing":
            _err(f"[error] {exc}; {teacher_hint(teacher)}")
        elif exc.kind == "protocol":
            _err(f"[error] teacher check failed for {teacher.where}: {exc}")
        else:
            _err(f"[error] teacher check failed for {teacher.where}: {exc}; {teacher_hint(teacher)}")
        return EXIT_TEACHER

    signals = _Signals(enabled=handle_signals)
    try:
        with signals, SampleFile(cfg.out) as out:
            if out.malformed:
                _err(f"[warn] {out.malformed} malformed line(s) in {cfg.out} are ignored")
            _err(f"[distill] {out.count}/{target} samples in {cfg.out}; asking {cfg.model} via "
                 f"{teacher.where} with {cfg.workers} worker(s)")
            result = generate(teacher, prompts, out, target=target, workers=cfg.workers,
                              retries=cfg.retries, backoff=cfg.backoff, seed=cfg.seed,
                              log_every=cfg.log_every, stop=signals.stop)
    except OSError as exc:
        raise UsageError(f"cannot write {cfg.out}: {exc.strerror or exc}") from None

    if result.reason == "stopped":
        name = "interrupted" if signals.signum == signal.SIGINT else "terminated"
        _err(f"[distill] {name}: {result.count}/{target} samples in {cfg.out}")
        return EXIT_SIGINT if signals.signum == signal.SIGINT else EXIT_SIGTERM
    if result.reason == "failing" or (result.written == 0 and result.failures):
        _err(f"[error] teacher keeps failing: {result.failures} prompt(s) failed, "
             f"{result.written} answered; last error: {result.last_error}")
        return EXIT_FAILED
    if result.reason == "exhausted":
        _err(f"[warn] prompts exhausted: {result.count} samples < target {target} in {cfg.out}")
    print(f"[distill] ready: {result.count} samples in {cfg.out} (target {target}, "
          f"+{result.written} this run, {result.failures} failed)", flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: `python -m mlx_train.distill --out data.jsonl ...`."""
    try:
        return run(resolve_config(argv))
    except UsageError as exc:
        _err(f"[error] distill: {exc}")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except KeyboardInterrupt:
        _err("[distill] interrupted")
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
