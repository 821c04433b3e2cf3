"""The remote trainers' client: `HttpClient`'s retries (tuneloop.runtime.http), with every POST carrying one
``Idempotency-Key`` across its retries, and errors worded for a training service.

- 401/403: `UserError` naming the credential and where it comes from. 429 with ``insufficient_quota``:
  `UserError` (waiting will not add credit). 400/404/413/422: `UserError` naming the field the service
  blamed (its ``error.param``), the value sent, and the fix.
"""

from __future__ import annotations

import httpx

from tuneloop.errors import TuneloopError, UserError
from tuneloop.runtime.http import HttpClient, server_message

_USER_STATUS = {400, 404, 413, 422}


def _lookup(sent: object, dotted: str) -> tuple[bool, object]:
    for part in dotted.split("."):
        if not isinstance(sent, dict) or part not in sent:
            return False, None
        sent = sent[part]
    return True, sent


class ServiceClient(HttpClient):
    """`HttpClient` for one training service.

    `credential`: how the credential is named in errors ("the API key"); `credential_fix`: where to
    set it. `field_fixes`: the service's ``error.param`` (or its first dotted part) -> how to fix it;
    the key "" is the fallback.
    """

    def __init__(self, base_url: str, service: str, *, headers: dict[str, str] | None = None,
                 credential: str = "the API key", credential_fix: str = "pass a valid credential",
                 field_fixes: dict[str, str] | None = None, timeout: float = 60.0, max_retries: int = 4,
                 backoff: float = 1.0, max_backoff: float = 30.0, transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, service, headers=headers, timeout=timeout, max_retries=max_retries,
                         backoff=backoff, max_backoff=max_backoff, idempotency_keys=True, transport=transport)
        self.credential, self.credential_fix = credential, credential_fix
        self.field_fixes = field_fixes or {}

    def refused(self, r: httpx.Response, method: str, path: str, sent: dict | None) -> TuneloopError:
        code = r.status_code
        message, param, err_code = server_message(r)
        if code in (401, 403):
            what = self.credential if self.has_credential else f"a request without {self.credential}"
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
        return super().refused(r, method, path, sent)
