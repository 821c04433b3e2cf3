"""What the fake training services share: a loopback HTTP server in a thread, bearer auth,
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Union
from urllib.parse import parse_qs, urlparse



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
Answer = tuple[int, dict[str, str], bytes]


def json_answer(code: int, obj: object) -> Answer:
    return code, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def error_answer(code: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 err_code: str | None = None) -> Answer:
    return json_answer(code, {"error": {"message": message, "type": kind, "param": param, "code": err_code}})


class FakeService:
    name = "fake-service"
    prefix = ""  # the base URL's path, e.g. "/v1"

    def __init__(self, token: str | None = None, delay_s: float = 0.0):
        self.token, self.delay_s = token, delay_s
        self.requests: list[dict] = []
        self.lock = threading.RLock()
        self._scripts: list[tuple[str, list[Scripted]]] = []
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None

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

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        url = urlparse(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = json.loads(raw) if raw and headers.get("content-type", "").startswith("application/json") else None
        except ValueError:
            body = None
        with self.lock:
            self.requests.append({"method": method, "path": url.path, "query": query, "headers": headers,
                                  "body": body, "raw": raw})
        if self.delay_s and self._stopping.wait(self.delay_s):
            return 503, {}, b""
        scripted = self._scripted(method, url.path)
        if isinstance(scripted, Slow) and self._stopping.wait(scripted.seconds):
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

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.prefix}"

    def start(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, method: str) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                code, out, data = fake.handle(method, self.path, headers, raw)
                try:
                    self.send_response(code)
                    for k, v in out.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def log_message(self, *args):  # keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=self.name, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
