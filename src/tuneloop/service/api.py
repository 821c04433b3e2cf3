"""The service's HTTP API: OpenAI's `/v1` files, fine-tuning jobs, models, chat and completions, per tenant.

A team's code written for OpenAI works by changing `base_url` to `http://HOST:PORT/v1` and `api_key` to a key
from `tuneloop keys create`. Every `/v1` route needs a key; the key's tenant owns what it creates, and
another tenant's file, job or model is a 404 exactly like an unknown one. Objects, status words and the
error body are OpenAI's (docs/openai-migration.md lists every field).

    POST   /v1/files                                  multipart: file, purpose=fine-tune (validated here)
    GET    /v1/files[/{id}[/content]]   DELETE /v1/files/{id}
    POST   /v1/fine_tuning/jobs                       GET /v1/fine_tuning/jobs?after=&limit=
    GET    /v1/fine_tuning/jobs/{id}                  POST .../{id}/cancel | pause | resume
    GET    /v1/fine_tuning/jobs/{id}/events           GET  .../{id}/checkpoints
    POST   /v1/fine_tuning/jobs/{id}/evaluate         {file, max_items, max_new_tokens}: metrics, and the base's
    POST   /v1/fine_tuning/jobs/{id}/promote          an admin key; {mode, canary_steps, watch_seconds, ...}: the
                                                      promote flow puts the model live on the tenant's slots
    GET    /v1/fine_tuning/jobs/{id}/promotions       the job's promotions and their outcomes
    GET    /v1/models[/{model}]         DELETE /v1/models/{model}
    POST   /v1/chat/completions         POST /v1/completions
    POST   /v1/feedback                               {completion_id, rating|score|thumbs, correction, preferred_over, comment, user}
    GET    /stats                                     the key's tenant: jobs by status, tokens, models, feedback
    GET    /metrics                                   Prometheus (an admin key)
    GET    /health                                    Prefect API, worker, registry, store (no key)
    /admin/...                                        the tenant's blue-green slots (an admin key), as
                                                      `tuneloop serve`'s: status, load, switch, canary, rollback

`champion` answers from the tenant's live slot (service.slots); `champion@blue`, `champion@green`, `blue`
and `green` pin a slot.
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from starlette.concurrency import run_in_threadpool

from tuneloop.serving import bodies, streaming
from tuneloop.serving.app import Denied, add_admin_routes, add_error_handlers, authorize, completion_object
from tuneloop.serving.rollout import TENANT_HEADER
from tuneloop.serving.capacity import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_QUEUE, Admission
from tuneloop.serving.keys import Key, KeyRing
from tuneloop.service.errors import TooLarge
from tuneloop.service.promotions import LOOP
from tuneloop.service.service import Service
from tuneloop.service.slots import CHAMPION, PINS, TenantSlots

MAX_UPLOAD_BYTES = 512 * 2**20


class Keys:
    """The home's keys file, read again whenever it changes (a key created while the service runs works at once)."""

    def __init__(self, path, also=None):
        self.path, self._seen, self._ring, self.also = path, None, None, also

    def find(self, presented: str, loop_tenant: str | None = None) -> Key | None:
        """`loop_tenant`: on the slots' admin routes, the tenant the loop key may act for (x-tuneloop-tenant)."""
        if self.also is not None and (key := self.also.find(presented)) is not None:
            return key  # a promotion's own key
        if loop_tenant is not None and self.also is not None and \
                (key := self.also.find_loop(presented, loop_tenant)) is not None:
            return key
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if stamp != self._seen:
            self._ring, self._seen = KeyRing.load(self.path), stamp
        return self._ring.find(presented)


def _limit(request: Request, default: int = 20) -> tuple[str | None, int]:
    q = request.query_params
    raw = q.get("limit")
    try:
        limit = default if raw is None else int(raw)
    except ValueError:
        limit = -1
    if not 1 <= limit <= 10000:
        raise bodies.BadField("limit", raw, "must be an integer from 1 to 10000", "send e.g. limit=20")
    return q.get("after"), limit


def _listing(items: list[dict], more: bool) -> dict:
    return {"object": "list", "data": items, "has_more": more,
            "first_id": items[0]["id"] if items else None, "last_id": items[-1]["id"] if items else None}


def create_service_app(service: Service, pool=None, max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                       max_queue: int = DEFAULT_MAX_QUEUE, health=None) -> FastAPI:
    """`pool`: an AdapterPool serving every model on one shared copy of its base; `health()`: the
    dependencies' states (Prefect API, worker), added to /health."""
    keys = Keys(service.home.keys_file, service.tokens)
    slots = TenantSlots(service.registry, pool, service.bases[0]) if pool is not None else None
    if slots is not None:
        service.served = slots.live
    admission = Admission(max_concurrency, max_queue)
    app = FastAPI(title="tuneloop", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    add_error_handlers(app, admission)
    registry = CollectorRegistry()
    jobs_g = Gauge("tuneloop_service_jobs", "The scraping key's tenant's fine-tuning jobs by status", ["status"],
                   registry=registry)
    adapters_g = Gauge("tuneloop_service_adapters_loaded", "Adapters loaded on the shared bases", registry=registry)
    adapter_bytes_g = Gauge("tuneloop_service_adapter_bytes", "Memory held by loaded adapters", registry=registry)
    answered = Counter("tuneloop_service_completions_total", "Completions answered, by outcome", ["outcome"],
                       registry=registry)

    def tenant(request: Request, role: str = "user", loop: bool = False) -> str:
        return caller(request, role, loop).tenant

    def caller(request: Request, role: str = "user", loop: bool = False) -> Key:
        """The request's key; `loop`: the loop key is accepted too, acting for the tenant it names."""
        loop_tenant = request.headers.get(TENANT_HEADER) if loop else None
        return authorize(request, lambda presented: keys.find(presented, loop_tenant), role,
                         missing="this service needs an API key. Fix: send 'Authorization: Bearer <key>' (the "
                         "openai SDK's api_key); make one with `tuneloop keys create --tenant NAME`",
                         unknown="the API key is not valid on this service. Fix: use a key printed by `tuneloop "
                         "keys create` for this service's --home",
                         admin_fix="`tuneloop keys create --tenant T --role admin`")

    async def body(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > bodies.MAX_BODY_BYTES:
            raise bodies.BodyTooLarge(bodies.MAX_BODY_BYTES)
        return bodies.parse_json(raw)

    # -- files ----------------------------------------------------------------------------------------
    @app.post("/v1/files")
    async def files_create(request: Request):
        t = tenant(request)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES + 2**20:  # before reading any of it
            raise TooLarge(f"an upload of {declared} bytes", f"is over the upload limit of {MAX_UPLOAD_BYTES} bytes",
                           "split the file, or train on a sample of it")
        form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or isinstance(upload, str):
            raise bodies.BadField("file", upload, "a multipart upload with a file part is required",
                                  "send the JSONL file as the `file` part (client.files.create(file=open(...)))")
        data = await upload.read()
        return await run_in_threadpool(service.files.create, t, upload.filename or "upload.jsonl", data, purpose)

    @app.get("/v1/files")
    async def files_list(request: Request):
        t = tenant(request)
        after, limit = _limit(request, 10000)
        q = request.query_params
        items = await run_in_threadpool(service.files.list, t, purpose=q.get("purpose"), limit=min(limit + 1, 10000),
                                        after=after, order=q.get("order", "desc"))  # one more: are there more
        return _listing(items[:limit], len(items) > limit)

    @app.get("/v1/files/{file_id}")
    async def files_get(file_id: str, request: Request):
        return await run_in_threadpool(service.files.get, tenant(request), file_id)

    @app.delete("/v1/files/{file_id}")
    async def files_delete(file_id: str, request: Request):
        return await run_in_threadpool(service.files.delete, tenant(request), file_id)

    @app.get("/v1/files/{file_id}/content")
    async def files_content(file_id: str, request: Request):
        path = await run_in_threadpool(service.files.path, tenant(request), file_id)  # NotFound for others'
        return FileResponse(path, media_type="application/jsonl")

    # -- fine-tuning jobs -----------------------------------------------------------------------------
    @app.post("/v1/fine_tuning/jobs")
    async def jobs_create(request: Request):
        t = tenant(request)
        return await run_in_threadpool(service.create_job, t, await body(request))

    @app.get("/v1/fine_tuning/jobs")
    async def jobs_list(request: Request):
        t = tenant(request)
        after, limit = _limit(request)
        return _listing(*await run_in_threadpool(service.list_jobs, t, after, limit))

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def jobs_get(job_id: str, request: Request):
        return await run_in_threadpool(service.job, tenant(request), job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/{action}")
    async def jobs_action(job_id: str, action: str, request: Request):
        t = tenant(request)
        if action == "evaluate":  # model work: it takes a generation slot like a completion
            b = await body(request)
            async with admission.slot():
                return await run_in_threadpool(service.evaluate, t, job_id, b)
        if action == "promote":
            t = tenant(request, "admin")
            b = await body(request)
            if slots is not None:
                await run_in_threadpool(slots.tenant, t, True)  # loaded before the flow asks; the gate not followed
            return await run_in_threadpool(service.promote, t, job_id, b)
        if action not in ("cancel", "pause", "resume"):
            raise bodies.BadField("action", action, "a job action is cancel, pause, resume, evaluate or promote",
                                  "fix the path")
        return await run_in_threadpool(getattr(service, action), t, job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def jobs_events(job_id: str, request: Request):
        t = tenant(request)
        after, limit = _limit(request)
        return _listing(*await run_in_threadpool(service.events, t, job_id, after, limit))

    @app.get("/v1/fine_tuning/jobs/{job_id}/promotions")
    async def jobs_promotions(job_id: str, request: Request):
        items = await run_in_threadpool(service.promotions, tenant(request), job_id)
        return _listing(items, False)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def jobs_checkpoints(job_id: str, request: Request):
        t = tenant(request)
        after, limit = _limit(request, 10)
        return _listing(*await run_in_threadpool(service.checkpoints, t, job_id, after, limit))

    # -- models ---------------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models_list(request: Request):
        return {"object": "list", "data": await run_in_threadpool(service.models, tenant(request))}

    @app.get("/v1/models/{model:path}")
    async def models_get(model: str, request: Request):
        return await run_in_threadpool(service.model, tenant(request), model)

    @app.delete("/v1/models/{model:path}")
    async def models_delete(model: str, request: Request):
        t = tenant(request)
        out = await run_in_threadpool(service.delete_model, t, model)
        if pool is not None:
            await run_in_threadpool(pool.unload, model)  # waits for a generation on its base to finish
        return out

    # -- inference ------------------------------------------------------------------------------------
    async def answer(request: Request, kind: str):
        key = caller(request, loop=True)  # the promote flow's probes of a tenant's slots come with the loop key
        t = key.tenant
        b = await body(request)
        args = bodies.generation(b, kind)
        payload = bodies.messages(b) if kind == "chat" else bodies.prompt(b)
        model = b.get("model")
        if not isinstance(model, str) or not model:
            raise bodies.BadField("model", model, "is required: one of GET /v1/models, a checkpoint id or "
                                  "'champion'", "send model")
        on_slots = slots is not None and (model == CHAMPION or model in PINS)  # the tenant's blue-green slots
        if key.name == LOOP and not on_slots:
            slot_models = ", ".join(sorted(PINS | {CHAMPION}))
            raise Denied(401, f"the loop key asks the tenant's blue-green slots only ({slot_models}), not "
                         f"{model!r}. Fix: use a tenant's key")
        stream, include_usage = bodies.streaming(b)
        asked = payload if kind == "chat" else [{"role": "user", "content": payload}]
        state = {"outcome": "error"}
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            if on_slots:
                router, slot = await run_in_threadpool(slots.route, t, model)
                await stack.enter_async_context(admission.slot())
                engine = stack.enter_context(router.serving(slot))  # counted in the slot's stats the flow reads
                headers = {"x-tuneloop-slot": slot, "x-tuneloop-version": engine.version}
            else:
                base, adapter = await run_in_threadpool(service.resolve_model, t, model)
                await stack.enter_async_context(admission.slot())
                engine = await run_in_threadpool(pool.engine, base, adapter)
                headers = {}
            if stream:
                rid = uuid.uuid4().hex[:24]

                async def ended(g) -> None:
                    state["outcome"] = "ok" if g.done and g.error is None else "cancelled" if g.cancelled else "error"
                    answered.labels(state["outcome"]).inc()
                    if state["outcome"] == "ok":  # feedback may name the streamed answer by its id
                        cid = f"chatcmpl-{rid}" if kind == "chat" else f"cmpl-{rid}"
                        await run_in_threadpool(service.completions.keep, t, cid, model, asked, g.result(0).text)

                response = await streaming.respond(stack, engine, kind, payload, args, model=model,
                                                   include_usage=include_usage, headers=headers, on_end=ended,
                                                   rid=rid)
                stack = None  # the response closes it when the stream ends
                return response
            out = await anyio.to_thread.run_sync(lambda: engine.start(kind, payload, **args).result())
            if out.load_s is not None:  # this request loaded its adapter: say how long that took
                headers["x-tuneloop-adapter-load-ms"] = f"{out.load_s * 1000:.1f}"
            state["outcome"] = "ok"
        except BaseException as e:
            if stack is not None:
                await stack.__aexit__(type(e), e, e.__traceback__)
                answered.labels(state["outcome"]).inc()
            raise
        await stack.__aexit__(None, None, None)
        answered.labels(state["outcome"]).inc()
        data = completion_object(kind, model, out)
        await run_in_threadpool(service.completions.keep, t, data["id"], model, asked, out.text)  # feedback: by id
        return JSONResponse(data, headers=headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, "completion")

    if slots is not None:  # what the promote flow drives; an admin key reaches its own tenant's slots only
        add_admin_routes(app, lambda request: slots.tenant(tenant(request, "admin", loop=True),
                                                           manage=request.method != "GET"),
                         slots.loader, body)

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        t = tenant(request)
        return await run_in_threadpool(service.feedback, t, await body(request))

    # -- operations -----------------------------------------------------------------------------------
    @app.get("/stats")
    async def stats(request: Request):
        return await run_in_threadpool(service.stats, tenant(request))

    @app.get("/metrics")
    async def metrics(request: Request):
        counts = await run_in_threadpool(_job_counts, tenant(request, "admin"))  # its own tenant's jobs only
        jobs_g.clear()  # a status no job has any more is gone, not stuck at its last count
        for status, n in counts.items():
            jobs_g.labels(status).set(n)
        if pool is not None:
            st = pool.stats()
            adapters_g.set(len(st.get("adapters", [])))
            adapter_bytes_g.set(st.get("bytes_used", 0))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def _job_counts(t: str) -> dict:
        from collections import Counter

        return Counter(service._observe(r)[0] for r in service.jobs.list(t))

        return Counter(service._observe(r)[0] for t in service.jobs.tenants() for r in service.jobs.list(t))

    @app.get("/health")
    async def health_route():
        parts = (await run_in_threadpool(health) if health is not None else {}) | service.health()
        ok = all(p.get("state") == "ok" for p in parts.values())
        return JSONResponse({"status": "ok" if ok else "degraded", **parts}, status_code=200 if ok else 503)

    return app
