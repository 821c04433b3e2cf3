"""A local, in-memory stand-in for the part of LangSmith's REST API that the
real `langsmith` SDK calls when tuneloop reads feedback.

Endpoints (paths as the SDK builds them: `api_url + path`; a leading
`/api/v1` is accepted too):

- `GET /info`                     server info (`Client.info`)
- `GET /sessions?name=&limit=`    project lookup by name (`Client.read_project`), a JSON list
- `GET /sessions/{id}`            project by id
- `POST /runs/query`              `Client.list_runs`: JSON body with `session`, `id`,
                                  `is_root`, `start_time`, `trace`, `parent_run`,
                                  `run_type`, `error`, `select`, `limit`, `cursor`;
                                  answers `{"runs": [...], "cursors": {"next": ...}}`
- `GET /feedback`                 `Client.list_feedback`: query `run`, `key`, `session`,
                                  `source`, `min_created_at`, `max_created_at`,
                                  `has_score`, `has_comment`, `limit`, `offset`;
                                  answers a JSON list, newest first

Anything else answers 404; a `/runs/query` filter it does not implement
(`filter`, `query`, ...) answers 400 rather than being silently ignored.

Test controls: `add_project`, `add_run`, `add_feedback`, `fail_next(n, status,
after=k)` (n requests after the next k answer `status`, retries included), `require_api_key(key)`
(a missing or wrong `x-api-key` answers 401), `runs_page_size` (cursor pages
of /runs/query) and `requests` (a log of what was called).
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from fakes.base import Answer, FakeServer, json_answer

TENANT_ID = "00000000-0000-4000-8000-000000000001"
FEEDBACK_MAX_LIMIT = 100  # the real API caps one page of GET /feedback at 100

_RUNS_QUERY_SUPPORTED = {
    "session", "id", "is_root", "start_time", "trace", "parent_run", "run_type", "error",
    "select", "limit", "cursor", "order",
}


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat()


def _parse_ts(s: str) -> datetime:
    ts = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _as_list(v: Any) -> list:
    if v is None:
        return []
    return [str(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


class FakeLangSmith(FakeServer):
    """The in-memory state and the HTTP server around it."""

    name = "fake-langsmith"

    def __init__(self):
        super().__init__()
        self.projects: dict[str, dict] = {}  # id -> project
        self.runs: dict[str, dict] = {}  # id -> run
        self.feedback: dict[str, dict] = {}  # id -> feedback
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, query or body)
        self.runs_page_size = 100
        self._api_key: str | None = None
        self._failures: list[int | None] = []  # for the next requests: a status, or None to pass
        self._lock = threading.RLock()
        self._clock = datetime.now(timezone.utc) - timedelta(days=1)

    def serve(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        return json_answer(*self.handle(method, target, headers, raw))

    # ---- test controls ------------------------------------------------------
    def fail_next(self, n: int, status: int = 503, *, after: int = 0) -> None:
        """Answer `status` to n requests, after letting `after` requests through."""
        with self._lock:
            self._failures.extend([None] * after + [status] * n)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def require_api_key(self, key: str | None) -> None:
        self._api_key = key

    def tick(self, seconds: float = 1.0) -> datetime:
        """Advance the fake clock that default timestamps come from; returns the new time."""
        with self._lock:
            self._clock += timedelta(seconds=seconds)
            return self._clock

    def _now(self) -> datetime:
        with self._lock:  # strictly increasing, so default timestamps never tie
            self._clock += timedelta(milliseconds=1)
            return self._clock

    def add_project(self, name: str) -> str:
        with self._lock:
            for p in self.projects.values():
                if p["name"] == name:
                    return p["id"]
            pid = str(uuid.uuid4())
            self.projects[pid] = {
                "id": pid, "name": name, "tenant_id": TENANT_ID, "start_time": _iso(self._now()),
                "end_time": None, "description": None, "extra": None, "reference_dataset_id": None,
            }
            return pid

    def add_run(
        self,
        project: str,
        inputs: dict | None = None,
        outputs: dict | None = None,
        *,
        metadata: dict | None = None,
        extra: dict | None = None,
        parent_run_id: str | None = None,
        name: str = "chat",
        run_type: str = "chain",
        start_time: datetime | None = None,
        error: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """A run in `project` (created if new); a child run when `parent_run_id` is given."""
        with self._lock:
            pid = self.add_project(project)
            rid = run_id or str(uuid.uuid4())
            start = start_time or self._now()
            parent = self.runs.get(parent_run_id) if parent_run_id else None
            trace_id = parent["trace_id"] if parent else rid
            stamp = start.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + rid
            dotted = f"{parent['dotted_order']}.{stamp}" if parent else stamp
            ex = dict(extra or {})
            if metadata is not None:
                ex["metadata"] = dict(metadata)
            self.runs[rid] = {
                "id": rid, "name": name, "run_type": run_type, "start_time": _iso(start),
                "end_time": _iso(start + timedelta(milliseconds=500)), "inputs": inputs or {},
                "outputs": outputs, "extra": ex, "error": error, "session_id": pid,
                "parent_run_id": parent_run_id, "parent_run_ids": [parent_run_id] if parent_run_id else [],
                "trace_id": trace_id, "dotted_order": dotted, "status": "error" if error else "success",
                "tags": [], "events": [], "feedback_stats": None, "reference_example_id": None,
                "app_path": f"/o/{TENANT_ID}/projects/p/{pid}/r/{rid}",
            }
            return rid

    def add_feedback(
        self,
        run_id: str,
        key: str = "user_score",
        score: float | bool | None = None,
        *,
        value: Any = None,
        comment: str | None = None,
        correction: dict | str | None = None,
        created_at: datetime | None = None,
        source_type: str = "api",
        feedback_id: str | None = None,
    ) -> str:
        with self._lock:
            run = self.runs[run_id]
            fid = feedback_id or str(uuid.uuid4())
            created = created_at or self._now()
            self.feedback[fid] = {
                "id": fid, "created_at": _iso(created), "modified_at": _iso(created),
                "run_id": run_id, "trace_id": run["trace_id"], "key": key, "score": score,
                "value": value, "comment": comment, "correction": correction,
                "feedback_source": {"type": source_type, "metadata": {}, "user_id": None},
                "session_id": run["session_id"], "start_time": run["start_time"], "extra": None,
                "comparative_experiment_id": None, "feedback_group_id": None,
            }
            return fid

    # ---- request handling ---------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict, body: bytes) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path = parts.path
        if path.startswith("/api/v1/"):
            path = path[len("/api/v1"):]
        path = path.rstrip("/") or "/"
        query = parse_qs(parts.query, keep_blank_values=True)
        payload: Any = None
        if body:
            try:
                payload = json.loads(body)
            except ValueError:
                return 422, {"detail": "body is not JSON"}
        with self._lock:
            self.requests.append((method, path, payload if method == "POST" else query))
            if self._failures:
                status = self._failures.pop(0)
                if status is not None:
                    return status, {"detail": f"injected failure {status}"}
        if self._api_key is not None and headers.get("x-api-key") != self._api_key:
            return 401, {"detail": "Invalid token"}
        with self._lock:
            if method == "GET" and path == "/info":
                return 200, {"version": "0.0.0-fake", "license_expiration_time": None,
                             "batch_ingest_config": {"size_limit": 100, "scale_up_nthreads_limit": 1}}
            if method == "GET" and path == "/sessions":
                return 200, self._list_sessions(query)
            if method == "GET" and path.startswith("/sessions/"):
                p = self.projects.get(path.split("/", 2)[2])
                return (200, p) if p else (404, {"detail": "Session not found"})
            if method == "POST" and path == "/runs/query":
                return self._query_runs(payload or {})
            if method == "GET" and path == "/feedback":
                return self._list_feedback(query)
        return 404, {"detail": f"Not Found: {method} {path}"}

    def _list_sessions(self, q: dict) -> list:
        names = q.get("name")
        found = [p for p in self.projects.values() if not names or p["name"] in names]
        limit = int(q.get("limit", ["100"])[0])
        return found[:limit]

    def _query_runs(self, body: dict) -> tuple[int, Any]:
        unsupported = sorted(set(body) - _RUNS_QUERY_SUPPORTED)
        if unsupported:
            return 400, {"detail": f"fake server does not implement runs/query fields {unsupported}"}
        runs = list(self.runs.values())
        if body.get("session"):
            sessions = set(_as_list(body["session"]))
            runs = [r for r in runs if r["session_id"] in sessions]
        if body.get("id"):
            ids = set(_as_list(body["id"]))
            runs = [r for r in runs if r["id"] in ids]
        if body.get("is_root") is not None:
            runs = [r for r in runs if (r["parent_run_id"] is None) == bool(body["is_root"])]
        if body.get("start_time"):
            since = _parse_ts(body["start_time"])
            runs = [r for r in runs if _parse_ts(r["start_time"]) >= since]
        if body.get("trace"):
            runs = [r for r in runs if r["trace_id"] == str(body["trace"])]
        if body.get("parent_run"):
            runs = [r for r in runs if r["parent_run_id"] == str(body["parent_run"])]
        if body.get("run_type"):
            runs = [r for r in runs if r["run_type"] == body["run_type"]]
        if body.get("error") is not None:
            runs = [r for r in runs if (r["error"] is not None) == bool(body["error"])]
        runs.sort(key=lambda r: (r["start_time"], r["id"]), reverse=body.get("order", "desc") != "asc")
        offset = int(body.get("cursor") or 0)
        size = min(int(body.get("limit") or 100), self.runs_page_size)
        page = runs[offset:offset + size]
        nxt = str(offset + size) if offset + size < len(runs) else None
        select = body.get("select")
        if select:
            keep = set(select) | {"id"}
            page = [{k: v for k, v in r.items() if k in keep} for r in page]
        return 200, {"runs": page, "cursors": {"next": nxt}}

    def _list_feedback(self, q: dict) -> tuple[int, Any]:
        items = list(self.feedback.values())
        if q.get("run"):
            runs = set(q["run"])
            items = [f for f in items if f["run_id"] in runs]
        if q.get("key"):
            keys = set(q["key"])
            items = [f for f in items if f["key"] in keys]
        if q.get("session"):
            sessions = set(q["session"])
            items = [f for f in items if f["session_id"] in sessions]
        if q.get("source"):
            sources = set(q["source"])
            items = [f for f in items if f["feedback_source"]["type"] in sources]
        if q.get("min_created_at"):
            lo = _parse_ts(q["min_created_at"][0])
            items = [f for f in items if _parse_ts(f["created_at"]) >= lo]
        if q.get("max_created_at"):
            hi = _parse_ts(q["max_created_at"][0])
            items = [f for f in items if _parse_ts(f["created_at"]) <= hi]
        if q.get("has_score"):
            want = q["has_score"][0].lower() == "true"
            items = [f for f in items if (f["score"] is not None) == want]
        if q.get("has_comment"):
            want = q["has_comment"][0].lower() == "true"
            items = [f for f in items if (f["comment"] is not None) == want]
        items.sort(key=lambda f: (_parse_ts(f["created_at"]), f["id"]), reverse=True)
        limit = min(int(q.get("limit", ["100"])[0]), FEEDBACK_MAX_LIMIT)
        offset = int(q.get("offset", ["0"])[0])
        return 200, items[offset:offset + limit]


@pytest.fixture
def langsmith_fake(monkeypatch) -> Iterator[FakeLangSmith]:
    """A fresh fake LangSmith per test, with tracing off and the SDK's default
    endpoint pointed at it, so nothing tries to reach the internet."""
    for var in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_WORKSPACE_ID", "LANGSMITH_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    with FakeLangSmith() as fake:
        monkeypatch.setenv("LANGSMITH_TRACING", "false")
        monkeypatch.setenv("LANGSMITH_TRACING_V2", "false")
        monkeypatch.setenv("LANGCHAIN_TRACING_V2", "false")
        monkeypatch.setenv("LANGSMITH_ENDPOINT", fake.url)
        monkeypatch.setenv("LANGCHAIN_ENDPOINT", fake.url)
        yield fake
