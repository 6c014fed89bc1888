"""The teacher model over HTTP: Ollama's POST /api/chat or an OpenAI-compatible POST
/v1/chat/completions. `Teacher` builds the request, posts it and parses the answer (applying the
--think mode); every failure becomes a `TeacherError` whose `kind` says what went wrong and
whether a retry can help, and `_with_retries` retries those with exponential backoff and jitter.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import random
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

__all__ = ["APIS", "Teacher", "TeacherError", "teacher_hint"]

APIS = ("ollama", "openai")
BACKOFF_CAP = 30.0
PREFLIGHT_PROMPT = "Hi"
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>\s*", re.DOTALL)
_EMPTY_THINK_BLOCK = re.compile(r"<think>\s*</think>\s*")
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


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
