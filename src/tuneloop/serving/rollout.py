"""The pieces of a promotion onto a serving endpoint; the `promote` flow composes them.

    load the candidate into the idle slot -> validate it there (smoke accuracy, p95 latency)
    -> blue-green: switch, watch, roll back on a breach
    -> canary: 10/25/50/75/100% of routed traffic, an analysis at each step, roll back on a breach
    -> move the registry alias (compare-and-swap) once the candidate is live

Everything here talks to the server over HTTP (httpx), so the flow and the
server can run on different machines. `analyze` is a pure function.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from tuneloop.errors import TuneloopError, UserError
from tuneloop.runtime.http import HttpClient, server_message


class PromotionError(TuneloopError):
    """The server refused an admin call (bad slot state, unknown version ...)."""


@dataclass
class SmokeItem:
    messages: list[dict]
    answer: str


@dataclass
class Check:
    """An analysis: ok, and why not."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    accuracy: float | None = None
    requests: int = 0
    error_rate: float = 0.0
    p95_s: float | None = None
    at: str = ""

    def to_json(self) -> dict:
        return asdict(self)


TENANT_HEADER = "x-tuneloop-tenant"


class ServingAdmin(HttpClient):
    """Client of a tuneloop server's admin and OpenAI routes, with `HttpClient`'s retries.

    Which calls are retried once sent (tuneloop.runtime.http's idempotency rule): status and stats (GET),
    switch and canary (they set a named state: applied twice, nothing changes). Load, unload and rollback
    are not: a second rollback undoes the first, and a second load starts over while the first still runs.
    """

    def __init__(self, server: str, token: str | None = None, timeout: float = 120.0, *, max_retries: int = 2,
                 backoff: float = 0.5, transport: httpx.BaseTransport | None = None, tenant: str | None = None):
        """`tenant`: sent as x-tuneloop-tenant, the tenant whose slots a service's loop key acts on (a
        tenant's own admin key names its tenant itself; `tuneloop serve` has one tenant-less router)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if tenant:
            headers[TENANT_HEADER] = tenant
        super().__init__(server, "the tuneloop server", headers=headers, timeout=timeout, max_retries=max_retries,
                         backoff=backoff, max_backoff=8.0, transport=transport)
        self.server = self.base_url

    def refused(self, r: httpx.Response, method: str, path: str, sent: dict | None) -> TuneloopError:
        return PromotionError(f"{method} {path} -> {r.status_code}: {server_message(r)[0]}")

    def status(self) -> dict:
        return self.json("GET", "/admin/status")

    def load(self, slot: str, version: str) -> dict:
        return self.json("POST", f"/admin/slots/{slot}/load", json_body={"version": version})

    def unload(self, slot: str) -> dict:
        return self.json("POST", f"/admin/slots/{slot}/unload")

    def switch(self, slot: str) -> dict:
        return self.json("POST", "/admin/switch", idempotent=True, json_body={"slot": slot})

    def canary(self, slot: str, weight: float) -> dict:
        return self.json("POST", "/admin/canary", idempotent=True, json_body={"slot": slot, "weight": weight})

    def rollback(self) -> dict:
        return self.json("POST", "/admin/rollback")

    def stats(self, slot: str, since: float | None = None, version: str | None = None) -> dict:
        params = {k: v for k, v in (("since", since), ("version", version)) if v is not None}
        return self.json("GET", f"/admin/slots/{slot}/stats", params=params)

    def ask(self, model: str, messages: list[dict], max_tokens: int) -> tuple[str | None, float, dict]:
        """(answer or None on failure, seconds, response headers) for one chat completion, temperature 0.
        Never retried: a probe measures the server, so a failure counts as one."""
        t0 = time.perf_counter()
        try:
            r = self.http.post(f"{self.base_url}/v1/chat/completions",
                               json={"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0})
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                return None, dt, dict(r.headers)
            return r.json()["choices"][0]["message"]["content"], dt, dict(r.headers)
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            return None, time.perf_counter() - t0, {}


def read_smoke(path: str | Path, limit: int) -> list[SmokeItem]:
    """Chat rows (the training data format) as questions with expected answers; the last assistant turn answers."""
    from tuneloop.data.validate import validate_file

    report = validate_file(path, min_examples=1)
    if report.errors:
        first = report.errors[0]
        raise UserError(str(path), f"the smoke set must be valid chat rows (line {first.line}: {first.message})",
                        "check it with `tuneloop data validate`")
    items = [SmokeItem(r.prompt_messages, r.answer) for r in report.rows[:limit]]
    if not items:
        raise UserError(str(path), "the smoke set holds no rows", "give a JSONL file of chat rows")
    return items


def default_smoke_path(manifest: dict) -> Path:
    from tuneloop.runtime import shared
    from tuneloop.settings import get_settings

    dv = manifest.get("dataset_version") or ""
    if dv:
        shared.pull(get_settings().datasets_dir / dv[:16], "datasheet.json")  # trained on another machine
    path = get_settings().datasets_dir / dv[:16] / "eval.jsonl"
    if not dv or not path.exists():
        raise UserError("smoke", f"no smoke set given and the version's evaluation rows ({path}) are not here",
                        "set `smoke:` in the promote spec to a JSONL file of chat rows")
    return path


def probe(admin: ServingAdmin, model: str, items: list[SmokeItem], max_tokens: int) -> dict:
    """Ask each item through `model` (a slot pin or the routed name): accuracy, failures, latencies."""
    from tuneloop.evals.suite import normalize_answer

    correct, failed, lat, versions = 0, 0, [], {}
    for it in items:
        ans, dt, headers = admin.ask(model, it.messages, max_tokens)
        lat.append(dt)
        if ans is None:
            failed += 1
            continue
        v = headers.get("x-tuneloop-version", "?")
        versions[v] = versions.get(v, 0) + 1
        correct += normalize_answer(ans) == normalize_answer(it.answer)
    from tuneloop.serving.slots import quantile

    return {"items": len(items), "accuracy": correct / len(items) if items else None, "failed": failed,
            "p50_s": quantile(lat, 0.5), "p95_s": quantile(lat, 0.95), "versions": versions}


def analyze(stats: dict, probed: dict | None, *, min_accuracy: float, max_p95_s: float, max_error_rate: float,
            min_requests: int = 0, at: str = "") -> Check:
    """Judge a slot from its server-side request stats and a probe of known answers."""
    reasons = []
    n, err, p95 = int(stats.get("requests", 0)), float(stats.get("error_rate", 0.0)), stats.get("p95_s")
    if n < min_requests:
        reasons.append(f"only {n} requests observed, {min_requests} needed to judge")
    if err > max_error_rate:
        reasons.append(f"error rate {err:.3f} > {max_error_rate:.3f} ({stats.get('errors', 0)} of {n})")
    if p95 is not None and p95 > max_p95_s:
        reasons.append(f"p95 latency {p95:.3f} s > {max_p95_s:.3f} s")
    acc = None
    if probed is not None:
        acc = probed["accuracy"]
        if probed["failed"]:
            reasons.append(f"{probed['failed']} of {probed['items']} probe requests failed")
        if acc is not None and acc < min_accuracy:
            reasons.append(f"smoke accuracy {acc:.3f} < {min_accuracy:.3f}")
        if probed["p95_s"] is not None and probed["p95_s"] > max_p95_s:
            reasons.append(f"probe p95 latency {probed['p95_s']:.3f} s > {max_p95_s:.3f} s")
    return Check(not reasons, reasons, acc, n, err, p95, at)


def check_slot(admin: ServingAdmin, slot: str, items: list[SmokeItem], since: float, spec, at: str,
               min_requests: int = 0) -> Check:
    """Probe the slot with smoke items, then judge it on the server's stats since `since` (probes included);
    thresholds from a PromoteSpec."""
    probed = probe(admin, slot, items, spec.max_tokens)
    return analyze(admin.stats(slot, since), probed, min_accuracy=spec.min_accuracy,
                   max_p95_s=spec.max_p95_seconds, max_error_rate=spec.max_error_rate,
                   min_requests=min_requests, at=at)


def idle_slot(status: dict) -> str:
    from tuneloop.serving.slots import other

    return other(status["live"])


def summary_markdown(result: dict) -> str:
    lines = [f"# Promotion of {result['version']}: {result['outcome']}", "", result.get("reason", ""), "",
             "| step | ok | accuracy | requests | error rate | p95 s | reasons |", "|---|---|---|---|---|---|---|"]
    for c in result.get("checks", []):
        acc = "" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
        p95 = "" if c["p95_s"] is None else f"{c['p95_s']:.3f}"
        lines.append(f"| {c['at']} | {'yes' if c['ok'] else 'NO'} | {acc} | {c['requests']} | "
                     f"{c['error_rate']:.3f} | {p95} | {'; '.join(c['reasons'])} |")
    return "\n".join(lines) + "\n"


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2, default=str)
