"""An append-only audit log of who changed what in the registry, and when.

Each entry is one object `audit/<UTC time>-<random>.json`, written create-only (`if_none_match`): an
entry is never rewritten or removed by tuneloop, on a folder or on S3 alike (make the bucket's
`audit/` prefix write-once with S3 Object Lock for tamper-evidence beyond tuneloop). Listing the prefix,
sorted, is the log in time order.

    {"at": "2026-11-25T03:12:45.123456Z", "actor": "alice (prefect flow run retrain/brave-fox)",
     "action": "register" | "promote" | "reject" | "alias" | "delete" | "switch" | "rollback" | ...,
     "version": "v3", "tenant": "default", "details": {...}}

The actor is `TUNELOOP_ACTOR` when set (a CI job, a service account), else the OS user, with the Prefect
flow run it acted in when there is one. Details never hold secrets: they are scrubbed like log lines.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
from datetime import datetime, timezone

ACTIONS = ("register", "promote", "reject", "alias", "delete", "tag", "switch", "canary", "rollback", "load")


def actor() -> str:
    who = os.environ.get("TUNELOOP_ACTOR")
    if not who:
        try:
            who = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name in this container: say so
            who = f"uid {os.getuid()}"
    run = os.environ.get("PREFECT__FLOW_RUN_ID")
    try:  # the flow run this happened in, if any, without importing prefect into core
        import sys

        ctx = sys.modules.get("prefect.context")
        fr = ctx.FlowRunContext.get() if ctx is not None else None
        if fr is not None and fr.flow_run is not None:
            run = f"{fr.flow.name}/{fr.flow_run.name}"
    except Exception:  # noqa: BLE001 - best effort
        pass
    return f"{who} (prefect flow run {run})" if run else who


def entry(action: str, version: str | None, tenant: str | None, details: dict | None = None) -> tuple[str, bytes]:
    from tuneloop.runtime.safety import scrub

    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; known: {', '.join(ACTIONS)}")
    now = datetime.now(timezone.utc)
    doc = {"at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "actor": actor(), "action": action, "version": version,
           "tenant": tenant, "details": details or {}}
    body = scrub(json.dumps(doc, sort_keys=True, default=str))
    return f"audit/{now.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}.json", body.encode()


def record(store, action: str, version: str | None = None, tenant: str | None = None, **details) -> None:
    key, body = entry(action, version, tenant, details)
    store.put(key, body, if_none_match=True)


def read(store, *, version: str | None = None, action: str | None = None, limit: int | None = None) -> list[dict]:
    """The log in time order (oldest first), optionally only one version's or one action's entries."""
    out = []
    for key in sorted(store.list("audit/")):
        got = store.get(key)
        if got is None:
            continue
        doc = json.loads(got[0])
        if (version is None or doc.get("version") == version) and (action is None or doc.get("action") == action):
            out.append(doc)
    return out[-limit:] if limit else out
