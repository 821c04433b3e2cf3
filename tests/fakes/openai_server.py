"""A local stand-in for an OpenAI-compatible `POST /v1/chat/completions` endpoint.

Replies are scripted by the request content: `script(marker, *replies)` answers any request
whose message text contains `marker` (a string, or a tuple of strings that must all appear)
with `replies` in order, the last one repeating. The first matching script wins, in the order
they were added; unmatched requests get `default`. A reply is one of:

- a str                   -> 200 with that text as choices[0].message.content
- `Status(code, ...)`     -> that HTTP status with an OpenAI-style error body (optional Retry-After)
- `Hang(seconds, then)`   -> wait (past the client's timeout), then answer `then`
- `Raw(body, status)`     -> exactly these bytes (garbage, non-JSON, wrong shapes)

With `api_key` set, requests without `Authorization: Bearer <api_key>` get 401. Every request
is recorded in `requests` as {"path", "headers" (lowercase names), "body" (parsed JSON or None)}.

    with fake_openai(api_key="sk-test") as ai:
        ai.script("[[flaky]]", Status(500), Status(500), '{"score": 4, "reason": "ok"}')
        JudgeClient(ai.url, "judge-model", api_key="sk-test")
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Union

from fakes.base import Answer, FakeServer, json_answer
from fakes.job_service import error_answer


@dataclass(frozen=True)
class Status:
    code: int
    message: str = "fake error"
    retry_after: str | None = None


@dataclass(frozen=True)
class Hang:
    seconds: float
    then: "Reply" = '{"score": 5, "reason": "late"}'


@dataclass(frozen=True)
class Raw:
    body: bytes | str
    status: int = 200
    content_type: str = "application/json"


Reply = Union[str, Status, Hang, Raw]


class FakeOpenAI(FakeServer):
    name = "fake-openai"
    prefix = "/v1"  # the base URL ends in /v1 like a real OpenAI-compatible endpoint

    def __init__(self, api_key: str | None = None, default: Reply = '{"score": 3, "reason": "default reply"}'):
        super().__init__()
        self.api_key = api_key
        self.default = default
        self.requests: list[dict] = []
        self._scripts: list[tuple[tuple[str, ...], list[Reply]]] = []
        self._lock = threading.Lock()

    def script(self, marker: str | tuple[str, ...], *replies: Reply) -> None:
        assert replies, "give at least one reply"
        markers = (marker,) if isinstance(marker, str) else tuple(marker)
        with self._lock:
            self._scripts.append((markers, list(replies)))

    def calls(self, marker: str) -> list[dict]:
        """Recorded requests whose message text contains `marker`."""
        with self._lock:
            return [r for r in self.requests if marker in _text(r["body"])]

    def _pick(self, body: dict | None) -> Reply:
        text = _text(body)
        with self._lock:
            for markers, replies in self._scripts:
                if all(m in text for m in markers):
                    return replies.pop(0) if len(replies) > 1 else replies[0]
        return self.default

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> Answer:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body})
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        if path != "/v1/chat/completions":
            return _error(404, f"fake openai does not serve {path}", "not_found")
        if not isinstance(body, dict) or "model" not in body or not isinstance(body.get("messages"), list):
            return _error(400, "body must be JSON with 'model' and 'messages'", "invalid_request_error")
        return self._answer(self._pick(body), body["model"])

    def _answer(self, reply: Reply, model: str) -> Answer:
        if isinstance(reply, Hang):
            if self.stopping.wait(reply.seconds):
                return 503, {}, b""
            return self._answer(reply.then, model)
        if isinstance(reply, Status):
            status, headers, data = _error(reply.code, reply.message, "fake_error")
            if reply.retry_after is not None:
                headers["Retry-After"] = reply.retry_after
            return status, headers, data
        if isinstance(reply, Raw):
            data = reply.body.encode() if isinstance(reply.body, str) else reply.body
            return reply.status, {"Content-Type": reply.content_type}, data
        payload = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return json_answer(200, payload)

    def serve(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        if method != "POST":
            return _error(404, f"fake openai does not serve {method} {target}", "not_found")
        return self.handle(target, headers, raw)


def _text(body: dict | None) -> str:
    if not isinstance(body, dict):
        return ""
    parts = []
    for m in body.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


def _error(code: int, message: str, kind: str) -> Answer:
    return error_answer(code, message, kind, err_code=kind)


def fake_openai(api_key: str | None = None, **kw) -> FakeOpenAI:
    """A fake to run with `with`: started on 127.0.0.1 and a free port, stopped on exit."""
    return FakeOpenAI(api_key=api_key, **kw)
