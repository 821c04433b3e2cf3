"""The one HTTP client for every outgoing call tuneloop makes itself: remote trainers, the LLM judge, the
serving admin. One retry policy, so a flaky network is handled the same way everywhere.

Retried, with exponential backoff from `backoff` seconds (a numeric ``Retry-After`` is honoured instead,
both capped at `max_backoff`): connect errors, timeouts, dropped connections, 408, 429 and 5xx. Not retried:
a 429 whose code is ``insufficient_quota`` (waiting adds no credit), any other 4xx (the request itself is
wrong), bad URLs and redirect loops: those raise what `refused` builds (the server's message in a
`TuneloopError`; subclasses word it as a `UserError` where the operator can fix it). When the attempts run
out, `TransientError`, which the task decorators may retry as a whole.

Idempotency (a retry must never apply a change twice):

- GET, HEAD, PUT, DELETE, and calls made with ``idempotent=True`` (the same effect when applied twice: a
  chat completion, "make green live", "set the canary to 10%") are retried on every failure above.
- With ``idempotency_keys=True`` every other call carries one ``Idempotency-Key`` across its retries, so a
  service that honours it (OpenAI, AutoTrain) creates one job even when only the answer to the first was
  lost; such calls are retried like idempotent ones.
- Any other call (a POST like "roll back", whose second application undoes the first) is retried only when
  the server surely did not act on it: the connection was never made, or it answered 408 or 429. When it
  was sent and its answer was lost (read timeout, dropped connection), it raises a non-transient
  `TuneloopError` saying the outcome is unknown; a 5xx raises what `refused` builds. Neither is replayed
  by the task decorators.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import httpx

from tuneloop.errors import TransientError, TuneloopError, UserError

_RETRY_STATUS = {408, 429}  # the server did not act on the request
_NETWORK = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_SAFE_METHODS = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}


def retry_delay(attempt: int, backoff: float, cap: float, response: httpx.Response | None = None) -> float:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After when it gives seconds,
    else exponential backoff; never negative, never above `cap`."""
    delay = backoff * (2 ** attempt)
    if response is not None:
        try:
            delay = float(response.headers.get("retry-after", "x"))
        except ValueError:
            pass
    return max(0.0, min(delay, cap))


def server_message(r: httpx.Response) -> tuple[str, str | None, str | None]:
    """(message, param, code) from an OpenAI-style ``{"error": {...}}`` or FastAPI ``{"detail": ...}`` body."""
    try:
        body = r.json()
    except ValueError:
        text = r.text.strip()
        return (text[:300] or r.reason_phrase), None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        e = body["error"]
        return str(e.get("message") or e.get("code") or r.reason_phrase), e.get("param"), e.get("code") or e.get("type")
    if isinstance(body, dict) and "detail" in body:
        return json.dumps(body["detail"]) if not isinstance(body["detail"], str) else body["detail"], None, None
    return json.dumps(body)[:300], None, None


def _describe(e: httpx.HTTPError) -> str:
    detail = f"({type(e).__name__}: {e or 'no detail'})"
    if isinstance(e, httpx.ConnectError):
        return f"the server is unreachable {detail}"
    return f"the request {'timed out' if isinstance(e, httpx.TimeoutException) else 'failed'} {detail}"


class HttpClient:
    """httpx with the retry policy above for one service (`service` names it in errors).

    Subclasses override `refused` (the error for an answer that is not retried) and `failed` (the error
    when no usable answer came) to word them for their service.
    """

    def __init__(self, base_url: str, service: str, *, headers: dict[str, str] | None = None,
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0,
                 idempotency_keys: bool = False, transport: httpx.BaseTransport | None = None):
        if not isinstance(base_url, str) or not re.match(r"https?://[^/\s]+", base_url):
            raise UserError(repr(base_url), f"is not an http(s) URL for {service}",
                            "pass the service's base URL, e.g. http://localhost:8000/v1 or https://api.openai.com/v1")
        if max_retries < 0 or timeout <= 0:
            raise UserError(f"max_retries={max_retries}, timeout={timeout}", "must be >= 0 and > 0",
                            "use e.g. max_retries=2, timeout=30")
        self.base_url, self.service = base_url.rstrip("/"), service
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.idempotency_keys = idempotency_keys
        self.has_credential = "Authorization" in (headers or {})
        self.http = httpx.Client(headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:  # never shows the credential
        return f"{type(self).__name__}({self.service!r}, {self.base_url!r})"

    def request(self, method: str, path: str, *, json_body: dict | None = None, params: dict | None = None,
                files: dict | None = None, data: dict | None = None, expect: tuple[int, ...] = (),
                dest: Path | None = None, max_bytes: int | None = None,
                idempotent: bool | None = None) -> httpx.Response:
        """Send with retries; return a 2xx answer (or one whose status is in `expect`).

        `idempotent`: whether applying the call twice does no harm (default: by method and idempotency
        keys, see the module's docstring). With `dest`, the body is streamed into that file (at most
        `max_bytes`) instead of memory.
        """
        url = f"{self.base_url}{path}"
        keyed = self.idempotency_keys and method != "GET"
        headers = {"Idempotency-Key": f"tuneloop-{uuid.uuid4().hex}"} if keyed else None
        if idempotent is None:
            idempotent = keyed or method in _SAFE_METHODS
        last, attempts = "no attempt made", self.max_retries + 1
        for attempt in range(attempts):
            r = None
            try:
                with self.http.stream(method, url, json=json_body, params=params, files=files, data=data,
                                      headers=headers) as r:
                    if r.status_code < 400 and dest is not None:
                        _save(r, dest, max_bytes, url)
                    else:
                        r.read()
            except _NETWORK as e:
                last = _describe(e)
                if not idempotent and not isinstance(e, _NOT_SENT):
                    raise self.failed(method, path, f"{last}; it was sent, so it may or may not have been applied "
                                      "and is not repeated (a second one could apply it twice). Fix: check the "
                                      "service's state, then call again if it was not applied",
                                      transient=False) from e
            except httpx.HTTPError as e:  # a bad URL, too many redirects: retrying will not help
                raise self.failed(method, path, _describe(e), transient=False) from e
            else:
                code = r.status_code
                if code < 400 or code in expect:
                    return r
                message, _, err_code = server_message(r)
                retry = code in _RETRY_STATUS or (code >= 500 and idempotent)
                if not retry or err_code == "insufficient_quota":
                    raise self.refused(r, method, path, json_body if json_body is not None else data)
                last = f"HTTP {code} {r.reason_phrase} ({message[:200]})"
            if attempt < self.max_retries:
                time.sleep(retry_delay(attempt, self.backoff, self.max_backoff, r))
        raise self.failed(method, path, f"{last}; gave up after {attempts} attempt{'s' if attempts > 1 else ''}",
                          transient=True)

    def json(self, method: str, path: str, **kw) -> dict:
        """`request`, and its answer's JSON body."""
        r = self.request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise TuneloopError(f"{self.service}: {method} {self.base_url}{path} answered HTTP {r.status_code} "
                                f"with non-JSON: {r.text[:120]!r}; is the base URL right?") from None

    def refused(self, r: httpx.Response, method: str, path: str, sent: dict | None) -> TuneloopError:
        """The error for an answer that is not retried (`sent`: the JSON or form body, to name a field)."""
        message, _, _ = server_message(r)
        return TuneloopError(f"{self.service}: {method} {self.base_url}{path} answered HTTP {r.status_code}: "
                             f"{message}")

    def failed(self, method: str, path: str, reason: str, *, transient: bool) -> TuneloopError:
        """The error when no usable answer came: `transient` when retries ran out."""
        error = TransientError if transient else TuneloopError
        return error(f"{self.service}: {method} {self.base_url}{path}: {reason}")


def _save(r: httpx.Response, dest: Path, max_bytes: int | None, url: str) -> None:
    n = 0
    with open(dest, "wb") as fh:
        for chunk in r.iter_bytes():
            n += len(chunk)
            if max_bytes is not None and n > max_bytes:
                raise TuneloopError(f"{url} sent more than {max_bytes:,} bytes; refusing the download "
                                    "(raise max_download_bytes if the adapter really is that large)")
            fh.write(chunk)
