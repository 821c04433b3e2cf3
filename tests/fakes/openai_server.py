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
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Union


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


class FakeOpenAI:
    def __init__(self, api_key: str | None = None, default: Reply = '{"score": 3, "reason": "default reply"}'):
        self.api_key = api_key
        self.default = default
        self.requests: list[dict] = []
        self._scripts: list[tuple[tuple[str, ...], list[Reply]]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None

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

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
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

    def _answer(self, reply: Reply, model: str) -> tuple[int, dict[str, str], bytes]:
        if isinstance(reply, Hang):
            if self._stopping.wait(reply.seconds):
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
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()

    # -- server -------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, ending in /v1 like a real OpenAI-compatible endpoint."""
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAI":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, out_headers, data = fake.handle(self.path, headers, raw)
                try:
                    self.send_response(status)
                    for k, v in out_headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def do_GET(self):
                status, out_headers, data = _error(404, f"fake openai does not serve GET {self.path}", "not_found")
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="fake-openai", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _text(body: dict | None) -> str:
    if not isinstance(body, dict):
        return ""
    parts = []
    for m in body.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


def _error(code: int, message: str, kind: str) -> tuple[int, dict[str, str], bytes]:
    body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return code, {"Content-Type": "application/json"}, json.dumps(body).encode()


@contextmanager
def fake_openai(api_key: str | None = None, **kw) -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=api_key, **kw).start()
    try:
        yield fake
    finally:
        fake.stop()
