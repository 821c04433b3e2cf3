"""A candidate registered, and a gate decision applied: recorded in the registry (the champion moves by compare-and-swap) and counted."""

from __future__ import annotations

from pathlib import Path

from tuneloop.gate.decide import Decision
from tuneloop.registry import idempotency_key
from tuneloop.runtime.faults import crash_point
from tuneloop.runtime import observability as metrics


def commit_decision(registry, version_id: str, decision: Decision, tenant: str, expected_champion: str | None,
                    metrics_file: Path) -> None:
    """The champion moves only if it is still `expected_champion`, the incumbent the gate compared against;
    otherwise ConflictError (the decision is stale) and nothing changes. Then the promotion and evaluation
    metrics, written to `metrics_file` for a textfile collector."""
    registry.record_decision(version_id, decision.to_json(), expected_champion=expected_champion)
    metrics.record_promotion(tenant, decision.promote)
    metrics.record_evaluation(version_id, registry.get(version_id).metrics)
    metrics.write_textfile(metrics_file)


def register_challenger(registry, adapter_dir, **manifest):
    """A new version for the candidate, aliased `challenger`. Idempotent: a retried run (after a crash anywhere
    past this point) finds the version its first attempt registered, by the adapter's content and dataset,
    instead of adding a duplicate."""
    key = idempotency_key(adapter_dir, manifest["dataset_version"], manifest.get("spec"))
    version = registry.create_version(adapter_dir, idempotency_key=key, **manifest)
    crash_point("registry-written")  # between the registry write and the alias moves
    registry.set_alias("challenger", version.id)
    return version
