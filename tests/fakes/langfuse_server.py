"""A local stand-in for the Langfuse public REST API, for the 5.x SDK's read calls.

Speaks exactly what `langfuse.api.LangfuseAPI` sends (see the SDK's generated
`api/scores/raw_client.py` and `api/observations/raw_client.py`):

- GET /api/public/v3/scores        limit (<=100), cursor, fields (details,subject,annotation),
                                   id, name, dataType, traceId, fromTimestamp (inclusive),
                                   toTimestamp (exclusive); newest first; meta {limit, cursor?}
- GET /api/public/v2/observations  traceId, type, fields (core always; basic, io, metadata, ...),
                                   limit (<=1000), cursor; io returned as raw JSON strings
                                   like the real v2 API; meta {cursor?}

Basic auth with the configured key pair (401 otherwise). `fail_next(n)` makes
the next n requests answer 503. Anything else answers 404.

    with fake_langfuse() as lf:
        t = lf.add_trace(user_id="u1")
        lf.add_generation(t, [{"role": "user", "content": "hi"}], "hello")
        lf.add_score(t, "user-feedback", 0.9)
        LangfuseSource(lf.url, lf.public_key, lf.secret_key)
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlparse

from fakes.base import Answer, FakeServer, json_answer

PROJECT_ID = "proj-fake"
_SCORE_FIELD_GROUPS = {"details", "subject", "annotation"}
_OBS_FIELD_GROUPS = {"core", "basic", "time", "io", "metadata", "model", "usage", "prompt", "metrics", "trace_context"}


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(s: str) -> datetime:
    ts = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _enc_cursor(d: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")


def _dec_cursor(s: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))


@dataclass
class Trace:
    id: str
    name: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    metadata: dict = field(default_factory=dict)
    timestamp: datetime | None = None


@dataclass
class Observation:
    id: str
    trace_id: str
    type: str
    start_time: datetime
    name: str | None = None
    input: Any = None
    output: Any = None
    parent_observation_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    metadata: dict = field(default_factory=dict)
    model: str | None = None


@dataclass
class Score:
    id: str
    name: str
    value: Any
    data_type: str
    timestamp: datetime
    created_at: datetime
    trace_id: str | None = None
    observation_id: str | None = None
    session_id: str | None = None
    comment: str | None = None
    metadata: dict | None = None
    source: str = "API"
    environment: str = "default"


class FakeLangfuse(FakeServer):
    """In-memory Langfuse project; `start()`/`stop()` or use `fake_langfuse()`."""

    name = "fake-langfuse"

    def __init__(self, public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test"):
        super().__init__()
        self.public_key, self.secret_key = public_key, secret_key
        self.traces: dict[str, Trace] = {}
        self.observations: list[Observation] = []
        self.scores: list[Score] = []
        self.requests: list[tuple[str, dict]] = []  # (path, query) of every request, auth or not
        self._fail = 0
        self._fail_status = 503
        self._lock = threading.Lock()
        # a deterministic clock: each object added without a time is 1 s after the previous one
        self._clock = datetime(2025, 1, 1, tzinfo=timezone.utc)

    # -- data ---------------------------------------------------------------

    def tick(self, seconds: float = 1.0) -> datetime:
        with self._lock:
            self._clock += timedelta(seconds=seconds)
            return self._clock

    def add_trace(self, id: str | None = None, *, name: str | None = "chat", user_id: str | None = None,
                  session_id: str | None = None, metadata: dict | None = None,
                  timestamp: datetime | None = None) -> str:
        t = Trace(id or uuid.uuid4().hex, name, user_id, session_id, dict(metadata or {}), timestamp or self.tick())
        with self._lock:
            self.traces[t.id] = t
        # the root span carries the trace's name/user, as in Langfuse's observation read model
        self._add_obs(Observation(uuid.uuid4().hex, t.id, "SPAN", t.timestamp, name=name,
                                  user_id=user_id, session_id=session_id))
        return t.id

    def add_generation(self, trace_id: str, input: Any, output: Any, *, name: str = "llm",
                       model: str = "gpt-fake", user_id: str | None = None,
                       start_time: datetime | None = None, metadata: dict | None = None,
                       id: str | None = None) -> str:
        trace = self.traces[trace_id]
        root = next(o for o in self.observations if o.trace_id == trace_id and o.parent_observation_id is None)
        o = Observation(id or uuid.uuid4().hex, trace_id, "GENERATION", start_time or self.tick(), name=name,
                        input=input, output=output, parent_observation_id=root.id,
                        user_id=user_id if user_id is not None else trace.user_id,
                        session_id=trace.session_id, metadata=dict(metadata or {}), model=model)
        self._add_obs(o)
        return o.id

    def add_span(self, trace_id: str, *, name: str = "step", input: Any = None, output: Any = None) -> str:
        root = next(o for o in self.observations if o.trace_id == trace_id and o.parent_observation_id is None)
        o = Observation(uuid.uuid4().hex, trace_id, "SPAN", self.tick(), name=name, input=input, output=output,
                        parent_observation_id=root.id)
        self._add_obs(o)
        return o.id

    def set_trace_io(self, trace_id: str, input: Any, output: Any) -> None:
        """Input/output on the root observation (what `trace.update(input=..., output=...)` gives)."""
        root = next(o for o in self.observations if o.trace_id == trace_id and o.parent_observation_id is None)
        root.input, root.output = input, output

    def _add_obs(self, o: Observation) -> None:
        with self._lock:
            self.observations.append(o)

    def add_score(self, trace_id: str | None, name: str, value: Any, data_type: str = "NUMERIC", *,
                  comment: str | None = None, metadata: dict | None = None,
                  observation_id: str | None = None, session_id: str | None = None,
                  timestamp: datetime | None = None, id: str | None = None, source: str = "API") -> str:
        ts = timestamp or self.tick()
        s = Score(id or uuid.uuid4().hex, name, value, data_type, ts, self.tick(0), trace_id=trace_id,
                  observation_id=observation_id, session_id=session_id, comment=comment,
                  metadata=metadata, source=source)
        with self._lock:
            self.scores.append(s)
        return s.id

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        with self._lock:
            self._fail, self._fail_status = n, status

    def calls(self, path_suffix: str) -> list[dict]:
        return [q for p, q in self.requests if p.endswith(path_suffix)]

    # -- JSON ---------------------------------------------------------------

    def _score_json(self, s: Score, groups: set[str]) -> dict:
        d = {
            "id": s.id, "projectId": PROJECT_ID, "name": s.name, "value": s.value, "dataType": s.data_type,
            "source": s.source, "timestamp": _iso(s.timestamp), "environment": s.environment,
            "createdAt": _iso(s.created_at), "updatedAt": _iso(s.created_at),
        }
        if "details" in groups:
            d.update(comment=s.comment, configId=None, metadata=s.metadata if s.metadata is not None else {})
        if "subject" in groups:
            if s.observation_id:
                d["subject"] = {"kind": "observation", "id": s.observation_id, "traceId": s.trace_id}
            elif s.trace_id:
                d["subject"] = {"kind": "trace", "id": s.trace_id}
            elif s.session_id:
                d["subject"] = {"kind": "session", "id": s.session_id}
        if "annotation" in groups:
            d.update(authorUserId=None, queueId=None)
        return d

    def _obs_json(self, o: Observation, groups: set[str]) -> dict:
        d = {"id": o.id, "traceId": o.trace_id, "startTime": _iso(o.start_time), "endTime": _iso(o.start_time),
             "projectId": PROJECT_ID, "parentObservationId": o.parent_observation_id, "type": o.type}
        if "basic" in groups:
            d.update(name=o.name, level="DEFAULT", statusMessage=None, version=None, environment="default",
                     bookmarked=False, public=False, userId=o.user_id, sessionId=o.session_id,
                     isRootObservation=o.parent_observation_id is None)
        if "io" in groups:  # the v2 API returns input/output as raw strings
            d["input"] = None if o.input is None else json.dumps(o.input)
            d["output"] = None if o.output is None else json.dumps(o.output)
        if "metadata" in groups:
            d["metadata"] = o.metadata
        if "model" in groups:
            d["model"] = o.model
        return d

    # -- handlers -----------------------------------------------------------

    def _list_scores(self, q: dict[str, str]) -> tuple[int, dict]:
        limit = int(q.get("limit", 50))
        if limit > 100 or limit < 1:
            return 400, {"message": "limit must be between 1 and 100"}
        groups = {g for g in q.get("fields", "").split(",") if g}
        if groups - _SCORE_FIELD_GROUPS:
            return 400, {"message": f"unknown field group(s): {sorted(groups - _SCORE_FIELD_GROUPS)}"}
        with self._lock:
            rows = list(self.scores)

        def csv(k):
            return {v.strip() for v in q[k].split(",")} if q.get(k) else None

        ids, names, types, traces = csv("id"), csv("name"), csv("dataType"), csv("traceId")
        lo = _parse(q["fromTimestamp"]) if q.get("fromTimestamp") else None
        hi = _parse(q["toTimestamp"]) if q.get("toTimestamp") else None
        rows = [
            s for s in rows
            if (ids is None or s.id in ids) and (names is None or s.name in names)
            and (types is None or s.data_type in {t.upper() for t in types})
            and (traces is None or s.trace_id in traces)
            and (lo is None or s.timestamp >= lo) and (hi is None or s.timestamp < hi)
        ]
        rows.sort(key=lambda s: (s.timestamp, s.id), reverse=True)  # newest first
        if q.get("cursor"):  # keyset: strictly after the last row of the previous page
            c = _dec_cursor(q["cursor"])
            key = (_parse(c["ts"]), c["id"])
            rows = [s for s in rows if (s.timestamp, s.id) < key]
        page = rows[:limit]
        meta: dict = {"limit": limit}
        if len(rows) > limit:
            meta["cursor"] = _enc_cursor({"ts": _iso(page[-1].timestamp), "id": page[-1].id})
        return 200, {"data": [self._score_json(s, groups) for s in page], "meta": meta}

    def _list_observations(self, q: dict[str, str]) -> tuple[int, dict]:
        if q.get("parseIoAsJson") == "true":
            return 400, {"message": "parseIoAsJson is deprecated"}
        limit = int(q.get("limit", 50))
        if limit > 1000 or limit < 1:
            return 400, {"message": "limit must be between 1 and 1000"}
        groups = {g for g in q.get("fields", "").split(",") if g} or {"core", "basic"}
        if groups - _OBS_FIELD_GROUPS:
            return 400, {"message": f"unknown field group(s): {sorted(groups - _OBS_FIELD_GROUPS)}"}
        with self._lock:
            rows = [o for o in self.observations
                    if (not q.get("traceId") or o.trace_id == q["traceId"])
                    and (not q.get("type") or o.type == q["type"])]
        rows.sort(key=lambda o: (o.start_time, o.id), reverse=True)
        offset = _dec_cursor(q["cursor"])["offset"] if q.get("cursor") else 0
        page = rows[offset:offset + limit]
        meta: dict = {}
        if offset + limit < len(rows):
            meta["cursor"] = _enc_cursor({"offset": offset + limit})
        return 200, {"data": [self._obs_json(o, groups) for o in page], "meta": meta}

    def handle(self, method: str, path: str, query: dict[str, str], auth: str | None) -> tuple[int, dict]:
        with self._lock:
            self.requests.append((path, query))
            if self._fail > 0:
                self._fail -= 1
                return self._fail_status, {"message": "Service Unavailable (fake)"}
        expected = "Basic " + base64.b64encode(f"{self.public_key}:{self.secret_key}".encode()).decode()
        if auth != expected:
            return 401, {"message": "Invalid credentials. Confirm that you've configured the correct host."}
        if method == "GET" and path == "/api/public/v3/scores":
            return self._list_scores(query)
        if method == "GET" and path == "/api/public/v2/observations":
            return self._list_observations(query)
        return 404, {"message": f"fake langfuse does not serve {method} {path}"}

    # -- server -------------------------------------------------------------

    def serve(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        u = urlparse(target)
        query = {k: v[-1] for k, v in parse_qs(u.query).items()}
        return json_answer(*self.handle(method, u.path, query, headers.get("authorization")))


def fake_langfuse(public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test") -> FakeLangfuse:
    """A fake to run with `with`: started on 127.0.0.1 and a free port, stopped on exit."""
    return FakeLangfuse(public_key, secret_key)
