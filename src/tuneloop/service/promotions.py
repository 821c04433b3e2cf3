"""Promotions: a succeeded job's model put live on its tenant's blue-green slots by the `promote` flow.

`POST /v1/fine_tuning/jobs/{id}/promote` (an admin key) runs the promote deployment with a PromoteSpec that
points at the service itself: the flow loads the job's registry version into the tenant's idle slot,
validates it on smoke items, then switches (blue-green) or shifts canary weight step by step, watching error
rate, p95 latency and accuracy, and rolls back by itself on a breach; success moves the tenant's
`production` alias. The flow reaches the slots with a key made for that promotion alone: an admin key of the
tenant, held in the service's memory only, dropped when the promotion ends (or the service stops).

A promotion is kept on its job's record; its status is `running` until the flow run ends, then the flow's
outcome (`promoted`, `rolled-back`, `rejected`, `already-live`) or `failed`.
"""

from __future__ import annotations

import hmac
import secrets
import time

from pydantic import ValidationError

from tuneloop.serving.bodies import BadField
from tuneloop.serving.keys import Key, hash_key
from tuneloop.specs import PromoteSpec

PREFIX = "promo-"
TOKEN_ENV = "TUNELOOP_ADMIN_TOKEN"  # PromoteSpec.admin_token_env's default
FIELDS = ("mode", "canary_steps", "step_seconds", "watch_seconds", "smoke_file", "smoke_items", "probe_items",
          "min_accuracy", "max_p95_seconds", "max_error_rate", "min_requests", "max_tokens")
FINAL = ("promoted", "rolled-back", "rejected", "already-live", "failed", "cancelled")


def parse(body: dict, server: str, version: str, smoke_path: str | None, tenant: str = "default") -> PromoteSpec:
    """The request's fields as a PromoteSpec aimed at `server`; a bad field is a 400 that names it."""
    if not isinstance(body, dict):
        raise BadField("body", body, "is a JSON object", "send e.g. {\"mode\": \"canary\"}")
    unknown = sorted(map(str, set(body) - set(FIELDS)))
    if unknown:
        raise BadField(unknown[0], body[unknown[0]], f"a promotion takes {', '.join(FIELDS)}", "drop the others")
    fields = {k: v for k, v in body.items() if k != "smoke_file" and v is not None}
    try:
        return PromoteSpec(server=server, version=version, tenant=tenant, alias="production", admin_token_env=TOKEN_ENV,
                           smoke=smoke_path, **fields)
    except ValidationError as e:
        err = e.errors()[0]
        name = ".".join(map(str, err["loc"])) or "body"
        raise BadField(name, body.get(str(err["loc"][0])) if err["loc"] else body, err["msg"],
                       "fix the field (docs/openai-migration.md lists a promotion's fields)") from None


LOOP = "loop"


class Tokens:
    """The keys made for promotions in flight: sha256 -> (tenant, promotion id); memory only. And the loop
    key (`make_loop`): what the promote runs that the champion.changed trigger starts (no request made them,
    so no promotion key exists) present to reach the slots of the tenant they name."""

    def __init__(self):
        self._by_digest: dict[str, tuple[str, str]] = {}
        self._loop: str | None = None

    def make_loop(self) -> str:
        """A new loop key (this process's life long); `tuneloop up` hands it to its worker's environment."""
        token = "tll-" + secrets.token_urlsafe(32)
        self._loop = hash_key(token)
        return token

    def find_loop(self, presented: str, tenant: str | None) -> Key | None:
        """The loop key acting for `tenant` (None unless both are right)."""
        from tuneloop.runtime.safety import is_safe_name

        digest = hash_key(presented)
        if self._loop is None or not hmac.compare_digest(digest, self._loop) or not is_safe_name(tenant):
            return None
        return Key(bytes.fromhex(digest), tenant, "admin", LOOP)

    def make(self, tenant: str, promotion: str) -> str:
        token = "tlp-" + secrets.token_urlsafe(32)
        self._by_digest[hash_key(token)] = (tenant, promotion)
        return token

    def find(self, presented: str) -> Key | None:
        found = self._by_digest.get(hash_key(presented))  # a dict lookup on a digest: no timing leak on the key
        if found is None:
            return None
        return Key(bytes.fromhex(hash_key(presented)), found[0], "admin", found[1])

    def drop(self, promotion: str) -> None:
        for digest, (_, pid) in list(self._by_digest.items()):
            if pid == promotion:
                del self._by_digest[digest]


def new(promotion_id: str, run_id: str, spec: PromoteSpec, version: str) -> dict:
    return {"id": promotion_id, "object": "fine_tuning.job.promotion", "created_at": int(time.time()),
            "run": run_id, "version": version, "mode": spec.mode, "status": "running", "reason": None,
            "checks": [], "finished_at": None}


def ended(promotion: dict, state_type: str, state_message: str | None, result: dict | None) -> dict | None:
    """The promotion's final fields once its flow run is final (a CRASHED run is not: the retry automation
    starts it again); None while it runs."""
    if state_type == "COMPLETED":
        if not isinstance(result, dict) or result.get("outcome") not in FINAL:
            return {"status": "failed", "reason": "the promote flow completed without a readable outcome"}
        return {"status": result["outcome"], "reason": result.get("reason"), "checks": result.get("checks", []),
                "alias_after": result.get("alias_after")}
    if state_type in ("FAILED", "CANCELLED"):
        return {"status": "failed" if state_type == "FAILED" else "cancelled",
                "reason": state_message or f"the promote flow run ended {state_type.lower()}"}
    return None
