"""An OpenAI-compatible HTTP server with blue and green slots.

Public routes (the `openai` SDK talks to them unchanged, `base_url=http://host:port/v1`)::

    POST /v1/chat/completions   {"model", "messages", "max_tokens"|"max_completion_tokens",
                                 "temperature", "top_p", "stop", "seed", "n": 1, "stream",
                                 "stream_options": {"include_usage"}}
    POST /v1/completions        {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed",
                                 "stream", "stream_options"}
    GET  /v1/models             the served name and each loaded version
    GET  /health                200 when the live slot is ready, else 503; with its dependencies
    GET  /metrics               Prometheus text

`model` is the served name (default "tuneloop": live slot, or the canary's
share of it), "tuneloop@blue" / "tuneloop@green" to pin a slot, or a loaded
version id ("v3"); anything else is a 404 model_not_found. Every answer
carries `x-tuneloop-slot` and `x-tuneloop-version` headers. Bodies are
checked field by field (bodies.py) before any model work; then at most
`max_concurrency` generations run and `max_queue` wait, and beyond that the
answer is 429 with Retry-After (capacity.py). Running generations of one
model decode together in its batch (decode.py); `stream=true` sends the
answer as it is made (streaming.py).

With a keys file (keys.py) every route but /health needs `Authorization:
Bearer <key>`; each tenant has its own slots, served name and metrics, and a
key reaches only its tenant's (a `user` key the /v1 routes, an `admin` key
also the admin routes and /metrics).

Admin routes (deploy management; without keys, when an admin token is set
they need `Authorization: Bearer <token>`)::

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

Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}; `param` names the field.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneloop.errors import ConflictError, TuneloopError, UserError
from tuneloop.serving import bodies, streaming
from tuneloop.serving.bodies import BadField, BodyTooLarge
from tuneloop.serving.capacity import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_QUEUE, Admission, Overloaded
from tuneloop.serving.engine import DEFAULT_MAX_BATCH, Engine
from tuneloop.serving.keys import KeyRing
from tuneloop.serving.slots import SLOTS, Router, UnknownModel, takes_turn

DEFAULT_TENANT = "default"  # the tenant of a registry version whose manifest names none
_VERSION_REF = re.compile(r"v[1-9]\d{0,8}")


class Loader:
    """Turns a version reference into an Engine: "base" for the bare base model, else a registry ref.

    Every version is an adapter on one shared copy of its base (`pool`, an AdapterPool): blue and green, and
    each tenant's slots, cost an adapter's memory each, not a model's. Requests to the slots of one base
    decode in one batch."""

    def __init__(self, registry=None, base_model: str | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                 pool=None):
        from tuneloop.serving.adapters import AdapterPool

        self.registry = registry
        self.base_model = base_model
        self.pool = pool if pool is not None else AdapterPool(max_batch=max_batch)

    def owner(self, ref: str) -> tuple[str, str]:
        """(version id, tenant) of a registry ref: the manifest's `tenant`, else "default"."""
        if self.registry is None:
            raise UserError(ref, "loading a version needs a registry", "start the server with --registry")
        v = self.registry.get(ref)
        return v.id, v.manifest.get("tenant") or DEFAULT_TENANT

    def __call__(self, ref: str) -> Engine:
        if ref == "base":
            if not self.base_model:
                raise UserError(ref, "serving the bare base needs a base model", "start the server with --base")
            return self.pool.engine(self.base_model)
        if self.registry is None:
            raise UserError(ref, "loading a version needs a registry", "start the server with --registry")
        return self.pool.version_engine(self.registry, ref)


class Denied(TuneloopError):
    """401 (no or unknown key, wrong admin token) or 403 (a key without the role, or another tenant's data)."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)


class InjectedFault(TuneloopError):
    """A failure injected on purpose (chaos testing)."""


class Metrics:
    """One tenant's Prometheus series (each tenant's key scrapes only its own)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tuneloop_serving_requests_total", "Requests answered, by slot, version and outcome",
                                ["slot", "version", "outcome"], registry=r)
        self.latency = Histogram("tuneloop_serving_request_seconds", "Time to answer a request", ["slot"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=r)
        self.in_flight = Gauge("tuneloop_serving_in_flight", "Requests being answered", ["slot"], registry=r)
        self.live = Gauge("tuneloop_serving_live", "1 for the live slot's version", ["slot", "version"], registry=r)
        self.weight = Gauge("tuneloop_serving_canary_weight", "Fraction of routed traffic sent to the canary slot",
                            registry=r)
        self.refused = Counter("tuneloop_serving_refused_total", "Requests refused with 429: server at capacity",
                               registry=r)


@dataclass
class Tenant:
    name: str | None  # None: the single tenant of a server without keys
    router: Router
    served_name: str
    metrics: Metrics


def _clean(message: str, limit: int = 2000) -> str:
    """A message safe to send as JSON text: no lone surrogates (they cannot be encoded), bounded length."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _error(status: int, message: str, etype: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": _clean(message), "type": etype,
                                   "param": None if param is None else _clean(param), "code": code}},
                        status_code=status, headers=headers)


@contextmanager
def _field(param: str):
    """Name the request field a UserError raised in the block is about, unless it names one already."""
    try:
        yield
    except UserError as e:
        if getattr(e, "param", None) is None:
            e.param = param
            if param not in str(e):
                e.args = (f"{param}: {e}",)
        raise


def add_error_handlers(app: FastAPI, admission: Admission) -> None:
    """Every answer but a success is OpenAI's {"error": {"message", "type", "param", "code"}}: a UserError is
    a 400 naming its field (404 for an unknown model or object), a Denied a 401/403, Overloaded a 429."""
    @app.exception_handler(UserError)
    async def _user_error(_req, exc: UserError):
        if isinstance(exc, UnknownModel):
            return _error(404, str(exc), param="model", code="model_not_found")
        if isinstance(exc, BodyTooLarge):
            return _error(413, str(exc))
        status = getattr(exc, "http_status", 400)  # e.g. 404: an object this key's tenant does not have
        return _error(status, str(exc), "not_found_error" if status == 404 else "invalid_request_error",
                      param=getattr(exc, "param", None), code=getattr(exc, "code", None))

    @app.exception_handler(Denied)
    async def _denied(_req, exc: Denied):
        return _error(exc.status, exc.message, "authentication_error" if exc.status == 401 else "permission_error",
                      code="invalid_api_key" if exc.status == 401 else None,
                      headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    @app.exception_handler(Overloaded)
    async def _overloaded(_req, exc: Overloaded):
        return _error(429, f"the server is at capacity: {exc.running} generations running and {exc.waiting} "
                      f"waiting (max_concurrency {admission.max_concurrency}, max_queue {admission.max_queue}). "
                      f"Fix: retry after {exc.retry_after_s} s, or raise the server's --max-concurrency/--max-queue",
                      "rate_limit_error", code="server_at_capacity", headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(TuneloopError)
    async def _tl_error(_req, exc: TuneloopError):
        status = 409 if isinstance(exc, ConflictError) else getattr(exc, "http_status", 500)  # 503: retry later
        return _error(status, str(exc), "server_error", headers={"Retry-After": "5"} if status == 503 else None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return _error(400, f"{param}={bodies.short(first.get('input'))}: {first.get('msg', 'invalid')}. "
                      f"Fix: send a valid {param}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, f"{req.method} {req.url.path}: {exc.detail}. Fix: use one of the routes "
                      "in docs/serving.md",
                      "not_found_error" if exc.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _bug(_req, exc: Exception):  # a bug: the server logs the traceback; the answer names only the type
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details", "server_error")


def create_app(router: Router | None = None, loader: Loader | None = None, served_name: str = "tuneloop",
               admin_token: str | None = None, registry=None, allow_faults: bool = False, *,
               keys: KeyRing | None = None, routers: dict[str, Router] | None = None,
               max_concurrency: int = DEFAULT_MAX_CONCURRENCY, max_queue: int = DEFAULT_MAX_QUEUE,
               engine_health=None, engine_metrics=None) -> FastAPI:
    """Without `keys`: one tenant (`router`), the /v1 routes open, the admin routes behind `admin_token` when set.
    With `keys`: every route but /health needs a key; each tenant has its own Router (`routers`, else empty
    ones) and served name (the keys file's `served_name`, else `served_name`). `engine_health()`: a remote
    engine's state for /health ({"ok": bool, ...}); `engine_metrics()`: its Prometheus text, appended to
    /metrics (vLLM's)."""
    loader = loader or Loader(registry)
    admission = Admission(max_concurrency, max_queue)
    if keys is None:
        tenants: dict[str | None, Tenant] = {None: Tenant(None, router or Router(), served_name, Metrics())}
    else:
        routers = routers or {}
        tenants = {t: Tenant(t, routers.get(t) or Router(), getattr(keys.config.get(t), "served_name", None)
                             or served_name, Metrics()) for t in keys.tenants}
    app = FastAPI(title="tuneloop serving", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = tenants[None].router if keys is None else None
    app.state.tenants, app.state.admission = tenants, admission
    shared = CollectorRegistry()  # process-wide capacity figures, appended to every tenant's scrape
    running_g = Gauge("tuneloop_serving_generations_running", "Generations running (all tenants)", registry=shared)
    waiting_g = Gauge("tuneloop_serving_generations_waiting", "Generations queued for a slot (all tenants)",
                      registry=shared)
    Gauge("tuneloop_serving_max_concurrency", "--max-concurrency", registry=shared).set(max_concurrency)
    Gauge("tuneloop_serving_max_queue", "--max-queue", registry=shared).set(max_queue)

    add_error_handlers(app, admission)

    # -- who is calling ------------------------------------------------------------------------------------
    def _caller(request: Request, role: str) -> Tenant:
        """The caller's tenant, if its key (or the admin token) allows `role` ("user" or "admin")."""
        if keys is None:
            if role == "admin" and admin_token is not None and not _token_ok(request, admin_token):
                raise Denied(401, "admin routes need the server's admin token. Fix: send 'Authorization: Bearer "
                             "<token>' with the server's TUNELOOP_ADMIN_TOKEN")
            return tenants[None]
        key = authorize(request, keys.find, role, missing="this server needs an API key. Fix: send "
                        "'Authorization: Bearer <key>'", unknown="the API key is not valid on this server. Fix: use "
                        "a key from the server's keys file", admin_fix="use an admin key of this tenant")
        return tenants[key.tenant]

    async def _json(request: Request) -> dict:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > bodies.MAX_BODY_BYTES:
                raise BodyTooLarge(bodies.MAX_BODY_BYTES)
            chunks.append(chunk)
        return bodies.parse_json(b"".join(chunks))

    # -- inference -----------------------------------------------------------------------------------------
    async def _answer(request: Request, kind: str):
        t = _caller(request, "user")
        router, m = t.router, t.metrics
        body = await _json(request)
        args = bodies.generation(body, kind)
        stream, include_usage = bodies.streaming(body)
        payload = bodies.messages(body) if kind == "chat" else bodies.prompt(body)
        model = bodies.model(body, t.served_name)
        router.check(model, t.served_name)  # an unknown model is told at once, not after the queue
        t0 = time.perf_counter()
        state = {"outcome": "error", "version": "?", "slot": None}

        def record() -> None:
            if state["slot"] is not None:
                m.requests.labels(state["slot"], state["version"], state["outcome"]).inc()
                m.latency.labels(state["slot"]).observe(time.perf_counter() - t0)

        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await stack.enter_async_context(admission.slot())
            slot = state["slot"] = router.route(model, t.served_name)
            engine = stack.enter_context(router.serving(slot))
            state["version"] = engine.version
            m.in_flight.labels(slot).inc()
            stack.callback(m.in_flight.labels(slot).dec)
            faults = router.slots[slot].faults
            headers = {"x-tuneloop-slot": slot, "x-tuneloop-version": engine.version}
            if stream:
                if faults:
                    await _inject(router.slots[slot], faults, None)

                def ended(g) -> None:
                    ok = g.done and g.error is None
                    state["outcome"] = "ok" if ok else "cancelled" if g.cancelled else "error"
                    record()

                with _field("messages" if kind == "chat" else "prompt"):
                    response = await streaming.respond(
                        stack, engine, kind, payload, args, model=model, include_usage=include_usage,
                        headers=headers, fingerprint=f"{slot}-{engine.version}", on_end=ended,
                        edit=_corrupt if faults.get("corrupt") else None)
                stack = None  # the response closes it when the stream ends
                return response
            fn = engine.chat if kind == "chat" else engine.complete
            with _field("messages" if kind == "chat" else "prompt"):  # e.g. longer than the context
                out = await anyio.to_thread.run_sync(lambda: fn(payload, **args))
            if faults:
                await _inject(router.slots[slot], faults, out)
            state["outcome"] = "ok"
        except BaseException as e:
            if isinstance(e, Overloaded):
                m.refused.inc()
            if stack is not None:
                await stack.__aexit__(type(e), e, e.__traceback__)
                record()
            raise
        await stack.__aexit__(None, None, None)
        record()
        data = completion_object(kind, model, out, f"{slot}-{state['version']}")
        return JSONResponse(data, headers=headers)

    async def _inject(s, faults: dict, out) -> None:
        s._served += 1
        if faults.get("delay_s"):
            await anyio.sleep(float(faults["delay_s"]))
        rate = float(faults.get("error_rate") or 0.0)
        if rate and takes_turn(s._served, rate):
            raise InjectedFault(f"injected failure on slot {s.name} (error_rate {rate})")
        if faults.get("corrupt") and out is not None:
            out.text = _corrupt(out.text)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _answer(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _answer(request, "completion")

    @app.get("/v1/models")
    async def models(request: Request):
        t = _caller(request, "user")
        st = t.router.status()
        created = int(time.time())
        data = [{"id": t.served_name, "object": "model", "created": created, "owned_by": "tuneloop"}]
        for name, s in st["slots"].items():
            if s["version"]:
                data.append({"id": s["version"], "object": "model", "created": int(s["loaded_at"]),
                             "owned_by": f"tuneloop@{name}"})
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        """Open to all (load balancers probe it). With keys it says how many tenants are ready, not which."""
        deps: dict[str, Any] = {}
        if keys is None:
            st = tenants[None].router.status()
            live = st["slots"][st["live"]]
            deps["live_slot"] = {"ok": live["state"] == "ready", "slot": st["live"], "version": live["version"]}
        else:
            ready = sum(t.router.slots[t.router.live].state == "ready" for t in tenants.values())
            deps["live_slots"] = {"ok": ready == len(tenants), "ready": ready, "tenants": len(tenants)}
        if engine_health is not None:
            deps["engine"] = await anyio.to_thread.run_sync(engine_health)
        if registry is not None:
            try:
                await anyio.to_thread.run_sync(registry.aliases)
                deps["registry"] = {"ok": True}
            except Exception as e:  # a health check reports, never raises
                deps["registry"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        ok = all(d["ok"] for d in deps.values())
        out: dict[str, Any] = {"status": "ok" if ok else "unavailable", "dependencies": deps}
        if keys is None:
            out.update(live=st["live"], canary=st["canary"])
        return JSONResponse(out, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus(request: Request):
        t = _caller(request, "admin") if keys is not None else tenants[None]
        st = t.router.status()
        t.metrics.live.clear()
        live = st["slots"][st["live"]]
        if live["version"]:
            t.metrics.live.labels(st["live"], live["version"]).set(1)
        t.metrics.weight.set(st["canary"]["weight"] if st["canary"] else 0.0)
        running_g.set(admission.running)
        waiting_g.set(len(admission.waiting))
        extra = (await anyio.to_thread.run_sync(engine_metrics)).encode() if engine_metrics is not None else b""
        return PlainTextResponse(generate_latest(t.metrics.registry) + generate_latest(shared) + extra,
                                 media_type=CONTENT_TYPE_LATEST)

    # -- admin: each key manages its own tenant's slots ------------------------------------------------------
    add_admin_routes(app, lambda request: _caller(request, "admin"), lambda tenant: loader, _json, allow_faults)

    return app


def add_admin_routes(app: FastAPI, admin, loader_for, read_json, allow_faults: bool = False) -> None:
    """The blue-green admin routes (the module's docstring lists them) on `app`. `admin(request)`: the calling
    Tenant, if allowed (else raises Denied); `loader_for(tenant name)`: its Loader (`owner(ref)`, `(ref)` ->
    Engine); `read_json(request)`: the body, bounded. The promote flow drives a server through these."""

    def _status(t: Tenant) -> dict:
        st = t.router.status()
        return st if t.name is None else {"tenant": t.name, **st}

    @app.get("/admin/status")
    async def admin_status(request: Request):
        return _status(admin(request))

    @app.get("/admin/slots/{slot}/stats")
    async def admin_stats(slot: str, request: Request, since: float | None = None, version: str | None = None):
        t = admin(request)
        if slot not in SLOTS:
            raise BadField("slot", slot, f"a slot is one of {', '.join(SLOTS)}", "name blue or green")
        return t.router.slots[slot].stats(since, version)

    @app.post("/admin/slots/{slot}/load")
    async def admin_load(slot: str, request: Request):
        from tuneloop.registry import ALIASES

        t = admin(request)
        ref = (await read_json(request)).get("version")
        if not isinstance(ref, str) or not (ref == "base" or ref in ALIASES or _VERSION_REF.fullmatch(ref)):
            raise BadField("version", ref, f"must be a version id (v3), an alias ({', '.join(ALIASES)}) or 'base'",
                           'send e.g. {"version": "v3"}')
        if t.name is not None and ref != "base":  # a tenant loads only versions whose manifest names it
            with _field("version"):
                vid, owner = await anyio.to_thread.run_sync(lambda: loader_for(t.name).owner(ref))
            if owner != t.name:
                raise Denied(403, f"version {vid} belongs to another tenant; a key of tenant {t.name} loads only "
                             f"versions whose manifest names tenant {t.name!r}. Fix: load one of this tenant's "
                             "versions")
            ref = vid  # load what was checked, even if an alias moves meanwhile
        with _field("slot"):
            load = loader_for(t.name)
            if getattr(load, "takes_slot", False):  # names what it loads after the slot (vLLM's adapters)
                load = load.for_slot(slot)
            await anyio.to_thread.run_sync(lambda: t.router.load(slot, lambda: load(ref)))  # drains: off the loop
        return _status(t)

    @app.post("/admin/slots/{slot}/unload")
    async def admin_unload(slot: str, request: Request):
        t = admin(request)
        with _field("slot"):
            drained = await anyio.to_thread.run_sync(lambda: t.router.unload(slot))
        return {"drained": drained, **_status(t)}

    @app.post("/admin/switch")
    async def admin_switch(request: Request):
        t = admin(request)
        with _field("slot"):
            t.router.switch((await read_json(request)).get("slot", ""))
        return _status(t)

    @app.post("/admin/canary")
    async def admin_canary(request: Request):
        t = admin(request)
        body = await read_json(request)
        weight = bodies.number(body, "weight", None, 0.0, 1.0)
        with _field("slot"):
            t.router.set_canary(body.get("slot", ""), weight)
        return _status(t)

    @app.post("/admin/slots/{slot}/faults")
    async def admin_faults(slot: str, request: Request):
        t = admin(request)
        if not allow_faults:
            raise Denied(403, "fault injection is off. Fix: start the server with --allow-faults (testing only)")
        body = await read_json(request)
        unknown = sorted(map(str, set(body) - {"error_rate", "delay_s", "corrupt"}))
        if unknown:
            raise BadField(unknown[0], body[unknown[0]], "faults are error_rate, delay_s and corrupt",
                           "drop the other keys")
        corrupt = body.get("corrupt", False)
        if not isinstance(corrupt, bool):
            raise BadField("corrupt", corrupt, "must be true or false", "send a JSON boolean")
        faults = {"error_rate": bodies.number(body, "error_rate", 0.0, 0.0, 1.0),
                  "delay_s": bodies.number(body, "delay_s", 0.0, 0.0, 60.0), "corrupt": corrupt}
        with _field("slot"):
            t.router.slots[t.router.ready(slot).name].faults = {k: v for k, v in faults.items() if v}
        return _status(t)

    @app.post("/admin/rollback")
    async def admin_rollback(request: Request):
        t = admin(request)
        t.router.rollback()
        return _status(t)


def _corrupt(text: str) -> str:
    """What a slot with the `corrupt` fault answers instead of `text` (each piece, when streamed)."""
    return "".join(reversed(text)) + " ???"


def completion_object(kind: str, model: str, out, fingerprint: str | None = None) -> dict[str, Any]:
    """OpenAI's `chat.completion` (kind "chat") or `text_completion` object for one generated answer `out`
    (an engine's Completion), with a new id: `chatcmpl-<24 hex>` or `cmpl-<24 hex>`."""
    rid, created = uuid.uuid4().hex[:24], int(time.time())
    usage = {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
             "total_tokens": out.prompt_tokens + out.completion_tokens}
    if kind == "chat":
        return {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": fingerprint,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                             "logprobs": None, "finish_reason": out.finish_reason}], "usage": usage}
    return {"id": f"cmpl-{rid}", "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}],
            "usage": usage}


def authorize(request: Request, find, role: str, *, missing: str, unknown: str, admin_fix: str):
    """The Key that the request's `Authorization: Bearer <key>` presents, if `find` knows it and it has `role`;
    else Denied: 401 with `missing` or `unknown`, 403 naming the key's role and `admin_fix`."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise Denied(401, missing)
    key = find(presented)
    if key is None:
        raise Denied(401, unknown)
    if not key.can(role):
        raise Denied(403, f"key {key.name!r} (tenant {key.tenant}) has role {key.role}; {request.url.path} needs an "
                     f"admin key. Fix: {admin_fix}")
    return key


def _token_ok(request: Request, token: str) -> bool:
    got = request.headers.get("authorization", "")
    return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())
