"""What the fake training services share (beyond the HTTP plumbing of `fakes.base`): bearer auth,
request recording and scripted failures.

`fail_next("POST /v1/files", Fail(429, retry_after="0"), Slow(1.0))` makes the next matching
requests (``METHOD path`` against an fnmatch pattern) answer those replies in turn, before auth
and routing: `Fail` is an error with an OpenAI-style body, `Slow(s)` waits `s` seconds and then
answers normally. `delay_s` slows every request. Every request is recorded in `requests` as
{"method", "path", "query", "headers" (lowercase names), "body" (parsed JSON, or None), "raw"}.
"""

from __future__ import annotations

import fnmatch
import json
import threading
from dataclasses import dataclass
from typing import Union
from urllib.parse import parse_qs, urlparse

from fakes.base import Answer, FakeServer, json_answer

@dataclass(frozen=True)
class Fail:
    code: int
    message: str = "fake error"
    err_code: str | None = None  # the body's error.code, e.g. "insufficient_quota"
    retry_after: str | None = None


@dataclass(frozen=True)
class Slow:
    seconds: float


Scripted = Union[Fail, Slow]


def error_answer(code: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 err_code: str | None = None) -> Answer:
    return json_answer(code, {"error": {"message": message, "type": kind, "param": param, "code": err_code}})


class FakeService(FakeServer):
    name = "fake-service"

    def __init__(self, token: str | None = None, delay_s: float = 0.0):
        super().__init__()
        self.token, self.delay_s = token, delay_s
        self.requests: list[dict] = []
        self.lock = threading.RLock()
        self._scripts: list[tuple[str, list[Scripted]]] = []

    def fail_next(self, route: str, *replies: Scripted) -> None:
        with self.lock:
            self._scripts.append((route, list(replies)))

    def calls(self, route: str) -> list[dict]:
        """Recorded requests matching an fnmatch pattern like "GET /v1/fine_tuning/jobs/*"."""
        with self.lock:
            return [r for r in self.requests if fnmatch.fnmatchcase(f"{r['method']} {r['path']}", route)]

    def route(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes) -> Answer:
        raise NotImplementedError

    def _scripted(self, method: str, path: str) -> Scripted | None:
        with self.lock:
            for route, replies in self._scripts:
                if replies and fnmatch.fnmatchcase(f"{method} {path}", route):
                    return replies.pop(0)
        return None

    def serve(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        url = urlparse(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = json.loads(raw) if raw and headers.get("content-type", "").startswith("application/json") else None
        except ValueError:
            body = None
        with self.lock:
            self.requests.append({"method": method, "path": url.path, "query": query, "headers": headers,
                                  "body": body, "raw": raw})
        if self.delay_s and self.stopping.wait(self.delay_s):
            return 503, {}, b""
        scripted = self._scripted(method, url.path)
        if isinstance(scripted, Slow) and self.stopping.wait(scripted.seconds):
            return 503, {}, b""
        if isinstance(scripted, Fail):
            code, out, data = error_answer(scripted.code, scripted.message, "fake_error", err_code=scripted.err_code)
            if scripted.retry_after is not None:
                out["Retry-After"] = scripted.retry_after
            return code, out, data
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            return error_answer(401, "Incorrect API key provided: sk-wr**ng.", "invalid_request_error",
                                err_code="invalid_api_key")
        if not url.path.startswith(self.prefix):
            return error_answer(404, f"{self.name} does not serve {url.path}", err_code="not_found")
        with self.lock:
            return self.route(method, url.path[len(self.prefix):], query, headers, raw)
