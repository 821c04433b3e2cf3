"""Serving admin calls and analyses for the promote flow, one core call each."""

from __future__ import annotations

import os
import time

from prefect import task

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.registry import open_registry
from tuneloop.serving import rollout
from tuneloop.serving.rollout import Check, ServingAdmin
from tuneloop.specs import PromoteSpec


def admin_for(spec: PromoteSpec) -> ServingAdmin:
    return ServingAdmin(spec.server, os.environ.get(spec.admin_token_env) or None)


@task(name="load-candidate", **TASK_DEFAULTS)
def load_candidate(spec: PromoteSpec, slot: str, version: str) -> dict:
    return admin_for(spec).load(slot, version)


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
        open_registry().record_event("switch", version, slot=slot, server=spec.server)
    return time.time()


@task(name="roll-back", **TASK_DEFAULTS)
def roll_back(spec: PromoteSpec, version: str | None = None, reason: str = "") -> dict:
    out = admin_for(spec).rollback()
    if version is not None:
        open_registry().record_event("rollback", version, reason=reason, server=spec.server)
    return out
