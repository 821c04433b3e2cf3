"""Run the serving app with uvicorn: `tuneloop serve`.

At start the blue slot loads `--version` if given, else the registry's
`production` alias, else its `champion`, else the bare base (`--base`). On
SIGTERM/SIGINT uvicorn stops accepting connections and lets requests in flight
finish (up to `--drain-timeout` seconds) before exiting.
"""

from __future__ import annotations

import os


def initial_version(registry, explicit: str | None) -> str:
    if explicit:
        return explicit
    if registry is not None:
        aliases = registry.aliases()
        for alias in ("production", "champion"):
            if aliases.get(alias):
                return aliases[alias]
    return "base"


def run_server(host: str = "127.0.0.1", port: int = 8000, registry_url: str | None = None,
               base_model: str | None = None, version: str | None = None, served_name: str = "tuneloop",
               admin_token: str | None = None, drain_timeout: float = 30.0, allow_faults: bool = False,
               log=print) -> None:
    import uvicorn

    from tuneloop.registry import open_registry
    from tuneloop.serving.app import Loader, create_app
    from tuneloop.serving.slots import Router
    from tuneloop.specs import TINY_BASE

    registry = open_registry(registry_url)
    loader = Loader(registry, base_model or TINY_BASE)
    router = Router()
    ref = initial_version(registry, version)
    log(f"loading {ref} into the blue slot")
    router.load("blue", lambda: loader(ref))
    token = admin_token if admin_token is not None else os.environ.get("TUNELOOP_ADMIN_TOKEN") or None
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        log("warning: admin routes are open (no TUNELOOP_ADMIN_TOKEN) on a non-loopback address")
    app = create_app(router, loader, served_name, token, registry, allow_faults)
    if allow_faults:
        log("warning: fault injection is on (POST /admin/slots/{slot}/faults); for testing only")
    log(f"serving {router.live_version()} as {served_name!r} on http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=drain_timeout)
