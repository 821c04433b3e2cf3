"""What every fake HTTP server shares: a ThreadingHTTPServer on 127.0.0.1 and a free port, in a daemon
thread, that hands each request to the fake and writes its answer back.

A fake subclasses `FakeServer` and implements `serve(method, target, headers, raw) -> (status, headers,
body bytes)`: `target` is the request line's path with its query, `headers` have lowercase names, `raw`
is the body as sent. A bug in a fake answers 500 with the reason, so the test shows it instead of
hanging. `with Fake(...) as fake:` (or `start()` / `stop()`) runs it; `stop()` also sets `stopping`,
which a fake that sleeps on purpose waits on, so that no request outlives the test.

Real sockets on purpose: the LangSmith and Langfuse SDKs, the openai client and boto3 are exercised
through their own HTTP stacks.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = tuple[int, dict[str, str], bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_answer(code: int, obj: object, headers: dict[str, str] | None = None) -> Answer:
    return code, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real services
    disable_nagle_algorithm = True  # headers and body go out as two writes: avoid 40 ms delayed-ACK stalls
    fake: FakeServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            code, out, data = self.fake.serve(self.command, self.path, headers, raw)
        except Exception as e:  # a bug in the fake: answer 500 with the reason, do not hang
            code, out, data = json_answer(500, {"error": f"{self.fake.name} error: {e!r}"})
        try:
            self.send_response(code)
            for k, v in out.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


class FakeServer:
    name = "fake"
    prefix = ""  # the base URL's path, e.g. "/v1"
    handler: type[BaseHTTPRequestHandler] = _Handler  # a fake that speaks raw HTTP brings its own

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        raise NotImplementedError

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.prefix}"

    def start(self):
        handler = type(f"{type(self).__name__}Handler", (self.handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # requests sleeping on purpose end now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
