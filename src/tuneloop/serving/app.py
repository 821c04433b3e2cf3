"""An OpenAI-compatible HTTP server with blue and green slots.

Public routes (the `openai` SDK talks to them unchanged, `base_url=http://host:port/v1`)::

    POST /v1/chat/completions   {"model", "messages", "max_tokens"|"max_completion_tokens",
                                 "temperature", "top_p", "stop", "seed", "n": 1, "stream": false}
    POST /v1/completions        {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed"}
    GET  /v1/models             the served name and each loaded version
    GET  /health                200 when the live slot is ready, else 503; with its dependencies
    GET  /metrics               Prometheus text

`model` is the served name (default "tuneloop": live slot, or the canary's
share of it), "tuneloop@blue" / "tuneloop@green" to pin a slot, or a loaded
version id ("v3"). Every answer carries `x-tuneloop-slot` and
`x-tuneloop-version` headers.

Admin routes (deploy management; when an admin token is set they need
`Authorization: Bearer <token>`)::

    GET  /admin/status                      slots, live, canary, recent events
    GET  /admin/slots/{slot}/stats?since=T  requests, error rate, p50/p95 latency since T (unix s)
    POST /admin/slots/{slot}/load           {"version": "v3" | "champion" | "base"}; blocks until ready
    POST /admin/slots/{slot}/unload         waits for requests in flight, then frees the slot
    POST /admin/switch                      {"slot": "green"}: make it live; the old one stays warm
    POST /admin/canary                      {"slot": "green", "weight": 0.1}
    POST /admin/rollback                    end the canary, or switch back to the previous slot
    POST /admin/slots/{slot}/faults         chaos testing, only when the server runs with faults allowed:
                                            {"error_rate": 0.5, "delay_s": 0.2, "corrupt": true}; {} clears
                                            (a loaded version starts with none)

Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tuneloop.errors import ConflictError, TuneloopError, UserError
from tuneloop.serving.engine import Engine
from tuneloop.serving.slots import SLOTS, Router, takes_turn

MAX_BODY_TOKENS = 4096


class Loader:
    """Turns a version reference into an Engine: "base" for the bare base model, else a registry ref."""

    def __init__(self, registry=None, base_model: str | None = None):
        self.registry = registry
        self.base_model = base_model

    def __call__(self, ref: str) -> Engine:
        from tuneloop.basemodel import resolve_base_model
        from tuneloop.settings import get_settings

        models = get_settings().models_dir
        if ref == "base":
            if not self.base_model:
                raise UserError(ref, "serving the bare base needs a base model", "start the server with --base")
            return Engine.load("base", resolve_base_model(self.base_model, models, log=lambda m: None), None,
                               self.base_model)
        if self.registry is None:
            raise UserError(ref, "loading a version needs a registry", "start the server with --registry")
        v = self.registry.get(ref)
        adapter = self.registry.adapter_for(v.id)  # sha256 of every file checked (and fetched from S3) first
        base = v.manifest["base_model"]
        return Engine.load(v.id, resolve_base_model(base, models, log=lambda m: None), adapter, base)


def _error(status: int, message: str, etype: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": etype, "param": param, "code": code}},
                        status_code=status)


def _num(body: dict, key: str, default, lo, hi, kind=float):
    v = body.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise UserError(f"{key}={v!r}", f"{key} must be a number between {lo} and {hi}", f"send a valid {key}")
    v = kind(v)
    if not lo <= v <= hi:
        raise UserError(f"{key}={v!r}", f"{key} must be between {lo} and {hi}", f"send a {key} in range")
    return v


def _stops(body: dict) -> list[str]:
    s = body.get("stop")
    if s is None:
        return []
    if isinstance(s, str):
        return [s]
    if isinstance(s, list) and all(isinstance(x, str) for x in s) and len(s) <= 4:
        return s
    raise UserError(f"stop={s!r}", "stop is a string or a list of at most 4 strings", "fix the stop field")


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise UserError("messages", "must be a non-empty list of {role, content} objects", "send messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise UserError(f"messages[{i}]", "each message needs a role of system, user, assistant or developer",
                            "fix the message's role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise UserError(f"messages[{i}].content", "must be a string (or text content parts)", "send text")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    return out


class InjectedFault(TuneloopError):
    """A failure injected on purpose (chaos testing)."""


def create_app(router: Router | None = None, loader: Loader | None = None, served_name: str = "tuneloop",
               admin_token: str | None = None, registry=None, allow_faults: bool = False) -> FastAPI:
    router = router or Router()
    loader = loader or Loader(registry)
    app = FastAPI(title="tuneloop serving", version="1", docs_url=None, redoc_url=None)
    app.state.router = router
    metrics = CollectorRegistry()
    requests_total = Counter("tuneloop_serving_requests_total", "Requests answered, by slot, version and outcome",
                             ["slot", "version", "outcome"], registry=metrics)
    latency = Histogram("tuneloop_serving_request_seconds", "Time to answer a request", ["slot"],
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=metrics)
    in_flight = Gauge("tuneloop_serving_in_flight", "Requests being answered", ["slot"], registry=metrics)
    live_info = Gauge("tuneloop_serving_live", "1 for the live slot's version", ["slot", "version"],
                      registry=metrics)
    weight_g = Gauge("tuneloop_serving_canary_weight", "Fraction of routed traffic sent to the canary slot",
                     registry=metrics)

    @app.exception_handler(UserError)
    async def _user_error(_req, exc: UserError):
        return _error(400, str(exc))

    @app.exception_handler(TuneloopError)
    async def _tl_error(_req, exc: TuneloopError):
        return _error(409 if isinstance(exc, ConflictError) else 500, str(exc), "server_error")

    def _admin(request: Request) -> JSONResponse | None:
        if admin_token is None:
            return None
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {admin_token}".encode()):
            return _error(401, "admin routes need 'Authorization: Bearer <token>' with the server's admin token",
                          "authentication_error")
        return None

    async def _json(request: Request) -> dict:
        try:
            body = await request.json()
        except Exception:
            raise UserError("request body", "must be a JSON object", "send Content-Type: application/json")
        if not isinstance(body, dict):
            raise UserError("request body", "must be a JSON object", "send a JSON object")
        return body

    async def _answer(request: Request, kind: str):
        body = await _json(request)
        if body.get("stream"):
            raise UserError("stream=true", "streaming is not supported by this server yet", "send stream=false")
        if _num(body, "n", 1, 1, 1, int) != 1:
            raise UserError("n", "only n=1 is supported", "send n=1")
        default_max = 64 if kind == "chat" else 16
        max_tokens = _num(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens",
                          default_max, 1, MAX_BODY_TOKENS, int)
        args = dict(max_tokens=max_tokens, temperature=_num(body, "temperature", 0.0, 0.0, 2.0),
                    top_p=_num(body, "top_p", 1.0, 0.0, 1.0), stop=_stops(body),
                    seed=None if body.get("seed") is None else _num(body, "seed", 0, -2**63, 2**63 - 1, int))
        if kind == "chat":
            payload = _messages(body)
        else:
            payload = body.get("prompt")
            if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], str):
                payload = payload[0]
            if not isinstance(payload, str):
                raise UserError("prompt", "must be a string", "send one prompt string per request")
        model = body.get("model") or served_name
        if not isinstance(model, str):
            raise UserError("model", "must be a string", f"send model={served_name!r}")
        slot = router.route(model, served_name)
        t0 = time.perf_counter()
        outcome = "error"
        version = "?"
        try:
            with router.serving(slot) as engine:
                version = engine.version
                in_flight.labels(slot).inc()
                try:
                    fn = engine.chat if kind == "chat" else engine.complete
                    out = await anyio.to_thread.run_sync(lambda: fn(payload, **args))
                    faults = router.slots[slot].faults
                    if faults:
                        await _inject(router.slots[slot], faults, out)
                finally:
                    in_flight.labels(slot).dec()
            outcome = "ok"
        finally:
            requests_total.labels(slot, version, outcome).inc()
            latency.labels(slot).observe(time.perf_counter() - t0)
        rid, created = uuid.uuid4().hex[:24], int(time.time())
        usage = {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                 "total_tokens": out.prompt_tokens + out.completion_tokens}
        if kind == "chat":
            data: dict[str, Any] = {
                "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": f"{slot}-{version}",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                             "logprobs": None, "finish_reason": out.finish_reason}], "usage": usage}
        else:
            data = {"id": f"cmpl-{rid}", "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": f"{slot}-{version}",
                    "choices": [{"index": 0, "text": out.text, "logprobs": None,
                                 "finish_reason": out.finish_reason}], "usage": usage}
        return JSONResponse(data, headers={"x-tuneloop-slot": slot, "x-tuneloop-version": version})

    async def _inject(s, faults: dict, out) -> None:
        s._served += 1
        if faults.get("delay_s"):
            await anyio.sleep(float(faults["delay_s"]))
        rate = float(faults.get("error_rate") or 0.0)
        if rate and takes_turn(s._served, rate):
            raise InjectedFault(f"injected failure on slot {s.name} (error_rate {rate})")
        if faults.get("corrupt"):
            out.text = "".join(reversed(out.text)) + " ???"

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _answer(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _answer(request, "completion")

    @app.get("/v1/models")
    async def models():
        st = router.status()
        created = int(time.time())
        data = [{"id": served_name, "object": "model", "created": created, "owned_by": "tuneloop"}]
        for name, s in st["slots"].items():
            if s["version"]:
                data.append({"id": s["version"], "object": "model", "created": int(s["loaded_at"]),
                             "owned_by": f"tuneloop@{name}"})
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        st = router.status()
        live = st["slots"][st["live"]]
        deps: dict[str, Any] = {"live_slot": {"ok": live["state"] == "ready", "slot": st["live"],
                                              "version": live["version"]}}
        if registry is not None:
            try:
                await anyio.to_thread.run_sync(registry.aliases)
                deps["registry"] = {"ok": True}
            except Exception as e:  # a health check reports, never raises
                deps["registry"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        ok = all(d["ok"] for d in deps.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "live": st["live"],
                             "canary": st["canary"], "dependencies": deps}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus():
        st = router.status()
        live_info.clear()
        live = st["slots"][st["live"]]
        if live["version"]:
            live_info.labels(st["live"], live["version"]).set(1)
        weight_g.set(st["canary"]["weight"] if st["canary"] else 0.0)
        return PlainTextResponse(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    # -- admin ---------------------------------------------------------------
    @app.get("/admin/status")
    async def admin_status(request: Request):
        return _admin(request) or router.status()

    @app.get("/admin/slots/{slot}/stats")
    async def admin_stats(slot: str, request: Request, since: float | None = None, version: str | None = None):
        if (denied := _admin(request)) is not None:
            return denied
        if slot not in SLOTS:
            raise UserError(slot, f"a slot is one of {', '.join(SLOTS)}", "name blue or green")
        return router.slots[slot].stats(since, version)

    @app.post("/admin/slots/{slot}/load")
    async def admin_load(slot: str, request: Request):
        if (denied := _admin(request)) is not None:
            return denied
        body = await _json(request)
        ref = body.get("version")
        if not isinstance(ref, str) or not ref:
            raise UserError("version", "must name a registry version, alias, or 'base'", 'send {"version": "v3"}')
        await anyio.to_thread.run_sync(lambda: router.load(slot, lambda: loader(ref)))  # drains: off the loop
        return router.status()

    @app.post("/admin/slots/{slot}/unload")
    async def admin_unload(slot: str, request: Request):
        if (denied := _admin(request)) is not None:
            return denied
        drained = await anyio.to_thread.run_sync(lambda: router.unload(slot))
        return {"drained": drained, **router.status()}

    @app.post("/admin/switch")
    async def admin_switch(request: Request):
        if (denied := _admin(request)) is not None:
            return denied
        return router.switch((await _json(request)).get("slot", ""))

    @app.post("/admin/canary")
    async def admin_canary(request: Request):
        if (denied := _admin(request)) is not None:
            return denied
        body = await _json(request)
        return router.set_canary(body.get("slot", ""), _num(body, "weight", None, 0.0, 1.0))

    @app.post("/admin/slots/{slot}/faults")
    async def admin_faults(slot: str, request: Request):
        if (denied := _admin(request)) is not None:
            return denied
        if not allow_faults:
            return _error(403, "fault injection is off; start the server with --allow-faults (testing only)",
                          "permission_error")
        body = await _json(request)
        unknown = sorted(set(body) - {"error_rate", "delay_s", "corrupt"})
        if unknown:
            raise UserError(unknown, "faults are error_rate, delay_s and corrupt", "drop the other keys")
        faults = {"error_rate": _num(body, "error_rate", 0.0, 0.0, 1.0), "delay_s": _num(body, "delay_s", 0.0, 0.0, 60.0),
                  "corrupt": bool(body.get("corrupt", False))}
        router.slots[router.ready(slot).name].faults = {k: v for k, v in faults.items() if v}
        return router.status()

    @app.post("/admin/rollback")
    async def admin_rollback(request: Request):
        return _admin(request) or router.rollback()

    return app
