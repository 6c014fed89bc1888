"""Tests for the mlx_train.distill package: cli, teacher, samples and prompts.

The teacher is a stand-in HTTP server on an ephemeral 127.0.0.1 port, started and stopped by
each test: Ollama itself can't be installed on the machines these tests run on, and the faults
tested here (500s on the first tries, a missing model, a slow teacher, a wrong API key) can't be
caused on demand with a real one. The stand-in follows Ollama's documented `POST /api/chat`
format (request: model, messages, stream=false, an optional top-level think = false | true |
"low" | "medium" | "high", options.temperature / options.num_predict; response: {"model",
"created_at", "message": {"role": "assistant", "content", "thinking"?}, "done": true, ...}; a
missing model is HTTP 404 {"error": "model \\"NAME\\" not found, try pulling it first"}; a
thinking model thinks when think is absent; think=true on a model without thinking is HTTP 400
{"error": "\\"NAME\\" does not support thinking"}; GET /api/tags lists {"models": [{"name", ...}]})
and the OpenAI format (`POST /v1/chat/completions`; a missing model is vLLM's HTTP 404 "The model
`NAME` does not exist."; GET /v1/models lists {"data": [{"id", ...}]}). With an API key it
answers 401 unless `Authorization: Bearer KEY` is sent. Its error bodies echo the Authorization
header it received, as a careless server might, so the tests can check the key never reaches
any message. It records every request whose shape is wrong so the tests can assert there were
none.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlx_train import distill
from mlx_train.distill.prompts import PromptFileError, builtin_prompts, iter_builtin_prompts, load_prompts_file
from mlx_train.distill.samples import SampleFile
from mlx_train.distill.teacher import Teacher, _clean_answer, _same_model

REPO = Path(__file__).resolve().parents[1]
ENV_VARS = ("OLLAMA_URL", "OLLAMA_MODEL", "TEACHER_API", "TEACHER_URL", "GEN_WORKERS",
            "COLD_SAMPLES", "TOTAL_SAMPLES", "PROMPTS_FILE", "TEACHER_THINK", "TEACHER_API_KEY")
SECRET = "sk-test-5ecret-Key-0123456789"
THINKING = "The user asks something; I should think it through before answering."


# ---------------------------------------------------------------------------------------------
# the stand-in teacher


class FakeTeacher(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: str, *, models=("qwen3:0.6b",), fail_first_per_prompt: int = 0,
                 fail_after: int | None = None, delay: float = 0.0, think: bool = False,
                 thinking_models=(), think_tokens: int = 100, api_key: str | None = None,
                 lists_models: bool = True):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api, self.models = api, set(models)
        self.fail_first_per_prompt, self.fail_after = fail_first_per_prompt, fail_after
        self.delay, self.think = delay, think
        # thinking_models think (think_tokens of the answer's budget) unless told think=false
        self.thinking_models, self.think_tokens = set(thinking_models), think_tokens
        self.api_key, self.lists_models = api_key, lists_models
        self.lock = threading.Lock()
        self.requests: list[dict] = []       # every well-formed request body
        self.auth: list[str | None] = []     # the Authorization header of every request, GETs too
        self.bad: list[str] = []             # shape problems, asserted empty by the tests
        self.attempts: Counter[str] = Counter()

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up (a killed run) is expected here

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def chat_prompts(self) -> list[str]:
        """User prompts of real (non-preflight) requests."""
        return [r["messages"][-1]["content"] for r in self.requests if _max_tokens(r) != 1]


def _max_tokens(body: dict) -> int | None:
    return body.get("options", {}).get("num_predict") if "options" in body else body.get("max_tokens")


def _check_shape(api: str, path: str, body: object) -> list[str]:
    problems = []
    want_path = "/api/chat" if api == "ollama" else "/v1/chat/completions"
    if path != want_path:
        problems.append(f"path {path!r} != {want_path!r}")
    if not isinstance(body, dict):
        return problems + ["body is not a JSON object"]
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("model missing")
    allowed = {"model", "messages", "stream"} | ({"options", "think"} if api == "ollama" else
                                                 {"max_tokens", "temperature", "chat_template_kwargs",
                                                  "reasoning_effort"})
    if set(body) - allowed:
        problems.append(f"unexpected fields {sorted(set(body) - allowed)}")
    msgs = body.get("messages")
    if (not isinstance(msgs, list) or not msgs
            or not all(isinstance(m, dict) and set(m) == {"role", "content"} for m in msgs)
            or msgs[-1]["role"] != "user"
            or any(m["role"] not in ("system", "user", "assistant") for m in msgs)):
        problems.append(f"bad messages {msgs!r}")
    if api == "ollama":
        if body.get("stream") is not False:
            problems.append("stream is not false")
        opts = body.get("options")
        if (not isinstance(opts, dict) or not isinstance(opts.get("num_predict"), int)
                or not isinstance(opts.get("temperature"), (int, float))):
            problems.append(f"bad options {opts!r}")
        if "think" in body and body["think"] not in (False, True, "low", "medium", "high"):
            problems.append(f"bad think {body['think']!r}")
    else:
        if not isinstance(body.get("max_tokens"), int) or not isinstance(body.get("temperature"), (int, float)):
            problems.append("max_tokens / temperature missing")
        kwargs = body.get("chat_template_kwargs", {"enable_thinking": False})
        if set(kwargs) != {"enable_thinking"} or not isinstance(kwargs["enable_thinking"], bool):
            problems.append(f"bad chat_template_kwargs {kwargs!r}")
        if body.get("reasoning_effort", "low") not in ("low", "medium", "high"):
            problems.append(f"bad reasoning_effort {body['reasoning_effort']!r}")
    return problems


def answer_for(prompt: str) -> str:
    return f"Answer: {prompt[::-1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeTeacher

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, obj: object) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        """An error body in the server's own format, echoing the Authorization header it got."""
        message += f" (request had Authorization: {self.headers.get('Authorization')})"
        self._send(status, {"error": message} if self.server.api == "ollama"
                   else {"error": {"message": message, "type": "api_error", "code": status}})

    def _authorized(self) -> bool:
        srv = self.server
        with srv.lock:
            srv.auth.append(self.headers.get("Authorization"))
        if srv.api_key and self.headers.get("Authorization") != f"Bearer {srv.api_key}":
            self._error(401, "invalid API key")
            return False
        return True

    def do_GET(self) -> None:
        srv = self.server
        if not self._authorized():
            return
        listing = "/api/tags" if srv.api == "ollama" else "/v1/models"
        if self.path != listing or not srv.lists_models:
            return self._send(404, {"error": "not found"})
        names = sorted(srv.models | srv.thinking_models)
        if srv.api == "ollama":
            return self._send(200, {"models": [{"name": n, "model": n, "size": 1, "digest": "0" * 64}
                                               for n in names]})
        self._send(200, {"object": "list", "data": [{"id": n, "object": "model", "created": 0} for n in names]})

    def do_POST(self) -> None:
        srv = self.server
        if not self._authorized():
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        problems = _check_shape(srv.api, self.path, body)
        if problems and problems[0].startswith("path"):  # like a real server: unknown route
            with srv.lock:
                srv.bad.extend(problems)
            return self._send(404, {"detail": "Not Found"})
        if problems:
            with srv.lock:
                srv.bad.extend(problems)
            return self._send(400, {"error": "; ".join(problems)})
        prompt = body["messages"][-1]["content"]
        with srv.lock:
            srv.requests.append(body)
            srv.attempts[prompt] += 1
            n_attempt, n_total = srv.attempts[prompt], len(srv.requests)
        if srv.delay:
            time.sleep(srv.delay)
        model = body["model"]
        if model not in srv.models | srv.thinking_models:
            if srv.api == "ollama":
                return self._error(404, f'model "{model}" not found, try pulling it first')
            return self._error(404, f"The model `{model}` does not exist.")
        if srv.api == "ollama" and body.get("think") not in (None, False) and model not in srv.thinking_models:
            return self._error(400, f'"{model}" does not support thinking')
        if n_attempt <= srv.fail_first_per_prompt or (srv.fail_after is not None and n_total > srv.fail_after):
            return self._error(500, "simulated overload")
        content, thinking = answer_for(prompt), None
        if srv.think:
            content = "<think>\n\n</think>\n\n" + content
        if model in srv.thinking_models and body.get("think", True) is not False:
            thinking = THINKING                 # the thinking comes first and uses the budget
            if _max_tokens(body) <= srv.think_tokens:
                content = ""
        if srv.api == "ollama":
            message = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            self._send(200, {"model": model, "created_at": "2024-01-01T00:00:00Z", "message": message,
                             "done_reason": "stop" if content else "length", "done": True, "eval_count": 7})
        else:
            self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": content}}]})


@pytest.fixture
def teacher_factory():
    servers = []

    def start(api: str = "ollama", **kw) -> FakeTeacher:
        srv = FakeTeacher(api, **kw)
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((srv, thread))
        return srv

    try:
        yield start
    finally:
        for srv, thread in servers:
            srv.shutdown()
            srv.server_close()
            thread.join(timeout=5)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_samples(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def prompts_of(samples: list[dict]) -> list[str]:
    return [s["conversations"][0]["content"] for s in samples]


def run_main(*args: str) -> int:
    return distill.main(["--backoff", "0.01", "--timeout", "5", *args])


# ---------------------------------------------------------------------------------------------
# generation over both protocols


def test_ollama_generates_sft_jsonl(tmp_path, teacher_factory, capsys):
    srv = teacher_factory("ollama", think=True)
    out = tmp_path / "data" / "distill.jsonl"

    code = run_main("--url", srv.url, "--out", str(out), "--total", "10", "--workers", "3",
                    "--max-tokens", "64", "--temperature", "0.2")

    assert code == 0
    assert srv.bad == []
    samples = read_samples(out)
    assert len(samples) == 10
    prompts = prompts_of(samples)
    assert sorted(prompts) == sorted(builtin_prompts(10, seed=0))  # 3 workers: any order
    for s in samples:
        user, assistant = s["conversations"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        # the empty <think></think> block was stripped, the answer kept
        assert assistant["content"] == answer_for(user["content"])
    real = [r for r in srv.requests if r["options"]["num_predict"] != 1]
    assert len(real) == 10
    assert all(r["model"] == "qwen3:0.6b" and r["stream"] is False for r in real)
    assert all(r["options"] == {"temperature": 0.2, "num_predict": 64} for r in real)
    err = capsys.readouterr().err
    assert "[distill] 10/10 samples" in err and "failures=0" in err


def test_openai_generates_with_system_prompt(tmp_path, teacher_factory, monkeypatch):
    srv = teacher_factory("openai", models=("tiny-teacher",))
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("TEACHER_API", "openai")
    monkeypatch.setenv("TEACHER_URL", srv.url + "/v1")          # a /v1 base URL is accepted
    monkeypatch.setenv("OLLAMA_URL", f"http://127.0.0.1:{closed_port()}")  # TEACHER_URL wins
    monkeypatch.setenv("OLLAMA_MODEL", "not-this-one")
    monkeypatch.setenv("TOTAL_SAMPLES", "5")

    code = run_main("--model", "tiny-teacher", "--out", str(out), "--system", "Be brief.")

    assert code == 0
    assert srv.bad == []
    samples = read_samples(out)
    assert len(samples) == 5
    for s in samples:
        system, user, assistant = s["conversations"]
        assert system == {"role": "system", "content": "Be brief."}
        assert assistant["content"] == answer_for(user["content"])
    assert {r["model"] for r in srv.requests} == {"tiny-teacher"}      # flag beat OLLAMA_MODEL
    assert all(r["messages"][0] == {"role": "system", "content": "Be brief."} for r in srv.requests)


def test_prompts_file_jsonl_and_exhaustion(tmp_path, teacher_factory, capsys):
    srv = teacher_factory("ollama")
    pf = tmp_path / "prompts.jsonl"
    pf.write_text('{"prompt": "What is 2+2?"}\n\n{"prompt": "1+1 等于几？"}\n{"prompt": "What is 2+2?"}\n',
                  encoding="utf-8")
    out = tmp_path / "out.jsonl"

    code = run_main("--url", srv.url, "--out", str(out), "--prompts-file", str(pf), "--total", "5")

    assert code == 0
    assert sorted(prompts_of(read_samples(out))) == sorted(["What is 2+2?", "1+1 等于几？"])
    assert "1+1 等于几？" in out.read_text(encoding="utf-8")  # UTF-8, not \\u escapes
    assert "prompts exhausted" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# resume, retries, failures


def test_resume_after_partial_run_has_no_duplicates(tmp_path, teacher_factory):
    srv = teacher_factory("ollama")
    out = tmp_path / "out.jsonl"
    assert run_main("--url", srv.url, "--out", str(out), "--total", "6") == 0
    first = out.read_bytes()
    assert len(read_samples(out)) == 6
    with out.open("ab") as f:  # a run killed mid-line
        f.write(b'{"conversations": [{"role": "user", "content": "What is')
    srv.requests.clear()

    assert run_main("--url", srv.url, "--out", str(out), "--total", "12", "--workers", "4") == 0

    data = out.read_bytes()
    assert data.startswith(first)                      # earlier lines untouched
    samples = read_samples(out)
    prompts = prompts_of(samples)
    assert len(samples) == 12 and len(set(prompts)) == 12
    assert len(srv.chat_prompts()) == 6                 # only the missing ones were asked
    assert set(srv.chat_prompts()).isdisjoint(prompts_of(samples[:6]))


def test_complete_last_line_without_newline_is_kept(tmp_path, teacher_factory):
    srv = teacher_factory("ollama")
    out = tmp_path / "out.jsonl"
    line = json.dumps({"conversations": [{"role": "user", "content": "kept?"},
                                         {"role": "assistant", "content": "yes"}]})
    out.write_text(line, encoding="utf-8")

    assert run_main("--url", srv.url, "--out", str(out), "--total", "3") == 0

    samples = read_samples(out)
    assert len(samples) == 3 and prompts_of(samples)[0] == "kept?"
    assert len(srv.chat_prompts()) == 2


def test_retries_recover_from_500s(tmp_path, teacher_factory):
    srv = teacher_factory("ollama", fail_first_per_prompt=2)
    out = tmp_path / "out.jsonl"

    code = run_main("--url", srv.url, "--out", str(out), "--total", "4", "--retries", "3")

    assert code == 0
    prompts = prompts_of(read_samples(out))
    assert len(prompts) == 4
    assert all(srv.attempts[p] == 3 for p in prompts)   # two 500s, then the answer


def test_everything_failing_exits_1_with_last_error(tmp_path, teacher_factory, capsys):
    srv = teacher_factory("ollama", fail_after=1)       # preflight passes, then only 500s
    out = tmp_path / "out.jsonl"

    code = run_main("--url", srv.url, "--out", str(out), "--total", "50", "--retries", "1",
                    "--workers", "2")

    assert code == 1
    assert out.read_bytes() == b""
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("[error] teacher keeps failing") and "HTTP 500" in err[-1]
    assert sum(line.startswith("[warn] prompt skipped") for line in err) == 10
    assert "(after 2 tries)" in err[-1]
    assert len(srv.requests) < 30                       # gave up, did not walk all 50 prompts


# ---------------------------------------------------------------------------------------------
# the teacher is missing


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_unreachable_teacher_is_one_line_and_no_file(tmp_path, capsys, api):
    url = f"http://127.0.0.1:{closed_port()}"
    out = tmp_path / "out.jsonl"

    code = run_main("--api", api, "--url", url, "--out", str(out), "--total", "4")

    assert code == 3
    assert not out.exists()
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert url in lines[0] and api in lines[0] and "Traceback" not in captured.err
    if api == "ollama":
        assert "ollama serve" in lines[0] and "ollama pull qwen3:0.6b" in lines[0]


def test_missing_model_is_one_line(tmp_path, teacher_factory, capsys):
    srv = teacher_factory("ollama")
    out = tmp_path / "out.jsonl"

    code = run_main("--url", srv.url, "--model", "nope:1b", "--out", str(out), "--total", "4")

    assert code == 3
    assert not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "ollama pull nope:1b" in lines[0]
    assert len(srv.requests) == 1                       # a 404 is not retried


def test_wrong_protocol_is_one_line(tmp_path, teacher_factory, capsys):
    srv = teacher_factory("openai")
    out = tmp_path / "out.jsonl"

    assert run_main("--api", "ollama", "--url", srv.url, "--out", str(out), "--total", "2") == 3

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "/api/chat" in lines[0] and "try --api openai" in lines[0]
    assert not out.exists()
    assert srv.bad[0] == "path '/api/chat' != '/v1/chat/completions'"


def test_second_writer_is_refused(tmp_path, teacher_factory, capsys):
    srv = teacher_factory("ollama")
    out = tmp_path / "out.jsonl"
    with SampleFile(out):                       # another run holds the file
        code = run_main("--url", srv.url, "--out", str(out), "--total", "2")
    assert code == 2
    assert "another run is writing" in capsys.readouterr().err
    assert out.read_bytes() == b""


# ---------------------------------------------------------------------------------------------
# cold / total modes


def test_cold_then_total(tmp_path, teacher_factory, monkeypatch, capsys):
    srv = teacher_factory("ollama")
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("OLLAMA_URL", srv.url)
    monkeypatch.setenv("COLD_SAMPLES", "4")
    monkeypatch.setenv("TOTAL_SAMPLES", "9")
    monkeypatch.setenv("GEN_WORKERS", "3")

    assert run_main("--out", str(out), "--until", "cold") == 0
    assert len(read_samples(out)) == 4                  # exactly cold, no overshoot
    assert "ready: 4 samples" in capsys.readouterr().err

    n = len(srv.requests)
    monkeypatch.setenv("OLLAMA_URL", f"http://127.0.0.1:{closed_port()}")
    assert run_main("--out", str(out), "--until", "cold") == 0   # already ready: no teacher needed
    assert len(srv.requests) == n

    monkeypatch.setenv("OLLAMA_URL", srv.url)
    assert run_main("--out", str(out), "--until", "total") == 0
    prompts = prompts_of(read_samples(out))
    assert len(prompts) == 9 and len(set(prompts)) == 9
    assert set(prompts) == set(builtin_prompts(9, seed=0))


# ---------------------------------------------------------------------------------------------
# the teacher's thinking switch (TEACHER_THINK)


def test_ollama_asks_a_thinking_teacher_not_to_think_by_default(tmp_path, teacher_factory):
    """qwen3 thinks unless told not to; its thinking would eat a 64-token answer budget."""
    srv = teacher_factory("ollama", models=(), thinking_models=("qwen3:0.6b",))
    out = tmp_path / "out.jsonl"

    assert run_main("--url", srv.url, "--out", str(out), "--total", "4", "--max-tokens", "64") == 0

    assert srv.bad == []
    assert srv.requests and all(r["think"] is False for r in srv.requests)
    samples = read_samples(out)
    assert len(samples) == 4
    assert all(s["conversations"][1]["content"] == answer_for(s["conversations"][0]["content"]) for s in samples)


def test_think_not_sent_lets_a_thinking_teacher_spend_the_budget(tmp_path, teacher_factory, monkeypatch, capsys):
    """TEACHER_THINK=default sends nothing: the server's default, which is what went wrong before."""
    srv = teacher_factory("ollama", models=(), thinking_models=("qwen3:0.6b",))
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("TEACHER_THINK", "default")

    code = run_main("--url", srv.url, "--out", str(out), "--total", "4", "--max-tokens", "64", "--retries", "0")

    assert code == 1
    assert srv.bad == [] and all("think" not in r for r in srv.requests)
    assert "empty answer" in capsys.readouterr().err
    assert out.read_bytes() == b""


@pytest.mark.parametrize("value,sent", [("1", True), ("on", True), ("high", "high"), ("0", False)])
def test_teacher_think_is_sent_as_ollamas_think_field(tmp_path, teacher_factory, monkeypatch, value, sent):
    srv = teacher_factory("ollama", models=(), thinking_models=("qwen3:0.6b",))
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("TEACHER_THINK", value)

    assert run_main("--url", srv.url, "--out", str(out), "--total", "2", "--think", "keep") == 0

    assert srv.bad == [] and {repr(r["think"]) for r in srv.requests} == {repr(sent)}
    for sample in read_samples(out):
        user, assistant = sample["conversations"]
        want = answer_for(user["content"])
        # --think keep: the server's separate thinking field is kept in front of the answer
        assert assistant["content"] == (f"<think>\n{THINKING}\n</think>\n\n{want}" if sent else want)


def test_thinking_asked_of_a_model_without_it_is_one_line(tmp_path, teacher_factory, capsys):
    srv = teacher_factory("ollama", models=("llama3.2:1b",))
    out = tmp_path / "out.jsonl"

    code = run_main("--url", srv.url, "--model", "llama3.2:1b", "--teacher-think", "1", "--out", str(out))

    assert code == 3 and not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "does not support thinking" in lines[0] and "HTTP 400" in lines[0]
    assert srv.requests[0]["think"] is True


@pytest.mark.parametrize("value,fields", [
    (None, {}),                                                    # openai default: nothing sent
    ("0", {"chat_template_kwargs": {"enable_thinking": False}}),
    ("yes", {"chat_template_kwargs": {"enable_thinking": True}}),
    ("low", {"reasoning_effort": "low"}),
])
def test_teacher_think_over_the_openai_api(tmp_path, teacher_factory, monkeypatch, value, fields):
    srv = teacher_factory("openai", models=("tiny-teacher",))
    if value is not None:
        monkeypatch.setenv("TEACHER_THINK", value)

    code = run_main("--api", "openai", "--url", srv.url, "--model", "tiny-teacher",
                    "--out", str(tmp_path / "out.jsonl"), "--total", "2")

    assert code == 0 and srv.bad == []
    extra = [{k: r[k] for k in ("chat_template_kwargs", "reasoning_effort") if k in r} for r in srv.requests]
    assert extra == [fields] * len(srv.requests)


# ---------------------------------------------------------------------------------------------
# the API key (TEACHER_API_KEY)


def distill_process(*args: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """The command in a real child process: everything it prints or logs is captured."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "mlx_train.distill", "--backoff", "0.01", "--timeout", "5", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_api_key_is_sent_as_bearer_and_never_shown(tmp_path, teacher_factory, api):
    srv = teacher_factory(api, api_key=SECRET)
    out = tmp_path / "out.jsonl"

    result = distill_process("--api", api, "--url", srv.url, "--out", str(out), "--total", "3",
                             env_extra={"TEACHER_API_KEY": f"  {SECRET}\n"})

    assert result.returncode == 0, result.stderr
    assert srv.bad == [] and len(read_samples(out)) == 3
    assert srv.auth and set(srv.auth) == {f"Bearer {SECRET}"}
    assert SECRET not in result.stdout + result.stderr
    assert SECRET not in out.read_text(encoding="utf-8")


@pytest.mark.parametrize("key,hint", [("sk-wrong-" + SECRET, "is TEACHER_API_KEY right?"),
                                      (None, "set TEACHER_API_KEY")])
def test_refused_api_key_is_one_line_without_the_key(tmp_path, teacher_factory, key, hint):
    srv = teacher_factory("openai", api_key=SECRET)
    out = tmp_path / "out.jsonl"

    result = distill_process("--api", "openai", "--url", srv.url, "--out", str(out),
                             env_extra={"TEACHER_API_KEY": key} if key else {})

    assert result.returncode == 3 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HTTP 401" in lines[0] and hint in lines[0], lines
    if key:  # the server echoed the key it got: the message shows it masked
        assert "Bearer ***" in lines[0]
        assert key not in result.stdout + result.stderr and SECRET not in result.stdout + result.stderr


def test_api_key_never_shown_when_every_request_fails(tmp_path, teacher_factory):
    """Failures after the preflight: each skipped prompt's line and the final error."""
    srv = teacher_factory("ollama", api_key=SECRET, fail_after=1)
    out = tmp_path / "out.jsonl"

    result = distill_process("--url", srv.url, "--out", str(out), "--total", "20", "--retries", "1",
                             env_extra={"TEACHER_API_KEY": SECRET})

    assert result.returncode == 1
    err = result.stderr
    assert err.count("[warn] prompt skipped") == 10 and "Authorization: Bearer ***" in err
    assert SECRET not in result.stdout + err


def test_api_key_with_a_space_is_refused_without_showing_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-half key")
    code = distill.main(["--out", str(tmp_path / "o.jsonl"), "--url", f"http://127.0.0.1:{closed_port()}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TEACHER_API_KEY" in err and "half" not in err


def test_api_key_does_not_follow_a_redirect(teacher_factory):
    """A redirect (to another host, say) gets no key: the header is an unredirected one."""
    target = teacher_factory("openai", models=("tiny-teacher",))

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target.url + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

    redirect = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=redirect.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        teacher = Teacher(api="openai", url=f"http://127.0.0.1:{redirect.server_address[1]}", model="x",
                          timeout=5, api_key=SECRET)
        assert teacher.served_models() == ["tiny-teacher"]
    finally:
        redirect.shutdown()
        redirect.server_close()
        thread.join(timeout=5)
    assert target.auth == [None]
    assert SECRET not in repr(teacher)
    assert SECRET not in repr(distill.resolve_config(["--out", "o.jsonl"], {"TEACHER_API_KEY": SECRET}))


def test_plain_http_to_another_machine_is_flagged():
    def teacher(url: str, key: str | None = SECRET) -> Teacher:
        return Teacher(api="openai", url=url, model="m", api_key=key)

    assert teacher("http://teacher.example:8000").key_in_clear
    assert not teacher("https://teacher.example").key_in_clear
    assert not teacher("http://127.0.0.1:8080").key_in_clear and not teacher("http://localhost:1").key_in_clear
    assert not teacher("http://teacher.example:8000", None).key_in_clear


# ---------------------------------------------------------------------------------------------
# a model name the server doesn't serve


def test_wrong_model_on_an_openai_server_lists_the_served_ones(tmp_path, teacher_factory, capsys):
    """vLLM's answer to a wrong name is a 404: not a reason to suggest --api ollama."""
    srv = teacher_factory("openai", models=("tiny-teacher", "other-model"))
    out = tmp_path / "out.jsonl"

    code = run_main("--api", "openai", "--url", srv.url + "/v1", "--model", "tiny-techer", "--out", str(out))

    assert code == 3 and not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "'tiny-techer' is not served" in lines[0] and "other-model, tiny-teacher" in lines[0]
    assert "--api ollama" not in lines[0] and "OLLAMA_MODEL" in lines[0]
    assert len(srv.requests) == 1                     # a 404 is not retried


def test_wrong_model_on_ollama_lists_the_pulled_ones(tmp_path, teacher_factory, capsys):
    srv = teacher_factory("ollama", models=("qwen3:0.6b", "llama3.2:1b"))

    code = run_main("--url", srv.url, "--model", "qwen3:8b", "--out", str(tmp_path / "out.jsonl"))

    assert code == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "'qwen3:8b' is not served" in lines[0] and "llama3.2:1b, qwen3:0.6b" in lines[0]
    assert "ollama pull qwen3:8b" in lines[0]


def test_wrong_model_on_a_server_without_a_model_list_keeps_the_servers_words(tmp_path, teacher_factory, capsys):
    srv = teacher_factory("openai", models=("tiny-teacher",), lists_models=False)

    code = run_main("--api", "openai", "--url", srv.url, "--model", "nope", "--out", str(tmp_path / "out.jsonl"))

    assert code == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "The model `nope` does not exist." in lines[0]


def test_ollama_names_without_a_tag_mean_latest():
    assert _same_model("ollama", "qwen3", "qwen3:latest")
    assert _same_model("ollama", "library/qwen3:latest", "library/qwen3")
    assert not _same_model("ollama", "qwen3", "qwen3:0.6b")
    assert not _same_model("openai", "qwen3", "qwen3:latest")


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("env,args,needle", [
    ({"TOTAL_SAMPLES": "abc"}, [], "TOTAL_SAMPLES='abc'"),
    ({"COLD_SAMPLES": "10", "TOTAL_SAMPLES": "5"}, [], "COLD_SAMPLES=10 is larger than TOTAL_SAMPLES=5"),
    ({}, ["--cold", "7", "--total", "3"], "--cold=7"),
    ({"PROMPTS_FILE": "/nonexistent/prompts.txt"}, [], "/nonexistent/prompts.txt"),
    ({}, ["--api", "grpc"], "--api='grpc'"),
    ({"TEACHER_API": "grpc"}, [], "TEACHER_API='grpc'"),
    ({"GEN_WORKERS": "0"}, [], "GEN_WORKERS"),
    ({}, ["--until", "soon"], "--until"),
    ({}, ["--bogus-flag"], "--bogus-flag"),
    ({"TEACHER_THINK": "maybe"}, [], "TEACHER_THINK='maybe'"),
    ({}, ["--teacher-think", "2"], "--teacher-think='2'"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, env, args, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out.jsonl"

    code = distill.main(["--out", str(out), "--url", f"http://127.0.0.1:{closed_port()}", *args])

    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert "Traceback" not in captured.err and not out.exists()


def test_bad_prompts_file_line(tmp_path, capsys):
    pf = tmp_path / "p.jsonl"
    pf.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n', encoding="utf-8")
    code = distill.main(["--out", str(tmp_path / "o.jsonl"), "--prompts-file", str(pf)])
    assert code == 2
    assert f"{pf}:2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# signals (a real child process)


@pytest.mark.parametrize("sig,want", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_cleanly(tmp_path, teacher_factory, sig, want):
    srv = teacher_factory("ollama", delay=0.15)
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_train.distill", "--url", srv.url, "--out", str(out),
         "--total", "500", "--workers", "4", "--timeout", "5"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 3):
            time.sleep(0.05)
        assert out.exists() and out.read_bytes().count(b"\n") >= 3
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == want, err.decode()
    assert b"Traceback" not in err
    samples = read_samples(out)                         # whole lines only
    assert 3 <= len(samples) < 500
    assert len(set(prompts_of(samples))) == len(samples)


# ---------------------------------------------------------------------------------------------
# prompts


def test_builtin_prompts_are_deterministic_distinct_and_mixed():
    a, b = builtin_prompts(3000, seed=7), builtin_prompts(3000, seed=7)
    assert a == b and len(set(a)) == 3000
    assert builtin_prompts(50, seed=8) != a[:50]
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in p) for p in a)
    assert 0.2 * len(a) < chinese < 0.6 * len(a)
    it = iter_builtin_prompts(seed=7)
    assert [next(it) for _ in range(10)] == a[:10]


def test_load_prompts_file_plain_lines(tmp_path):
    pf = tmp_path / "p.txt"
    pf.write_text("first question\n\n  second question  \nfirst question\n", encoding="utf-8")
    assert load_prompts_file(pf) == ["first question", "second question"]
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match="no prompts"):
        load_prompts_file(tmp_path / "empty.txt")


@pytest.mark.parametrize("mode,content,thinking,want", [
    ("strip-empty", "<think>\n\n</think>\n\nHello", None, "Hello"),
    ("strip-empty", "<think>why</think>Hello", None, "<think>why</think>Hello"),
    ("strip", "<think>why</think>\nHello", None, "Hello"),
    ("strip", "<think>never finished", None, ""),
    ("keep", "Hello", "because", "<think>\nbecause\n</think>\n\nHello"),
])
def test_think_handling(mode, content, thinking, want):
    assert _clean_answer(content, thinking, mode) == want
