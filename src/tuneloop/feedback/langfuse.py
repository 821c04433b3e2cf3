"""Feedback from Langfuse: scores, joined with the conversation they judge.

Reads through the Langfuse 5.x SDK's REST client (`langfuse.api.LangfuseAPI`,
the object behind `Langfuse(...).api`); it sends no traces.

- scores:        `api.scores.get_many`        GET api/public/v3/scores        (cursor-paged)
- conversations: `api.observations.get_many`  GET api/public/v2/observations  (cursor-paged)

The v5 SDK has no trace list/get, so a trace's input, output and user come
from its observations: the GENERATION (the scored observation if the score is
attached to one, else the trace's last generation), else the root observation.

Why not `Langfuse(public_key=..., host=...).api`: in 5.x `Langfuse` keeps one
resource manager per public key for the whole process, so a second client with
the same public key silently reuses the FIRST client's host and secret key; it
also lets LANGFUSE_BASE_URL override `host`, and starts media/score upload
threads with an atexit flush. A bare `LangfuseAPI` has none of that. Pass
`client=` (a `Langfuse` or a `LangfuseAPI`) to use your own.

Skipped, counted by reason in `last_skipped`: non-numeric scores, values
outside 0..5, scores not on a trace, traces without a conversation (no
input text or no output text), a message role the training data cannot
hold (not system/user/assistant/tool), input/output JSON nested too deeply
to read, or a timestamp with no UTC equivalent. Empty messages are dropped
from the conversation, a correction in metadata that is an answer object
is reduced to its text, and lone surrogates (half an emoji, from a JSON
escape) become U+FFFD, so every item returned can be stored and becomes a
valid training row.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx

from tuneloop.data.validate import ROLES as _TRAINABLE_ROLES
from tuneloop.errors import TransientError, TuneloopError, UserError
from tuneloop.feedback import watermark as wm
from tuneloop.feedback.items import FeedbackItem, storable_item, utc_iso

_SCORE_FIELDS = "details,subject"  # comment/metadata and the trace the score is attached to
_OBS_FIELDS = "core,basic,io,metadata"  # basic carries userId; io input/output (raw strings)
_INPUT_KEYS = ("messages", "input", "prompt", "question")
_OUTPUT_KEYS = ("content", "output", "answer", "text")


class LangfuseSource:
    """Scores on Langfuse traces as FeedbackItems, incrementally by score timestamp.

    Watermark: {"since": ISO of the newest score timestamp seen,
                "seen_at_since": ids of the scores seen at or after since - lookback_s}.
    Scores are asked for from `since - lookback_s` (the API's bound is inclusive)
    and those in `seen_at_since` dropped, so a rerun with the same watermark gives
    nothing new and a new score on an old trace is still returned. `lookback_s`
    (default 0) re-reads a window behind the newest score, for scores that reach
    Langfuse's read path late (ingestion is asynchronous).
    """

    def __init__(
        self,
        host: str,
        public_key: str,
        secret_key: str,
        score_name: str | None = None,
        tenant: str = "default",
        name: str | None = None,
        client=None,
        *,
        page_size: int = 100,
        max_retries: int = 2,
        timeout: float = 30.0,
        lookback_s: float = 0.0,
    ):
        self.host = host.rstrip("/")
        self.score_name = score_name
        self.tenant = tenant
        self.name = name or f"langfuse:{host}"
        self.page_size = min(max(int(page_size), 1), 100)  # the API answers 400 above 100
        self.lookback_s = float(lookback_s)
        # the SDK retries 5xx/429/408/409 itself with 1 s, 2 s, ... backoff before we see them
        self._request_options = {"max_retries": int(max_retries)}
        self.last_skipped: dict[str, int] = {}
        if client is None:
            from langfuse.api import LangfuseAPI
            from langfuse._version import __version__ as sdk_version

            client = LangfuseAPI(
                base_url=self.host,
                username=public_key,
                password=secret_key,
                x_langfuse_sdk_name="python",
                x_langfuse_sdk_version=sdk_version,
                x_langfuse_public_key=public_key,
                timeout=timeout,
            )
        self.api = getattr(client, "api", client)  # a Langfuse client or its REST client

    # -- fetch -------------------------------------------------------------

    def fetch(self, watermark: dict | None) -> tuple[list[FeedbackItem], dict]:
        self.last_skipped = {}
        since, seen, query_from = wm.start(watermark, self.lookback_s)
        scores = self._scores(query_from)
        new_watermark = wm.advance(watermark, since, seen, ((s.id, s.timestamp) for s in scores), self.lookback_s)
        if not scores and since is None:
            return [], new_watermark

        items: list[FeedbackItem] = []
        observations: dict[str, list] = {}  # trace id -> observations, cached for this fetch
        for s in sorted(scores, key=lambda s: (wm.aware(s.timestamp), s.id)):
            if s.id in seen:
                continue
            item = self._item(s, observations)
            if item is not None:
                items.append(item)
        return items, new_watermark

    # -- one score ---------------------------------------------------------

    def _item(self, s, observations: dict[str, list]) -> FeedbackItem | None:
        kind = s.data_type
        score = rating = None
        if kind == "NUMERIC":
            v = float(s.value)
            if 0.0 <= v <= 1.0:
                score = v
            elif 1.0 < v <= 5.0:
                rating = v
            else:
                return self._skip("NUMERIC value outside 0..1 (score) and 1..5 (rating)")
        elif kind == "BOOLEAN":
            score = 1.0 if s.value else 0.0
        else:  # CATEGORICAL, TEXT, CORRECTION: no number to train on
            return self._skip(f"{kind} score (no numeric value)")

        trace_id, obs_id = _subject(s)
        if trace_id is None:
            return self._skip("score not attached to a trace (session/experiment score)")
        if trace_id not in observations:
            observations[trace_id] = self._observations(trace_id)
        obs = _pick_observation(observations[trace_id], obs_id)
        if obs is None:
            return self._skip("trace has no observations")
        try:
            return self._build(s, obs, observations[trace_id], trace_id, score, rating)
        except RecursionError:  # JSON nested hundreds of levels deep
            return self._skip("observation input or output nested too deeply to read")
        except OverflowError:  # 0001-01-01T00:00:00+01:00 has no UTC equivalent
            return self._skip("timestamp outside the years 1-9999 in UTC")

    def _build(self, s, obs, trace_obs: list, trace_id: str, score: float | None,
               rating: float | None) -> FeedbackItem | None:
        # what the dataset builder writes must pass the training-data rules: known roles, no empty turns
        messages = [m for m in _messages(_from_raw(obs.input)) if m["content"].strip()]
        response = _response(_from_raw(obs.output))
        if not messages or response is None or not response.strip():
            return self._skip("no input/output conversation on the trace")
        if any(m["role"] not in _TRAINABLE_ROLES for m in messages):
            return self._skip("a message role is not system, user, assistant or tool")

        meta = dict(s.metadata or {})
        user = obs.user_id or next((o.user_id for o in trace_obs if o.user_id), None)
        user = user or meta.get("user_id") or meta.get("userId") or meta.get("user")
        correction = meta.get("correction")
        if not isinstance(correction, str):  # an answer object ({"role": "assistant", ...}): its text
            correction = _response(correction) if isinstance(correction, (dict, list)) else None
        return storable_item(FeedbackItem(
            id=f"langfuse:{s.id}",
            source=self.name,
            messages=tuple(messages),
            response=response,
            timestamp=utc_iso(s.timestamp),
            score=score,
            rating=rating,
            correction=correction if correction and correction.strip() else None,
            comment=s.comment or None,
            user=str(user) if user is not None else None,
            tenant=str(meta.get("tenant") or self.tenant),
            metadata={
                "score_name": s.name,
                "score_value": s.value,
                "data_type": s.data_type,
                "trace_id": trace_id,
                "observation_id": obs.id,
                "score_source": str(s.source),
            },
        ))

    def _skip(self, reason: str) -> None:
        self.last_skipped[reason] = self.last_skipped.get(reason, 0) + 1
        return None

    # -- SDK calls ---------------------------------------------------------

    def _scores(self, query_from: datetime | None) -> list:
        out, cursor = [], None
        while True:
            page = self._call(
                self.api.scores.get_many,
                limit=self.page_size,
                cursor=cursor,
                fields=_SCORE_FIELDS,
                name=self.score_name,
                from_timestamp=query_from,
            )
            out.extend(page.data)
            cursor = page.meta.cursor
            if not cursor or not page.data:
                return out

    def _observations(self, trace_id: str) -> list:
        out, cursor = [], None
        while True:
            page = self._call(
                self.api.observations.get_many,
                trace_id=trace_id,
                fields=_OBS_FIELDS,
                limit=max(self.page_size, 100),
                cursor=cursor,
            )
            out.extend(page.data)
            cursor = page.meta.cursor
            if not cursor or not page.data:
                return out

    def _call(self, method, **kwargs):
        from langfuse.api.core.api_error import ApiError

        try:
            return method(**kwargs, request_options=self._request_options)
        except httpx.TimeoutException as e:
            raise TransientError(f"Langfuse at {self.host} timed out: {e}") from e
        except httpx.TransportError as e:  # connect/read/protocol errors
            raise TransientError(f"Langfuse at {self.host} unreachable: {e!r}") from e
        except ApiError as e:
            code = e.status_code or 0
            if code in (401, 403):
                raise UserError(
                    self.host,
                    f"Langfuse refused the API keys (HTTP {code})",
                    "check the public and secret key (they must belong to a project on this host)",
                ) from e
            if code >= 500 or code in (408, 409, 429):
                raise TransientError(f"Langfuse at {self.host} answered HTTP {code}: {e.body!r}"[:500]) from e
            if code == 404 or 200 <= code < 300:  # 2xx here: the body was not JSON
                raise UserError(
                    self.host,
                    f"did not answer like a Langfuse API (HTTP {code} on {getattr(method, '__qualname__', method)})",
                    "point host at the Langfuse base URL, e.g. https://cloud.langfuse.com",
                ) from e
            raise TuneloopError(f"Langfuse at {self.host} answered HTTP {code}: {e.body!r}"[:500]) from e


# -- helpers ------------------------------------------------------------------



def _subject(s) -> tuple[str | None, str | None]:
    """(trace id, observation id) the score is attached to."""
    subj = getattr(s, "subject", None)
    if subj is None:
        return None, None
    if subj.kind == "trace":
        return subj.id, None
    if subj.kind == "observation":
        return getattr(subj, "trace_id", None), subj.id
    return None, None


def _pick_observation(obs: list, obs_id: str | None):
    if obs_id is not None:
        hit = next((o for o in obs if o.id == obs_id), None)
        if hit is not None and hit.input is not None and hit.output is not None:
            return hit
    with_io = [o for o in obs if o.input is not None and o.output is not None]
    gens = sorted((o for o in with_io if o.type == "GENERATION"), key=lambda o: wm.aware(o.start_time))
    if gens:
        return gens[-1]  # the last LLM call produced the answer the user saw
    roots = [o for o in with_io if o.is_root_observation or o.parent_observation_id is None]
    if roots:
        return roots[0]
    return with_io[-1] if with_io else (obs[0] if obs else None)


def _from_raw(v: Any) -> Any:
    """The v2 observations API returns input/output as raw strings: decode JSON when it is JSON."""
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        parts = [p.get("text") if isinstance(p, dict) else p for p in content]
        parts = [p for p in parts if isinstance(p, str)]
        return "".join(parts) if parts else None
    return None


def _messages(inp: Any) -> list[dict]:
    if isinstance(inp, dict):
        for k in _INPUT_KEYS:
            if k in inp:
                return _messages(inp[k])
        if "role" in inp and "content" in inp:
            inp = [inp]
        else:
            return []
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}] if inp else []
    if isinstance(inp, list):
        out = []
        for m in inp:
            if isinstance(m, dict) and isinstance(m.get("role"), str):
                text = _text(m.get("content"))
                if text is not None:
                    out.append({"role": m["role"], "content": text})
        return out
    return []


def _response(out: Any) -> str | None:
    if isinstance(out, str):
        return out
    if isinstance(out, dict):
        if isinstance(out.get("choices"), list) and out["choices"]:  # a whole OpenAI response
            c = out["choices"][0]
            return _response(c.get("message") or c.get("text")) if isinstance(c, dict) else None
        for k in _OUTPUT_KEYS:
            if k in out:
                v = out[k]
                return _text(v) if not isinstance(v, dict) else _response(v)
        return None
    if isinstance(out, list):  # a list of messages: the last assistant one
        for m in reversed(out):
            if isinstance(m, dict) and m.get("role") == "assistant":
                return _text(m.get("content"))
    return None
