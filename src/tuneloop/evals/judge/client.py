"""The judge's endpoint: any OpenAI-compatible ``POST {base_url}/chat/completions``, through `HttpClient`.

A chat completion changes nothing on the server, so every call is retried on the shared transient set
(tuneloop.runtime.http). When retries run out, or the reply is unusable, `JudgeCallError`: that item
fails and the run goes on. 401/403 (and 404: wrong URL or model) raise `UserError`, since they would
fail every item.
"""

from __future__ import annotations

import httpx

from tuneloop.errors import TuneloopError, UserError
from tuneloop.evals.judge.parse import excerpt
from tuneloop.runtime.http import HttpClient


class JudgeCallError(TuneloopError):
    """One judge call failed for good (retries spent, or an unusable answer): the item fails."""


class JudgeClient(HttpClient):
    """A minimal, thread-safe OpenAI-compatible chat client for judging.

    `backoff` is the first retry's wait in seconds (doubling, capped at 8 s; a numeric
    ``Retry-After`` up to 8 s is honoured instead).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 30,
                 max_retries: int = 2, temperature: float = 0.0, *, backoff: float = 0.5,
                 transport: httpx.BaseTransport | None = None):
        if not model:
            raise UserError(repr(model), "judge model name is empty", "pass the model the endpoint serves")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        super().__init__(base_url, "the judge endpoint", headers=headers, timeout=timeout,
                         max_retries=max_retries, backoff=backoff, max_backoff=8.0, transport=transport)
        self.url = f"{self.base_url}/chat/completions"
        self.model, self.timeout, self.temperature = model, timeout, temperature

    def __repr__(self) -> str:  # never shows the key
        return f"JudgeClient({self.base_url!r}, model={self.model!r})"

    def refused(self, r: httpx.Response, method: str, path: str, sent: dict | None) -> TuneloopError:
        body = excerpt(r.text, 200)
        if r.status_code in (401, 403):
            rule = (f"answered {r.status_code} {r.reason_phrase}: the judge endpoint refused "
                    f"{'the API key' if self.has_credential else 'a request without an API key'} ({body})")
            return UserError(self.url, rule, "set the judge's API key (JudgeClient(api_key=...)) to one this "
                             f"endpoint accepts for model {self.model!r}")
        if r.status_code == 404:
            return UserError(self.url, f"answered 404 Not Found for model {self.model!r} ({body})",
                             "check that base_url ends in /v1 (e.g. http://localhost:8000/v1) and that the "
                             "endpoint serves this model")
        return JudgeCallError(f"HTTP {r.status_code} {r.reason_phrase} ({body})")

    def failed(self, method: str, path: str, reason: str, *, transient: bool) -> TuneloopError:
        return JudgeCallError(reason)

    def complete(self, messages: list[dict]) -> str:
        """Send one chat request; return the reply text.

        Raises `UserError` on 401/403/404 and `JudgeCallError` when the call failed for good.
        """
        body = {"model": self.model, "messages": messages, "temperature": self.temperature}
        return _reply_text(self.request("POST", "/chat/completions", json_body=body, idempotent=True))


def _reply_text(r: httpx.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        raise JudgeCallError(f"endpoint answered non-JSON with HTTP {r.status_code}: {excerpt(r.text)}") from None
    try:
        choice = data["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeCallError(f"endpoint answer has no choices[0].message.content: {excerpt(r.text)}") from None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        raise JudgeCallError(f"judge reply was empty (finish_reason={finish!r})")
    return content
