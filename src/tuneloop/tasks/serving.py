"""Serving admin calls, analyses and registry reads and moves for the promote flow, one core call each."""

from __future__ import annotations

import os
import time

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tuneloop.registry import DEFAULT_TENANT, open_registry
from tuneloop.runtime import observability as metrics
from tuneloop.serving import rollout
from tuneloop.serving.outcome import Outcome
from tuneloop.serving.rollout import Check, ServingAdmin, SmokeItem
from tuneloop.specs import PromoteSpec
from tuneloop.tasks import TASK_DEFAULTS


def admin_for(spec: PromoteSpec) -> ServingAdmin:
    return ServingAdmin(spec.server, os.environ.get(spec.admin_token_env) or None, tenant=spec.tenant)


@task(name="read-alias", **TASK_DEFAULTS)
def read_alias(alias: str, tenant: str = DEFAULT_TENANT) -> str | None:
    return open_registry(tenant=tenant).aliases().get(alias)


@task(name="move-alias", **TASK_DEFAULTS)
def move_alias(alias: str, version: str, expected: str | None, tenant: str = DEFAULT_TENANT) -> None:
    """Compare-and-swap in `tenant`'s registry: ConflictError (not retried) if `alias` no longer points at
    `expected`."""
    open_registry(tenant=tenant).set_alias(alias, version, expected=expected)


@task(name="read-serving-status", **TASK_DEFAULTS)
def read_serving_status(spec: PromoteSpec) -> dict:
    return admin_for(spec).status()


@task(name="read-smoke-items", **TASK_DEFAULTS)
def read_smoke_items(spec: PromoteSpec, manifest: dict) -> list[SmokeItem]:
    """The smoke set: the spec's, or the held-out rows the version was evaluated on."""
    return rollout.read_smoke(spec.smoke or rollout.default_smoke_path(manifest), spec.smoke_items)


@task(name="load-candidate", **TASK_DEFAULTS)
def load_candidate(spec: PromoteSpec, slot: str, version: str) -> float:
    """Returns when the load began: the validation's window opens there."""
    since = time.time()
    admin_for(spec).load(slot, version)
    return since


@task(name="check-slot", **TASK_DEFAULTS)
def check_slot(spec: PromoteSpec, slot: str, items: list, since: float, at: str, min_requests: int = 0) -> Check:
    """Probe the slot with smoke items, then judge it on the server's stats since `since` (probes included)."""
    return rollout.check_slot(admin_for(spec), slot, items, since, spec, at, min_requests)


@task(name="set-canary", **TASK_DEFAULTS)
def set_canary(spec: PromoteSpec, slot: str, weight: float) -> float:
    admin_for(spec).canary(slot, weight)
    return time.time()


@task(name="switch-slot", **TASK_DEFAULTS)
def switch_slot(spec: PromoteSpec, slot: str, version: str | None = None) -> float:
    admin_for(spec).switch(slot)
    if version is not None:
        open_registry(tenant=spec.tenant).record_event("switch", version, slot=slot, server=spec.server)
    return time.time()


@task(name="roll-back", **TASK_DEFAULTS)
def roll_back(spec: PromoteSpec, version: str | None = None, reason: str = "", tenant: str | None = None) -> dict:
    """`tenant`: count the rollback in its metric (a breach; not a stale alias move, no model's fault)."""
    out = admin_for(spec).rollback()
    if version is not None:
        open_registry(tenant=spec.tenant).record_event("rollback", version, reason=reason, server=spec.server)
    if tenant is not None:
        metrics.record_rollback(tenant)
    return out


@task(name="publish-promotion", **TASK_DEFAULTS)
def publish_promotion(outcome: Outcome) -> dict:
    """The outcome as the flow's result, and as a Markdown artifact for the Prefect UI."""
    result = outcome.to_json()
    create_markdown_artifact(rollout.summary_markdown(result), key="promotion", description=outcome.reason[:250])
    return result
