"""The HTTP client the remote trainers share: bounded retries for transient failures, a clear
error for everything else.

- Retried with exponential backoff (a numeric ``Retry-After`` is honoured, both capped at
  `max_backoff`): connect/read errors, timeouts, 408, 429 and 5xx. When the attempts run out,
  `TransientError`, which the task decorators may retry as a whole.
- 401/403: `UserError` naming the credential and where it comes from. 429 with
  ``insufficient_quota``: `UserError` (waiting will not add credit). 400/404/413/422: `UserError`
  naming the field the service blamed (its ``error.param``), the value sent, and the fix.
- Every POST carries one ``Idempotency-Key`` across its retries, so a service that honours it
  does not create a second job when only the answer to the first was lost.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx

from tuneloop.errors import TransientError, TuneloopError, UserError
from tuneloop.runtime.http import retry_delay

_RETRY_STATUS = {408, 429}
_NETWORK = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_USER_STATUS = {400, 404, 413, 422}


def service_error(r: httpx.Response) -> tuple[str, str | None, str | None]:
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


def _lookup(sent: object, dotted: str) -> tuple[bool, object]:
    for part in dotted.split("."):
        if not isinstance(sent, dict) or part not in sent:
            return False, None
        sent = sent[part]
    return True, sent


class ServiceClient:
    """httpx with retries and error mapping for one service.

    `credential`: how the credential is named in errors ("the API key"); `credential_fix`: where to
    set it. `field_fixes`: the service's ``error.param`` (or its first dotted part) -> how to fix it;
    the key "" is the fallback.
    """

    def __init__(self, base_url: str, service: str, *, headers: dict[str, str] | None = None,
                 credential: str = "the API key", credential_fix: str = "pass a valid credential",
                 field_fixes: dict[str, str] | None = None, timeout: float = 60.0, max_retries: int = 4,
                 backoff: float = 1.0, max_backoff: float = 30.0, transport: httpx.BaseTransport | None = None):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise UserError(repr(base_url), f"is not an http(s) URL for {service}",
                            "pass the service's base URL, e.g. https://api.openai.com/v1")
        if max_retries < 0 or timeout <= 0:
            raise UserError(f"max_retries={max_retries}, timeout={timeout}", "must be >= 0 and > 0",
                            "use e.g. max_retries=4, timeout=60")
        self.base_url, self.service = base_url.rstrip("/"), service
        self.credential, self.credential_fix = credential, credential_fix
        self.field_fixes = field_fixes or {}
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self._has_credential = "Authorization" in (headers or {})
        self.http = httpx.Client(headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:  # never shows the credential
        return f"ServiceClient({self.service!r}, {self.base_url!r})"

    def _wait(self, attempt: int, r: httpx.Response | None) -> float:
        return retry_delay(attempt, self.backoff, self.max_backoff, r)

    def request(self, method: str, path: str, *, json_body: dict | None = None, params: dict | None = None,
                files: dict | None = None, data: dict | None = None, expect: tuple[int, ...] = (),
                dest: Path | None = None, max_bytes: int | None = None) -> httpx.Response:
        """Send with retries; return a 2xx answer (or one whose status is in `expect`).

        With `dest`, the body is streamed into that file (at most `max_bytes`) instead of memory.
        """
        url = f"{self.base_url}{path}"
        headers = {"Idempotency-Key": f"tuneloop-{uuid.uuid4().hex}"} if method != "GET" else None
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
                kind = "timed out" if isinstance(e, httpx.TimeoutException) else "failed"
                last = f"the request {kind} ({type(e).__name__}: {e or 'no detail'})"
            except httpx.HTTPError as e:  # a bad URL, too many redirects: retrying will not help
                raise TuneloopError(f"{self.service}: {method} {url} failed ({type(e).__name__}: {e})") from e
            else:
                code = r.status_code
                if code < 400 or code in expect:
                    return r
                message, _, err_code = service_error(r)
                if (code in _RETRY_STATUS or code >= 500) and err_code != "insufficient_quota":
                    last = f"HTTP {code} {r.reason_phrase} ({message[:200]})"
                else:
                    raise self._fatal(r, method, path, json_body if json_body is not None else data)
            if attempt < self.max_retries:
                time.sleep(self._wait(attempt, r))
        raise TransientError(f"{self.service}: {method} {url}: {last}; gave up after {attempts} attempt"
                             f"{'s' if attempts > 1 else ''}")

    def json(self, method: str, path: str, **kw) -> dict:
        r = self.request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise TuneloopError(f"{self.service}: {method} {self.base_url}{path} answered HTTP {r.status_code} "
                                f"with non-JSON: {r.text[:120]!r}; is the base URL right?") from None

    def _fatal(self, r: httpx.Response, method: str, path: str, sent: dict | None) -> TuneloopError:
        code = r.status_code
        message, param, err_code = service_error(r)
        if code in (401, 403):
            what = self.credential if self._has_credential else f"a request without {self.credential}"
            return UserError(self.credential, f"{self.service} refused {what} (HTTP {code}: {message})",
                             self.credential_fix)
        if code == 429:  # insufficient_quota
            return UserError(f"the {self.service} account", f"has no quota left (HTTP 429: {message})",
                             "add credit or raise the usage limit on the service's billing page, then run again")
        if code in _USER_STATUS:
            found, value = _lookup(sent, param) if param else (False, None)
            where = (f"{param}={value!r}" if found else param) if param else f"{method} {self.base_url}{path}"
            fix = (self.field_fixes.get(param or "") or self.field_fixes.get((param or "").split(".")[0])
                   or (f"correct {param} as the service says" if param else self.field_fixes.get("", "")))
            return UserError(where, f"{self.service} rejected it (HTTP {code}"
                                    f"{', ' + err_code if err_code else ''}: {message})",
                             fix or "check the request against the service's API reference")
        return TuneloopError(f"{self.service}: {method} {self.base_url}{path} answered HTTP {code}: {message}")


def _save(r: httpx.Response, dest: Path, max_bytes: int | None, url: str) -> None:
    n = 0
    with open(dest, "wb") as fh:
        for chunk in r.iter_bytes():
            n += len(chunk)
            if max_bytes is not None and n > max_bytes:
                raise TuneloopError(f"{url} sent more than {max_bytes:,} bytes; refusing the download "
                                    "(raise max_download_bytes if the adapter really is that large)")
            fh.write(chunk)
