"""Generate SFT data from a teacher model over HTTP (Ollama's /api/chat or an OpenAI-compatible
/v1/chat/completions), appending one JSON line per answered prompt:

    {"conversations": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]}

(with a leading {"role": "system", ...} turn when --system is given).

The output is append-only and resumable: on start the existing file is read (a trailing partial
line is cut off, or completed with its newline when it is a whole sample), prompts already
answered are skipped, and generation stops once the file holds the target number of samples.
`--until cold` stops at COLD_SAMPLES so a pipeline can start training early, then run
`--until total` in the background while the trainer re-reads the file each epoch.

Layering: `Teacher` talks HTTP (mlx_train.distill.teacher), `SampleFile` owns the output file
(mlx_train.distill.samples), `generate()` runs the worker pool, `main()` resolves flags and
environment and turns failures into one line and an exit code (`python -m mlx_train.distill`
runs it).
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlx_train.config import ConfigError
from mlx_train.distill.prompts import PromptFileError, iter_builtin_prompts, load_prompts_file
from mlx_train.distill.samples import SampleFile
from mlx_train.distill.teacher import APIS, THINK_LEVELS, Teacher, TeacherError, _with_retries, teacher_hint

__all__ = ["DistillConfig", "GenerateResult", "ConfigError", "generate", "main", "resolve_config"]

EXIT_OK = 0
EXIT_FAILED = 1       # every request failed, or the teacher kept failing
EXIT_USAGE = 2        # bad flag / environment value / prompts file / busy output file
EXIT_TEACHER = 3      # teacher unreachable, model missing, or wrong protocol (nothing generated)
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

THINK_MODES = ("strip-empty", "strip", "keep")
DEFAULT_URL = "http://127.0.0.1:11434"
DEFAULT_MODEL = "qwen3:0.6b"


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# configuration: flags > environment > defaults


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
    teacher_think: bool | str | None = field(
        default=False, metadata={"help": "the request's thinking switch: False, True, a level, None (not sent)"})
    api_key: str | None = field(default=None, repr=False,
                                metadata={"help": "sent as Authorization: Bearer; never printed"})

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
  TEACHER_THINK   should the teacher think before answering: 0 | 1 | low | medium | high |
                  default (send nothing)    (default: 0 for ollama, default for openai)
                  ollama: the request's "think" field (a thinking model like qwen3 thinks
                  when it is absent, spending the answer's token budget on it);
                  openai: chat_template_kwargs.enable_thinking (vLLM, mlx_lm.server), or
                  reasoning_effort for a level
  TEACHER_API_KEY sent as "Authorization: Bearer KEY" (hosted servers, proxies); only from
                  the environment, never printed; https is advised off this machine

URLs: the base URL may end in /v1 for --api openai; requests go to BASE/api/chat (ollama)
or BASE/v1/chat/completions (openai). A preflight 1-token chat checks the teacher before
anything is written; it is skipped when the output already holds the target. When the server
refuses it, its model list (BASE/api/tags, BASE/v1/models) says whether the model name is
wrong: the error then lists the models it serves.

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
        raise ConfigError(message)


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
    p.add_argument("--teacher-think", "--teacher_think", dest="teacher_think",
                   help="0 | 1 | low | medium | high | default [TEACHER_THINK; 0 for ollama, default for openai]")
    p.add_argument("--log-every", "--log_every", dest="log_every", default="10",
                   help="progress line on stderr every N samples [10]")
    return p


def _number(name: str, raw: str, kind: type, *, minimum: float, allow_equal: bool = True):
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={raw!r} is not {what}") from None
    if value < minimum or (value == minimum and not allow_equal):
        bound = ">=" if allow_equal else ">"
        raise ConfigError(f"{name}={raw!r} must be {bound} {minimum:g}")
    return value


def _choice(name: str, raw: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} is not one of: {', '.join(choices)}")
    return raw


_THINK_WORDS = {"0": False, "false": False, "off": False, "no": False,
                "1": True, "true": True, "on": True, "yes": True, "default": None}


def _teacher_think(name: str, raw: str | None, api: str) -> bool | str | None:
    """TEACHER_THINK: off for Ollama unless asked (qwen3 would think away its token budget)."""
    if raw is None:
        return False if api == "ollama" else None
    value = raw.strip().lower()
    if value in THINK_LEVELS:
        return value
    if value not in _THINK_WORDS:
        raise ConfigError(f"{name}={raw!r} is not one of: 0, 1, {', '.join(THINK_LEVELS)}, default")
    return _THINK_WORDS[value]


def _api_key(env) -> str | None:
    """TEACHER_API_KEY, checked without ever showing it."""
    key = env.get("TEACHER_API_KEY", "").strip()
    if key and not all(33 <= ord(ch) < 127 for ch in key):
        raise ConfigError("TEACHER_API_KEY holds spaces or characters an HTTP header can't carry "
                         "(its value is not shown)")
    return key or None


def _normalize_url(raw: str) -> str:
    url = raw.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url  # OLLAMA_HOST style "127.0.0.1:11434"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"teacher URL {raw!r} is not an http(s) URL")
    return url


def resolve_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> DistillConfig:
    """Build the run's config from flags > environment > defaults; raise ConfigError when bad."""
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
            raise ConfigError(f"{cold_src}={cold} is larger than {total_src}={total}")
    workers_raw, workers_src = pick(args.workers, "--workers", "GEN_WORKERS", "4")
    prompts_raw, _ = pick(args.prompts_file, "--prompts-file", "PROMPTS_FILE", None)
    think_raw, think_src = pick(args.teacher_think, "--teacher-think", "TEACHER_THINK", None)
    if not str(model).strip():
        raise ConfigError("teacher model name is empty")
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
        teacher_think=_teacher_think(think_src, think_raw, api),
        api_key=_api_key(env),
    )


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
            results.put(_Outcome(prompt, None, TeacherError(teacher.mask(repr(exc)), kind="protocol")))


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
        raise ConfigError(str(exc)) from None


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
        raise ConfigError(f"cannot read {cfg.out}: {exc.strerror or exc}") from None
    if have >= target:
        print(f"[distill] ready: {have} samples in {cfg.out} (target {target})", file=sys.stderr, flush=True)
        return EXIT_OK

    teacher = Teacher(api=cfg.api, url=cfg.url, model=cfg.model, timeout=cfg.timeout,
                      max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                      system=cfg.system, think=cfg.think, thinking=cfg.teacher_think,
                      api_key=cfg.api_key)
    if teacher.key_in_clear:
        _err(f"[warn] TEACHER_API_KEY goes to {teacher.url} over plain http; an https URL keeps it private")
    try:
        teacher.preflight(retries=cfg.retries, backoff=cfg.backoff, rng=random.Random(cfg.seed))
    except TeacherError as exc:
        if exc.kind == "unreachable":
            _err(f"[error] teacher unreachable: {teacher.where} ({exc}); {teacher_hint(teacher)}")
        elif exc.kind == "model_missing" and cfg.api == "ollama":
            _err(f"[error] {exc}; pull it with `ollama pull {cfg.model}`")
        elif exc.kind == "model_missing" and exc.served:
            _err(f"[error] {exc}; name one of them with --model or OLLAMA_MODEL")
        elif exc.kind == "model_missing":
            _err(f"[error] {exc}; {teacher_hint(teacher)}")
        elif exc.status in (401, 403):
            _err(f"[error] teacher refused the request: {exc}")
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
        raise ConfigError(f"cannot write {cfg.out}: {exc.strerror or exc}") from None

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
          f"+{result.written} this run, {result.failures} failed)", file=sys.stderr, flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: `python -m mlx_train.distill --out data.jsonl ...`."""
    try:
        return run(resolve_config(argv))
    except ConfigError as exc:
        _err(f"[error] distill: {exc}")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except KeyboardInterrupt:
        _err("[distill] interrupted")
        return EXIT_SIGINT

