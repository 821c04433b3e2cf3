"""Run the serving app with uvicorn: `tuneloop serve`.

At start the blue slot loads `--version` if given, else the registry's
`production` alias, else its `champion`, else the bare base (`--base`). With a
keys file (`--keys` or `$TUNELOOP_SERVE_KEYS`) each tenant gets its own blue
and green slots; a tenant's blue slot starts with its `version:` from the keys
file, else the first of `--version`, production, champion whose manifest names
that tenant, else the bare base. On SIGTERM/SIGINT uvicorn stops accepting
connections and lets requests in flight finish (up to `--drain-timeout`
seconds) before exiting.
"""

from __future__ import annotations

import os

from tuneloop.serving.capacity import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_QUEUE
from tuneloop.serving.engine import DEFAULT_MAX_BATCH


def initial_version(registry, explicit: str | None) -> str:
    if explicit:
        return explicit
    if registry is not None:
        aliases = registry.aliases()
        for alias in ("production", "champion"):
            if aliases.get(alias):
                return aliases[alias]
    return "base"


def tenant_version(loader, tenant: str, configured: str | None, explicit: str | None) -> str:
    """The version a tenant's blue slot starts with (see the module's docstring)."""
    from tuneloop.errors import UserError

    if configured:
        if configured != "base" and loader.owner(configured)[1] != tenant:
            raise UserError(f"tenants.{tenant}.version={configured!r}", "a tenant serves only versions whose "
                            f"manifest names it (tenant {tenant!r})", "give one of this tenant's versions")
        return configured
    registry = loader.registry
    aliases = registry.aliases() if registry is not None else {}
    for ref in (explicit, aliases.get("production"), aliases.get("champion")):
        if ref and ref != "base" and registry is not None and loader.owner(ref)[1] == tenant:
            return ref
    return "base"


def build_app(registry_url: str | None = None, base_model: str | None = None, version: str | None = None,
              served_name: str = "tuneloop", admin_token: str | None = None, allow_faults: bool = False,
              keys_file: str | None = None, max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
              max_queue: int = DEFAULT_MAX_QUEUE, host: str = "127.0.0.1", log=print,
              max_batch: int = DEFAULT_MAX_BATCH, engine: str = "builtin", vllm_url: str | None = None,
              vllm_key: str | None = None, adapter_budget_mb: float = 512.0):
    """The app `tuneloop serve` runs, its slots loaded; the keys file, when given, is read here. `engine`:
    "builtin" (models in this process) or "vllm" (the slots are adapters on the vLLM server at `vllm_url`)."""
    from tuneloop.registry import open_registry
    from tuneloop.serving.app import Loader, create_app
    from tuneloop.serving.keys import KEYS_ENV, KeyRing
    from tuneloop.serving.slots import Router
    from tuneloop.errors import UserError
    from tuneloop.serving.capacity import Admission
    from tuneloop.serving.decode import DecodeLoop
    from tuneloop.specs import TINY_BASE

    Admission(max_concurrency, max_queue)  # refuse bad limits before loading any model
    DecodeLoop.check_max_batch(max_batch)
    registry = open_registry(registry_url)
    remote = {}
    if engine == "vllm":
        from tuneloop.serving.vllm import VllmClient, VllmLoader

        if not vllm_url:
            raise UserError("--engine vllm", "needs the vLLM server's URL", "pass --vllm-url http://HOST:PORT")
        client = VllmClient(vllm_url, vllm_key)
        loader = VllmLoader(registry, client, served_name)
        remote = {"engine_health": client.health, "engine_metrics": client.metrics_text}
        log(f"engine: vLLM at {client.base_url} (base {client.base_model()}); slots hold its LoRA adapters")
    elif engine == "builtin":
        from tuneloop.serving.adapters import AdapterPool

        loader = Loader(registry, base_model or TINY_BASE, pool=AdapterPool(int(adapter_budget_mb * 2**20),
                                                                            max_batch=max_batch))
    else:
        raise UserError(f"--engine {engine}", "the engines are builtin and vllm", "pass --engine builtin or vllm")
    keys_file = keys_file or os.environ.get(KEYS_ENV) or None
    token = admin_token if admin_token is not None else os.environ.get("TUNELOOP_ADMIN_TOKEN") or None
    keys = KeyRing.load(keys_file) if keys_file else None
    routers = {}
    if keys is None:
        router = Router(unload_on_rollback=bool(remote))
        ref = initial_version(registry, version)
        log(f"loading {ref} into the blue slot")
        router.load("blue", lambda: loader(ref))
        if token is None and host not in ("127.0.0.1", "localhost", "::1"):
            log("warning: admin routes are open (no TUNELOOP_ADMIN_TOKEN) on a non-loopback address")
    else:
        router = None
        log(f"keys: {len(keys.keys)} from {keys_file}, tenants {', '.join(keys.tenants)}; every route but /health "
            "needs a key")
        if token is not None:
            log("note: with a keys file the admin token is not used; admin keys manage each tenant")
            token = None
        for t in keys.tenants:
            cfg = keys.config.get(t)
            ref = tenant_version(loader, t, cfg.version if cfg else None, version)
            log(f"tenant {t}: loading {ref} into the blue slot")
            routers[t] = Router(unload_on_rollback=bool(remote))
            routers[t].load("blue", lambda ref=ref: loader(ref))
    app = create_app(router, loader, served_name, token, registry, allow_faults, keys=keys, routers=routers,
                     max_concurrency=max_concurrency, max_queue=max_queue, **remote)
    if allow_faults:
        log("warning: fault injection is on (POST /admin/slots/{slot}/faults); for testing only")
    log(f"capacity: {max_concurrency} generations at once (a model decodes up to {max_batch} together), "
        f"{max_queue} waiting; beyond that 429 with Retry-After")
    return app


def run_server(host: str = "127.0.0.1", port: int = 8000, registry_url: str | None = None,
               base_model: str | None = None, version: str | None = None, served_name: str = "tuneloop",
               admin_token: str | None = None, drain_timeout: float = 30.0, allow_faults: bool = False,
               keys_file: str | None = None, max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
               max_queue: int = DEFAULT_MAX_QUEUE, log=print, max_batch: int = DEFAULT_MAX_BATCH,
               engine: str = "builtin", vllm_url: str | None = None, vllm_key: str | None = None,
               adapter_budget_mb: float = 512.0) -> None:
    import uvicorn

    app = build_app(registry_url, base_model, version, served_name, admin_token, allow_faults, keys_file,
                    max_concurrency, max_queue, host, log, max_batch, engine, vllm_url, vllm_key,
                    adapter_budget_mb)
    if app.state.router is not None:
        log(f"serving {app.state.router.live_version()} as {served_name!r} on http://{host}:{port}/v1")
    else:
        log(f"serving {len(app.state.tenants)} tenants on http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=drain_timeout)
