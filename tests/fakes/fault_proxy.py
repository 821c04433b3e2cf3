"""A reverse proxy that injects storage faults between a client and an S3 server (moto), for tests.

Every request is forwarded as received (method, path, headers including Host, body), unless a rule of the
fault plan matches it first. Point boto3 at `proxy.url`: SigV4 signs the proxy's host, and the Host header
reaches moto unchanged (moto does not verify signatures by default anyway).

    with FaultProxy(moto_endpoint) as proxy:
        proxy.add("error", method="PUT", times=2)                 # the next 2 PUTs answer 503
        proxy.add("error", method="PUT", path="manifest.json")    # every manifest PUT answers 503
        proxy.add("pass", path="/adapter/", delay=2.0)            # slow: wait 2 s, then forward
        proxy.add("drop", method="PUT", path="aliases.json", times=1, landed=True)   # the write lands, the
                                                                  # answer is lost (connection closed)
        proxy.add("hang", times=1)                                # read the request, never answer
        proxy.add("error")                                        # fail everything
        proxy.seen("PUT", "manifest.json")                        # what reached the proxy, with times

Kinds: "pass" (forward; with `delay`, a slow server), "error" (an S3-shaped XML error with `status` and
`code`), "drop" (close the connection without answering), "reset" (the same with a TCP RST), "hang" (accept,
never answer, until the client gives up or the proxy stops). `landed=True` forwards the request upstream
before the fault, so the write happens and only its answer fails. `delay` waits before anything else:
with "pass" the request is forwarded after the wait (a server slow to apply it, which may apply it after
the client gave up). The first matching rule with uses left applies; `times=None` never runs out.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from fakes.base import FakeServer

KINDS = ("pass", "error", "drop", "reset", "hang")
_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "expect"}
_HANG_LIMIT = 120.0  # a hung request is released after this long even if nobody stops the proxy


@dataclass
class Rule:
    kind: str
    method: str | None = None
    path: str | None = None
    times: int | None = None
    status: int = 503
    code: str = "ServiceUnavailable"
    delay: float = 0.0
    landed: bool = False
    used: int = 0

    def matches(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method == method) and (self.path is None or self.path in path)
                and (self.times is None or self.used < self.times))


@dataclass
class Seen:
    at: float  # time.monotonic() when the request was read
    method: str
    path: str
    outcome: str  # the rule's kind, or "pass"
    status: int | None = None  # what the client was answered (None: no answer)
    landed: bool = False  # whether the request reached the upstream server


@dataclass
class _State:
    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    log: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real S3 endpoint; boto3 pools connections
    fake: FaultProxy

    @property
    def state(self) -> _State:
        return self.fake.state

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: tests read `seen()` instead
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        host, port = self.state.upstream
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            for name, value in self.headers.items():  # as received, Host included, in order
                if name.lower() not in _HOP and not (chunked and name.lower() == "content-length"):
                    conn.putheader(name, value)
            if chunked:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response_only(status, reason)
        length = None
        for name, value in headers:
            low = name.lower()
            if low == "content-length":
                length = value
            elif low not in _HOP:
                self.send_header(name, value)
        # a HEAD answer keeps the object's length and has no body
        self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _error(self, rule: Rule) -> None:
        data = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{rule.code}</Code><Message>injected by the fault proxy</Message>"
                f"<Resource>{escape(self.path)}</Resource><RequestId>fault-proxy</RequestId></Error>").encode()
        self._answer(rule.status, http.client.responses.get(rule.status, "Error"),
                     [("Content-Type", "application/xml")], data)

    def _close(self, reset: bool) -> None:
        self.close_connection = True
        try:
            if reset:  # SO_LINGER 0: close() sends RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self) -> None:
        body = self._body()
        with self.state.lock:
            rule = next((r for r in self.state.rules if r.matches(self.command, self.path)), None)
            if rule is not None:
                rule.used += 1
            seen = Seen(time.monotonic(), self.command, self.path, rule.kind if rule else "pass")
            self.state.log.append(seen)
        if rule is not None and rule.delay:
            self.fake.stopping.wait(rule.delay)
        upstream = None
        if rule is None or rule.kind == "pass" or rule.landed:
            try:
                upstream = self._forward(body)
                seen.landed = True
            except OSError:
                self._close(reset=False)
                return
        kind = "pass" if rule is None else rule.kind
        try:
            if kind == "pass":
                seen.status = upstream[0]
                self._answer(*upstream)
            elif kind == "error":
                seen.status = rule.status
                self._error(rule)
            elif kind == "hang":
                self.fake.stopping.wait(_HANG_LIMIT)
                self._close(reset=False)
            else:
                self._close(reset=kind == "reset")
        except OSError:  # the client gave up first (a timeout): what a slow server meets too
            seen.status = None
            self._close(reset=False)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the connection was dropped on purpose


class FaultProxy(FakeServer):
    """A threaded reverse proxy on 127.0.0.1 in front of `upstream` (http://host:port); stopping it ends
    hung and delayed requests."""

    name = "fault-proxy"
    handler = _Handler

    def __init__(self, upstream: str):
        super().__init__()
        parts = urlsplit(upstream)
        self.state = _State((parts.hostname or "127.0.0.1", parts.port or 80))

    def add(self, kind: str, *, method: str | None = None, path: str | None = None, times: int | None = None,
            status: int = 503, code: str = "ServiceUnavailable", delay: float = 0.0, landed: bool = False) -> Rule:
        """Append a rule to the plan (see the module's docstring); returns it (`rule.used` counts its uses)."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {KINDS}")
        rule = Rule(kind, method.upper() if method else None, path, times, status, code, delay, landed)
        with self.state.lock:
            self.state.rules.append(rule)
        return rule

    def clear(self) -> None:
        """No faults from now on (requests already delayed or hung keep their rule)."""
        with self.state.lock:
            self.state.rules.clear()

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """Requests that reached the proxy, oldest first, optionally only one method's / path's."""
        with self.state.lock:
            return [s for s in self.state.log if (method is None or s.method == method.upper())
                    and (path is None or path in s.path)]

    def reset_log(self) -> None:
        with self.state.lock:
            self.state.log.clear()
