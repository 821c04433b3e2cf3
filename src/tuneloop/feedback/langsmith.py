"""Feedback from LangSmith: feedback on a project's root runs, joined with the run it judges.

Reads through the real `langsmith` SDK (`langsmith.Client`); it sends no traces.

- project:  `Client.read_project(project_name=)`   GET  /sessions?name=
- feedback: `Client.list_feedback(session=[project id], min_created_at=, feedback_key=)`
                                                   GET  /feedback       (offset-paged, 100 a page)
- runs:     `Client.list_runs(project_id=, run_ids=[...], is_root=True)`
                                                   POST /runs/query     (cursor-paged)

Incrementality is driven by FEEDBACK, not by runs. Feedback often arrives
long after its run (a thumbs-down the next day), so "runs since the last
collection, then their feedback" would miss feedback on old runs, and
re-listing every run of the project each time does not scale. Instead each
fetch lists the project's feedback created since the watermark (GET /feedback
takes `session` and `min_created_at`), then loads only the runs that new
feedback points at, by id, restricted to the project's root runs. A new
feedback on a run of any age is therefore returned exactly once.

Watermark: {"since": ISO of the newest feedback created_at seen,
            "seen_at_since": ids of the feedback seen at or after since - lookback_s}.
Feedback is asked for from `since - lookback_s`, minus one more second so the
server's inclusive/exclusive bound and timestamp rounding cannot lose the
boundary; it is then filtered here to `created_at >= since - lookback_s`
and those in `seen_at_since` dropped. A rerun with the same watermark gives
nothing; several feedback with the same created_at are each returned once.
With `lookback_s=0` (default) `seen_at_since` holds exactly the ids at
`since`. `lookback_s > 0` re-reads a window behind the newest feedback, for
feedback whose created_at is earlier than feedback already collected but that
became readable later (ingestion lag); without it such feedback is missed.
All filters are also applied client-side, so a server that ignores
`session`/`min_created_at` only makes a fetch slower, never wrong.
Edits to feedback already collected (a changed score) are not re-read: items
keep the id `langsmith:<run id>:<feedback id>` and the store keeps the first.

Skipped, counted by reason in `last_skipped`: feedback without a run, on a
child run (only root runs are the conversation a user saw), on a run outside
the project, or on a run without outputs; a score outside 0..5; runs whose
inputs or outputs hold no text, a message role the training data cannot
hold (not system/user/assistant/tool), JSON nested too deeply to read, or a
timestamp with no UTC equivalent. The watermark still moves past them.
Empty messages are dropped from the conversation, and lone surrogates
(half an emoji, from a JSON escape) become U+FFFD, so every item returned
can be stored and becomes a valid training row.

Errors: connection errors, timeouts, 408/429/5xx raise `TransientError` (after
the SDK's own `max_retries` urllib3 retries); 401/403 raise `UserError` naming
the api_url and telling to set the API key; an unknown project or an api_url
that does not answer like LangSmith raise `UserError`.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from datetime import timedelta
from typing import Any

from tuneloop.data.validate import ROLES as _TRAINABLE_ROLES
from tuneloop.errors import TransientError, TuneloopError, UserError
from tuneloop.feedback import watermark as wm
from tuneloop.feedback.items import FeedbackItem, storable_item, utc_iso

_RUN_ID_CHUNK = 100  # run ids per POST /runs/query
_BOUNDARY_MARGIN = timedelta(seconds=1)
_TRANSIENT_STATUS = (408, 425, 429, 500, 502, 503, 504)
_ROLES = {
    "human": "user", "user": "user", "humanmessage": "user", "humanmessagechunk": "user",
    "ai": "assistant", "assistant": "assistant", "aimessage": "assistant", "aimessagechunk": "assistant",
    "system": "system", "developer": "system", "systemmessage": "system",
    "tool": "tool", "function": "tool", "toolmessage": "tool", "functionmessage": "tool",
}
_INPUT_KEYS = ("messages", "input", "question", "prompt", "query", "prompts")
_OUTPUT_KEYS = ("output", "answer", "response", "content", "text", "result", "completion")


def make_client(api_url: str | None = None, api_key: str | None = None, *, max_retries: int = 2,
                timeout: float = 30.0):
    """A `langsmith.Client` for reading: no tracing thread, bounded retries and timeouts.

    The SDK's default retries 503 and friends 3 times with backoff and waits up
    to 60 s a read; here urllib3 retries `max_retries` times (0.5 s, 1 s, ...
    backoff, Retry-After ignored so a fetch cannot stall), then the caller gets
    a TransientError and the task decorators decide.
    """
    from langsmith import Client
    from langsmith.utils import LangSmithRetry

    retry = LangSmithRetry(
        total=int(max_retries),
        connect=int(max_retries),
        read=int(max_retries),
        status=int(max_retries),
        status_forcelist=list(_TRANSIENT_STATUS),
        backoff_factor=0.5,
        allowed_methods=None,  # POST /runs/query is a read: retry it too
        raise_on_redirect=False,
        raise_on_status=False,  # the SDK turns the last answer into an exception we classify
        respect_retry_after_header=False,
    )
    timeout_ms = (int(min(timeout, 10.0) * 1000), int(timeout * 1000))
    return Client(api_url=api_url, api_key=api_key, retry_config=retry, timeout_ms=timeout_ms,
                  auto_batch_tracing=False)


class LangSmithSource:
    """Feedback on the root runs of one LangSmith project as FeedbackItems (see module docstring)."""

    def __init__(
        self,
        project: str,
        api_url: str | None = None,
        api_key: str | None = None,
        feedback_key: str | None = None,
        tenant: str = "default",
        name: str | None = None,
        client=None,
        *,
        max_retries: int = 2,
        timeout: float = 30.0,
        lookback_s: float = 0.0,
    ):
        self.project = project
        self.feedback_key = feedback_key
        self.tenant = tenant
        self.name = name or f"langsmith:{project}"
        self.lookback_s = float(lookback_s)
        self._api_url, self._api_key = api_url, api_key
        self._max_retries, self._timeout = max_retries, timeout
        self._client = client  # built on first fetch: constructing a source touches nothing
        self.last_skipped: dict[str, int] = {}

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self._api_url, self._api_key, max_retries=self._max_retries,
                                       timeout=self._timeout)
        return self._client

    @property
    def api_url(self) -> str:
        url = getattr(self._client, "api_url", None) or self._api_url
        return str(url or "the LangSmith API (LANGSMITH_ENDPOINT or https://api.smith.langchain.com)")

    # -- fetch -------------------------------------------------------------

    def fetch(self, watermark: dict | None) -> tuple[list[FeedbackItem], dict]:
        self.last_skipped = {}
        try:
            return self._fetch(watermark)
        except TuneloopError:
            raise
        except Exception as e:
            translated = self._translate(e)
            if translated is None:
                raise
            raise translated from e

    def _fetch(self, watermark: dict | None) -> tuple[list[FeedbackItem], dict]:
        since, seen, window_from = wm.start(watermark, self.lookback_s)

        client = self.client
        project = client.read_project(project_name=self.project)
        project_id = str(project.id)

        params: dict[str, Any] = {"session": [project_id]}
        if window_from is not None:
            params["min_created_at"] = wm.minus(window_from, _BOUNDARY_MARGIN.total_seconds()).isoformat()
        # by id: offset pages over a list that grows while paging can repeat an entry
        feedback = list({
            str(f.id): f for f in client.list_feedback(
                feedback_key=[self.feedback_key] if self.feedback_key else None, **params)
            # the same filters again here: correct even if the server ignores a parameter
            if (f.session_id is None or str(f.session_id) == project_id)
            and (self.feedback_key is None or f.key == self.feedback_key)
            and (window_from is None or wm.aware(f.created_at) >= window_from)
        }.values())

        new_watermark = wm.advance(watermark, since, seen, ((str(f.id), f.created_at) for f in feedback),
                                   self.lookback_s)
        if not feedback and since is None:
            return [], new_watermark

        fresh = sorted((f for f in feedback if str(f.id) not in seen),
                       key=lambda f: (wm.aware(f.created_at), str(f.id)))
        runs = self._root_runs(project_id, {str(f.run_id) for f in fresh if f.run_id is not None})
        items = [it for it in (self._item(f, runs) for f in fresh) if it is not None]
        return items, new_watermark

    def _root_runs(self, project_id: str, run_ids: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ids = sorted(run_ids)
        for i in range(0, len(ids), _RUN_ID_CHUNK):
            chunk = ids[i:i + _RUN_ID_CHUNK]
            with warnings.catch_warnings():  # deprecated in 0.15 for the generated `runs.query`
                warnings.filterwarnings("ignore", message=r"list_runs\(\) is deprecated")
                pages = self.client.list_runs(project_id=project_id, run_ids=chunk, is_root=True)
            for run in pages:
                if run.parent_run_id is None and (run.session_id is None or str(run.session_id) == project_id):
                    out[str(run.id)] = run
        return out

    # -- one feedback --------------------------------------------------------

    def _item(self, f, runs: dict[str, Any]) -> FeedbackItem | None:
        if f.run_id is None:
            return self._skip("feedback not attached to a run")
        run = runs.get(str(f.run_id))
        if run is None:
            return self._skip("run is not a root run of the project")
        if not run.outputs:
            return self._skip("run has no outputs")
        score = _score(f.score)  # 0-1 is a score; above 1 (up to 5) a star rating, as in the Langfuse source
        if score is not None and not 0.0 <= score <= 5.0:
            return self._skip("score outside 0..1 (score) and 1..5 (rating)")
        try:
            return self._build(f, run, score)
        except RecursionError:  # JSON nested hundreds of levels deep
            return self._skip("run inputs or outputs nested too deeply to read")
        except OverflowError:  # 0001-01-01T00:00:00+01:00 has no UTC equivalent
            return self._skip("timestamp outside the years 1-9999 in UTC")

    def _build(self, f, run, score: float | None) -> FeedbackItem | None:
        # what the dataset builder writes must pass the training-data rules: known roles, no empty turns
        messages = tuple(m for m in messages_from_inputs(run.inputs or {}) if m["content"].strip())
        if not messages:
            return self._skip("run inputs hold no text")
        if any(m["role"] not in _TRAINABLE_ROLES for m in messages):
            return self._skip("a message role is not system, user, assistant or tool")
        response = response_from_outputs(run.outputs)
        if not response.strip():
            return self._skip("run outputs hold no text")
        extra = run.extra if isinstance(run.extra, dict) else {}
        md = extra.get("metadata") if isinstance(extra.get("metadata"), dict) else {}
        user = md.get("user_id") or md.get("user") or extra.get("user_id") or extra.get("user")
        correction = _correction(f.correction)
        source_type = getattr(getattr(f, "feedback_source", None), "type", None)
        return storable_item(FeedbackItem(
            id=f"langsmith:{run.id}:{f.id}",
            source=self.name,
            messages=messages,
            response=response,
            timestamp=utc_iso(f.created_at),
            score=score if score is None or score <= 1 else None,
            rating=score if score is not None and 1 < score <= 5 else None,
            correction=correction if correction and correction.strip() else None,
            comment=f.comment or None,
            user=str(user) if user not in (None, "") else None,
            tenant=str(md.get("tenant") or self.tenant),
            metadata={
                "run_id": str(run.id),
                "trace_id": str(run.trace_id),
                "feedback_id": str(f.id),
                "feedback_key": f.key,
                "feedback_value": _jsonable(f.value),
                "feedback_source": str(source_type) if source_type else None,
                "project": self.project,
                "run_name": run.name,
                "run_start_time": utc_iso(run.start_time),
            },
        ))

    def _skip(self, reason: str) -> None:
        self.last_skipped[reason] = self.last_skipped.get(reason, 0) + 1
        return None

    # -- errors ------------------------------------------------------------

    def _translate(self, e: BaseException) -> TuneloopError | None:
        import requests
        from langsmith import utils as ls

        status = _http_status(e)
        where = self.api_url
        if isinstance(e, ls.LangSmithAuthError) or status in (401, 403):
            return UserError(
                where,
                f"LangSmith refused the request (HTTP {status or 401}): missing or invalid API key",
                "set the API key (LANGSMITH_API_KEY, or the variable the source's api_key_env names) "
                "to a key for the workspace that holds the project",
            )
        if isinstance(e, ls.LangSmithUserError) and "workspace" in str(e):
            return UserError(where, "the API key is org-scoped and needs a workspace",
                             "set LANGSMITH_WORKSPACE_ID to the workspace that holds the project")
        if isinstance(e, (ls.LangSmithConnectionError, requests.ConnectionError)):
            return TransientError(f"LangSmith at {where} unreachable: {_short(e)}")
        if isinstance(e, requests.Timeout) or status == 408 or isinstance(e, ls.LangSmithRequestTimeout):
            return TransientError(f"LangSmith at {where} timed out: {_short(e)}")
        if isinstance(e, (ls.LangSmithAPIError, ls.LangSmithRateLimitError)) or (
            status is not None and (status >= 500 or status in _TRANSIENT_STATUS)
        ):
            return TransientError(f"LangSmith at {where} answered HTTP {status or 500}: {_short(e)}")
        if isinstance(e, ls.LangSmithNotFoundError):
            if status == 404:
                return UserError(where, "did not answer like a LangSmith API (HTTP 404)",
                                 "point api_url at the LangSmith API, e.g. https://api.smith.langchain.com "
                                 "(self-hosted: https://<host>/api/v1)")
            return UserError(repr(self.project), f"is not a project at {where}",
                             "check the project name (LangSmith > Projects) and that the API key's "
                             "workspace holds it")
        if isinstance(e, ls.LangSmithError):
            return TuneloopError(f"LangSmith at {where} failed: {_short(e)}")
        return None


# -- helpers ------------------------------------------------------------------



def _http_status(e: BaseException) -> int | None:
    """The HTTP status behind an SDK error: from the requests.HTTPError it wraps, else its message."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        resp = getattr(cur, "response", None)
        code = getattr(resp, "status_code", None)
        if isinstance(code, int):
            return code
        cur = cur.__cause__ or cur.__context__
    m = re.search(r"\b([1-5]\d\d) (?:Client|Server) Error", str(e))
    return int(m.group(1)) if m else None


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _score(v: Any) -> float | None:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    return None


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return str(v)


def _dump(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)


def _text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
        return "".join(parts) if parts else None
    return None


def _message(m: Any) -> dict | None:
    """One chat message as {"role", "content"}: OpenAI style, LangChain dict or serialized LangChain."""
    if not isinstance(m, dict):
        return None
    if m.get("lc") is not None and isinstance(m.get("kwargs"), dict):  # langchain dumpd()
        kind = (m.get("id") or [""])[-1] if isinstance(m.get("id"), list) else ""
        kw = m["kwargs"]
        role = _ROLES.get(str(kw.get("type") or kind).lower()) or (kw.get("role") if kind == "ChatMessage" else None)
        content = _text(kw.get("content"))
    else:
        raw_role, raw_type = m.get("role"), m.get("type")
        if isinstance(raw_role, str) and raw_role:
            role = _ROLES.get(raw_role.lower(), raw_role)
        else:
            role = _ROLES.get(str(raw_type).lower()) if isinstance(raw_type, str) else None
        content = _text(m.get("content"))
        if content is None and isinstance(m.get("data"), dict):  # langchain messages_to_dict()
            return _message({"type": raw_type, **m["data"]})
    if not role or content is None:
        return None
    return {"role": role, "content": content}


def _messages(v: Any) -> list[dict]:
    if isinstance(v, str):
        return [{"role": "user", "content": v}] if v else []
    if isinstance(v, dict):
        one = _message(v)
        return [one] if one else []
    if isinstance(v, list):
        if v and all(isinstance(x, list) for x in v):  # batched: [[msg, ...]]
            v = v[0]
        if v and all(isinstance(x, str) for x in v):  # LLM run prompts: ["..."]
            return [{"role": "user", "content": v[0]}]
        out = [m for m in (_message(x) for x in v) if m is not None]
        return out
    return []


def messages_from_inputs(inputs: dict) -> list[dict]:
    """The conversation before the response, from a run's inputs.

    `{"messages": [...]}` (role/content, LangChain `type` human/ai/system, or
    serialized LangChain messages), `{"input"|"question"|"prompt"|"query": ...}`,
    `{"prompts": [...]}`; anything else becomes one user message holding the
    inputs as JSON.
    """
    if isinstance(inputs, dict):
        for k in _INPUT_KEYS:
            if k in inputs:
                msgs = _messages(inputs[k])
                if msgs:
                    return msgs
        if len(inputs) == 1:  # {"anything": "a string"}
            (only,) = inputs.values()
            if isinstance(only, str) and only:
                return [{"role": "user", "content": only}]
    return [{"role": "user", "content": _dump(inputs)}]


def _response(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        if v and all(isinstance(x, list) for x in v):  # generations: [[{...}]]
            v = v[0]
        for m in reversed(v):  # a list of messages: the last assistant one
            msg = _message(m)
            if msg and msg["role"] == "assistant":
                return msg["content"]
        if v and isinstance(v[-1], dict):  # generations: [{"text": ...}]
            return _response(v[-1])
        return None
    if not isinstance(v, dict):
        return None
    if isinstance(v.get("choices"), list) and v["choices"]:  # an OpenAI completion
        c = v["choices"][0]
        if isinstance(c, dict):
            return _response(c.get("message")) or _response(c.get("text"))
        return None
    if "generations" in v:
        return _response(v["generations"])
    if "messages" in v:
        return _response(v["messages"])
    msg = _message(v)
    if msg and msg["role"] == "assistant":
        return msg["content"]
    if isinstance(v.get("message"), dict) and not v.get("text"):  # a chat generation: {"text": "", "message": {...}}
        got = _response(v["message"])
        if got is not None:
            return got
    for k in _OUTPUT_KEYS:
        if k in v:
            got = _response(v[k]) if isinstance(v[k], (dict, list)) else (v[k] if isinstance(v[k], str) else None)
            if got is not None:
                return got
    if "message" in v:
        return _response(v["message"])
    return None


def response_from_outputs(outputs: Any) -> str:
    """The response text from a run's outputs, best effort; else the outputs as JSON."""
    if outputs is None:
        return ""
    got = _response(outputs)
    return got if got is not None else _dump(outputs)


def _correction(c: Any) -> str | None:
    if c is None or c == "" or c == {}:
        return None
    if isinstance(c, str):
        return c
    got = _response(c)
    return got if got is not None else _dump(c)


__all__ = ["LangSmithSource", "make_client", "messages_from_inputs", "response_from_outputs"]
