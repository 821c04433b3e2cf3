"""promote: put a registry version live on a tuneloop server, blue-green or canary, rolling back by itself.

load into the idle slot -> validate there (smoke accuracy, p95 latency) ->
blue-green: switch, watch | canary: 10/25/50/75/100% with an analysis at each
step -> a breach rolls back (aliases untouched) -> success moves the registry
alias (`production`) by compare-and-swap.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tuneloop.tasks import start_attempt
from tuneloop.tasks.serving import admin_for, check_slot, load_candidate, roll_back, set_canary, switch_slot
from tuneloop.runtime import observability as metrics
from tuneloop.errors import ConflictError
from tuneloop.runtime.faults import crash_point
from tuneloop.registry import open_registry
from tuneloop.serving.rollout import default_smoke_path, idle_slot, read_smoke, summary_markdown
from tuneloop.specs import PromoteSpec


def _watch(spec: PromoteSpec, slot: str, items: list, since: float, seconds: float, label: str, checks: list):
    """Analyses every few seconds for `seconds`; the first failing one is returned."""
    end = since + seconds
    k = 0
    while True:
        k += 1
        time.sleep(max(0.0, min(5.0, end - time.time())))
        c = check_slot(spec, slot, items, since, f"{label} check {k}")
        checks.append(c.to_json())
        if not c.ok or time.time() >= end:
            return c


# A persisted result makes Prefect refuse to move a Completed run back to Scheduled, so a late retry
# automation (deployments/automations.yaml) can never re-run a run that has finished.
@flow(name="promote", persist_result=True, result_serializer="json")
def promote(spec: PromoteSpec) -> dict:
    logger = get_run_logger()
    if (stale := start_attempt(logger)) is not None:
        return stale
    registry = open_registry()
    version = registry.get(spec.version)
    expected = registry.aliases().get(spec.alias)
    result = {"version": version.id, "mode": spec.mode, "alias": spec.alias, "alias_before": expected,
              "checks": []}
    checks = result["checks"]
    status = admin_for(spec).status()
    if status["slots"][status["live"]]["version"] == version.id and status["canary"] is None:
        result.update(outcome="already-live", reason=f"{version.id} is already live in {status['live']}")
        if expected != version.id:  # a run that crashed after its switch, retried: finish its alias move
            registry.set_alias(spec.alias, version.id, expected=expected)
            result["reason"] += f"; {spec.alias}: {expected} -> {version.id}"
    else:
        items = read_smoke(spec.smoke or default_smoke_path(version.manifest), spec.smoke_items)
        probes = items[: spec.probe_items]
        slot = idle_slot(status)
        result["slot"] = slot
        logger.info(f"loading {version.id} into the idle slot {slot}")
        t0 = time.time()
        load_candidate(spec, slot, version.id)
        c = check_slot(spec, slot, items, t0, "validation")
        checks.append(c.to_json())
        if not c.ok:
            result.update(outcome="rejected", reason="validation failed: " + "; ".join(c.reasons))
        else:
            breach = None
            if spec.mode == "canary":
                for w in spec.canary_steps[:-1]:
                    since = set_canary(spec, slot, w)
                    logger.info(f"canary {w:.0%} on {slot}")
                    c = _watch(spec, slot, probes, since, spec.step_seconds, f"canary {w:.0%}", checks)
                    if not c.ok:
                        breach = f"canary {w:.0%}: " + "; ".join(c.reasons)
                        break
            if breach is None:
                since = switch_slot(spec, slot, version.id)
                crash_point("promote-switched")  # live traffic moved, the alias not yet
                logger.info(f"switched: {slot} ({version.id}) is live; watching {spec.watch_seconds:.0f} s")
                c = _watch(spec, slot, probes, since, spec.watch_seconds, "after switch", checks)
                if not c.ok:
                    breach = "after switch: " + "; ".join(c.reasons)
            if breach is not None:
                roll_back(spec, version.id, breach)
                metrics.record_rollback(version.manifest.get("tenant", "default"))
                result.update(outcome="rolled-back", reason=breach)
            else:
                try:
                    registry.set_alias(spec.alias, version.id, expected=expected)
                except ConflictError as e:
                    roll_back(spec, version.id, f"registry conflict: {e}")
                    result.update(outcome="rolled-back", reason=f"registry conflict: {e}")
                    raise
                result.update(outcome="promoted", reason=f"{version.id} is live in {slot}; "
                                                         f"{spec.alias}: {expected} -> {version.id}")
    result["alias_after"] = registry.aliases().get(spec.alias)
    logger.info(f"{result['outcome']}: {result['reason']}")
    create_markdown_artifact(summary_markdown(result), key="promotion", description=result["reason"][:250])
    return result
