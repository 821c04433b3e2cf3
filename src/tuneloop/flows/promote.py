"""promote: put a registry version live on a tuneloop server, blue-green or canary, rolling back by itself.

load into the idle slot -> validate there (smoke accuracy, p95 latency) ->
blue-green: switch, watch | canary: 10/25/50/75/100% with an analysis at each
step -> a breach rolls back (aliases untouched) -> success moves the registry
alias (`production`) by compare-and-swap.
"""

from __future__ import annotations

from prefect import flow

from tuneloop.errors import ConflictError
from tuneloop.runtime.faults import crash_point
from tuneloop.serving.outcome import promotion_outcome
from tuneloop.serving.rollout import idle_slot
from tuneloop.serving.stages import already_live, breach_of, stages, watch
from tuneloop.specs import PromoteSpec, for_tenant
from tuneloop.tasks import run_logger, start_attempt
from tuneloop.tasks.registry import read_version
from tuneloop.tasks.serving import (check_slot, load_candidate, move_alias, publish_promotion, read_alias,
                                    read_serving_status, read_smoke_items, roll_back, set_canary, switch_slot)


# A persisted result makes Prefect refuse to move a Completed run back to Scheduled, so a late retry
# automation (deployments/automations.yaml) can never re-run a run that has finished.
@flow(name="promote", persist_result=True, result_serializer="json")
def promote(spec: PromoteSpec, tenant: str | None = None) -> dict:
    """`tenant`: promote in this tenant's registry instead of the spec's (the champion.changed trigger passes
    the tenant its event names)."""
    logger = run_logger()
    spec = for_tenant(spec, tenant)
    if (stale := start_attempt(logger)) is not None:
        return stale
    version, alias_before = read_version(spec.version, spec.alias, spec.tenant)
    status = read_serving_status(spec)
    slot, checks, breach = None, [], None
    if already_live(status, version.id):
        if alias_before != version.id:  # a run that crashed after its switch, retried: finish its alias move
            move_alias(spec.alias, version.id, alias_before, spec.tenant)
    else:
        slot, items = idle_slot(status), read_smoke_items(spec, version.manifest)
        logger.info(f"loading {version.id} into the idle slot {slot}")
        since = load_candidate(spec, slot, version.id)
        checks.append(check_slot(spec, slot, items, since, "validation"))
        for stage in stages(spec) if checks[0].ok else []:
            if stage.weight is not None:
                since = set_canary(spec, slot, stage.weight)
                logger.info(f"{stage.label} on {slot}")
            else:
                since = switch_slot(spec, slot, version.id)
                crash_point("promote-switched")  # live traffic moved, the alias not yet
                logger.info(f"switched: {slot} ({version.id}) is live; watching {stage.seconds:.0f} s")
            # one check-slot task per analysis (each retried on its own), every few seconds for the stage's time
            checks += watch(lambda at: check_slot(spec, slot, items[: spec.probe_items], since, at),
                            since, stage.seconds, stage.label)
            if (breach := breach_of(stage, checks)) is not None:
                break
        if breach is not None:  # aliases untouched
            roll_back(spec, version.id, breach, tenant=spec.tenant)
        elif checks[0].ok:
            try:
                move_alias(spec.alias, version.id, alias_before, spec.tenant)
            except ConflictError as e:  # another promotion moved the alias meanwhile: undo the switch, fail
                roll_back(spec, version.id, f"registry conflict: {e}")
                raise
    outcome = promotion_outcome(spec, version.id, status, alias_before, read_alias(spec.alias, spec.tenant), slot, checks, breach)
    logger.info(f"{outcome.outcome}: {outcome.reason}")
    return publish_promotion(outcome)
