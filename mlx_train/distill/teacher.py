"""The teacher model over HTTP: Ollama's POST /api/chat or an OpenAI-compatible POST
/v1/chat/completions. `Teacher` builds the request, posts it and parses the answer (applying the
--think mode); every failure becomes a `TeacherError` whose `kind` says what went wrong and
whether a retry can help, and `_with_retries` retries those with exponential backoff and jitter.

The request's thinking switch (`thinking`): Ollama takes a top-level `"think": false | true |
"low" | "medium" | "high"` (a thinking model thinks when it is absent, so it is sent as false by
default); OpenAI-compatible servers take `chat_template_kwargs.enable_thinking` (vLLM,
mlx_lm.server, SGLang) for on/off and `reasoning_effort` for a level. An API key goes out as
`Authorization: Bearer KEY`, never along a redirect, and is masked in every message.
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

__all__ = ["APIS", "THINK_LEVELS", "Teacher", "TeacherError", "teacher_hint"]

APIS = ("ollama", "openai")
THINK_LEVELS = ("low", "medium", "high")
BACKOFF_CAP = 30.0
PREFLIGHT_PROMPT = "Hi"
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>\s*", re.DOTALL)
_EMPTY_THINK_BLOCK = re.compile(r"<think>\s*</think>\s*")
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class TeacherError(Exception):
    """A failed teacher request.

    `kind`: unreachable (can't connect), connection (dropped mid-answer), timeout, http,
    model_missing, protocol (not the expected API or format), empty (nothing left to keep).
    `served`: for model_missing, the models the server lists (None when it lists none).
    """

    def __init__(self, message: str, *, kind: str, status: int | None = None,
                 served: list[str] | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.served = served

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


def _same_model(api: str, wanted: str, served: str) -> bool:
    """Ollama names without a tag mean ':latest' (`qwen3` is `qwen3:latest`)."""
    if api == "ollama":
        def tagged(name: str) -> str:
            return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
        return tagged(wanted) == tagged(served)
    return wanted == served


class Teacher:
    """One teacher endpoint: Ollama's POST /api/chat or OpenAI's POST /v1/chat/completions.

    `thinking`: the request's thinking switch (False, True, a level from THINK_LEVELS, or None
    to send nothing). `api_key`: sent as `Authorization: Bearer`, kept out of every message.
    """

    def __init__(self, *, api: str, url: str, model: str, timeout: float = 60.0,
                 max_tokens: int = 512, temperature: float = 0.7, system: str | None = None,
                 think: str = "strip-empty", thinking: bool | str | None = None,
                 api_key: str | None = None):
        if api not in APIS:
            raise ValueError(f"api={api!r} is not one of {APIS}")
        if isinstance(thinking, str) and thinking not in THINK_LEVELS:
            raise ValueError(f"thinking={thinking!r} is not a bool, None or one of {THINK_LEVELS}")
        self.api, self.url, self.model = api, url.rstrip("/"), model
        self.timeout, self.max_tokens, self.temperature = timeout, max_tokens, temperature
        self.system, self.think, self.thinking = system, think, thinking
        self._api_key = api_key or None
        if api == "ollama":
            self.endpoint = self.url + "/api/chat"
            self.models_endpoint = self.url + "/api/tags"
        else:
            base = self.url if self.url.endswith("/v1") else self.url + "/v1"
            self.endpoint = base + "/chat/completions"
            self.models_endpoint = base + "/models"
        host = urllib.parse.urlsplit(self.url).hostname or ""
        # a proxy from the environment must not swallow requests to a local teacher
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(host) else []
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def key_in_clear(self) -> bool:
        """True when an API key would cross the network unencrypted (http to another machine)."""
        parts = urllib.parse.urlsplit(self.url)
        return bool(self._api_key) and parts.scheme == "http" and not _is_loopback(parts.hostname or "")

    @property
    def where(self) -> str:
        return f"{self.api} API at {self.url}"

    def messages(self, prompt: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": prompt}]

    def __repr__(self) -> str:  # no key in a repr, a log line or a traceback's locals
        return f"Teacher(api={self.api!r}, url={self.url!r}, model={self.model!r})"

    def payload(self, prompt: str, *, max_tokens: int | None = None) -> dict:
        n = self.max_tokens if max_tokens is None else max_tokens
        if self.api == "ollama":
            body = {"model": self.model, "messages": self.messages(prompt), "stream": False,
                    "options": {"temperature": self.temperature, "num_predict": n}}
            if self.thinking is not None:
                body["think"] = self.thinking
            return body
        body = {"model": self.model, "messages": self.messages(prompt), "max_tokens": n,
                "temperature": self.temperature, "stream": False}
        if isinstance(self.thinking, bool):
            body["chat_template_kwargs"] = {"enable_thinking": self.thinking}
        elif self.thinking is not None:
            body["reasoning_effort"] = self.thinking
        return body

    def chat(self, prompt: str, *, max_tokens: int | None = None) -> str:
        """One request; return the cleaned answer or raise TeacherError."""
        body = self._post(self.payload(prompt, max_tokens=max_tokens))
        content, thinking = self._parse(body)
        return _clean_answer(content, thinking, self.think)

    def preflight(self, *, retries: int = 0, backoff: float = 0.5, rng: random.Random | None = None) -> None:
        """A 1-token chat: raise TeacherError unless the teacher answers in its protocol.

        Connection refused and 404 fail at once; timeouts and 5xx are retried like any request.
        When the server refuses the chat, its model list (GET /api/tags or /v1/models) tells a
        wrong model name (kind=model_missing, with `served`) from a wrong protocol.
        """
        def once() -> str:
            body = self._post(self.payload(PREFLIGHT_PROMPT, max_tokens=1))
            self._parse(body)  # an empty 1-token answer is fine; the shape is what we check
            return ""
        try:
            _with_retries(once, retries=retries, backoff=backoff, rng=rng or random.Random(0),
                          stop=threading.Event(), fail_fast=("unreachable",))
        except TeacherError as exc:
            if exc.kind not in ("http", "protocol", "model_missing") or exc.status in (401, 403):
                raise
            raise self._diagnose(exc) from None

    def served_models(self) -> list[str] | None:
        """The model names the server lists (Ollama GET /api/tags, OpenAI GET /v1/models), or
        None when it doesn't answer with such a list."""
        try:
            data = json.loads(self._request(self.models_endpoint))
            if self.api == "ollama":
                names = [m.get("name") or m["model"] for m in data["models"]]
            else:
                names = [m["id"] for m in data["data"]]
        except (TeacherError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            return None
        return [str(n) for n in names]

    def _diagnose(self, exc: TeacherError) -> TeacherError:
        """A refused chat: model_missing with the served list when the model isn't listed."""
        served = self.served_models()
        if served is None or any(_same_model(self.api, self.model, name) for name in served):
            return exc
        listed = ", ".join(served) if served else "none"
        return TeacherError(f"model {self.model!r} is not served by the {self.where}; it serves: {listed}",
                            kind="model_missing", status=exc.status, served=served)

    def mask(self, text: str) -> str:
        """text with the API key replaced by ***."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _error(self, message: str, **kw) -> TeacherError:
        return TeacherError(self.mask(message), **kw)

    def _request(self, url: str, payload: dict | None = None) -> bytes:
        """GET url, or POST payload as JSON; the body, or TeacherError (key masked)."""
        req = urllib.request.Request(url, method="GET" if payload is None else "POST",
                                     data=None if payload is None else json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
        if self._api_key:  # unredirected: a redirect to another host does not carry the key
            req.add_unredirected_header("Authorization", f"Bearer {self._api_key}")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            text = self.mask(_error_text(exc.read() or b""))
            if exc.code == 404 and "not found" in text.lower() and "model" in text.lower():
                raise self._error(f"model {self.model!r} not found on {self.where}: {text}",
                                  kind="model_missing", status=404) from None
            if exc.code in (404, 405):
                other = "openai" if self.api == "ollama" else "ollama"
                raise self._error(f"{url} answered HTTP {exc.code} ({text or exc.reason}): "
                                  f"not an {self.api} API here? try --api {other}",
                                  kind="protocol", status=exc.code) from None
            if exc.code in (401, 403):
                hint = "is TEACHER_API_KEY right?" if self._api_key else "set TEACHER_API_KEY"
                raise self._error(f"HTTP {exc.code} from {url}: {text or exc.reason} ({hint})",
                                  kind="http", status=exc.code) from None
            raise self._error(f"HTTP {exc.code} from {url}: {text or exc.reason}",
                              kind="http", status=exc.code) from None
        except (TimeoutError, socket.timeout):
            raise self._error(f"no answer from {url} within {self.timeout:g}s", kind="timeout") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise self._error(f"no answer from {url} within {self.timeout:g}s", kind="timeout") from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise self._error(f"cannot connect to {url}: {text}", kind="unreachable") from None
        except (OSError, http.client.HTTPException) as exc:  # dropped mid-response, ...
            raise self._error(f"connection to {url} failed: {exc!r}", kind="connection") from None

    def _post(self, payload: dict) -> bytes:
        return self._request(self.endpoint, payload)

    def _parse(self, body: bytes) -> tuple[str, str | None]:
        """(content, thinking) from a response body, or TeacherError(kind=protocol)."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = self._parse_ndjson(body)
        try:
            if self.api == "ollama":
                if "error" in data:
                    raise self._error(f"{self.where}: {data['error']}", kind="http", status=500)
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
            raise self._error(f"{self.endpoint} did not answer in the {self.api} format "
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
