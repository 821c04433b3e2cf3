"""Registry reads and writes: verified adapters, new versions and alias moves."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.gate import incumbent
from tuneloop.gate.apply import commit_decision, register_challenger
from tuneloop.gate.decide import Decision
from tuneloop.models.base import resolve_base_model
from tuneloop.registry import DEFAULT_TENANT, Version, open_registry
from tuneloop.reports.markdown import render_markdown
from tuneloop.reports.summary import RetrainSummary
from tuneloop.reports.write import write_reports
from tuneloop.settings import get_settings

CHAMPION_EVENT = "tuneloop.champion.changed"


@task(name="fetch-adapter", **TASK_DEFAULTS)
def fetch_adapter(ref: str, tenant: str = DEFAULT_TENANT) -> Path:
    """A local adapter folder for a version of `tenant`'s registry, every file checked against its sha256
    (downloaded first from a remote registry)."""
    return open_registry(tenant=tenant).adapter_for(ref)


@task(name="register-candidate", **TASK_DEFAULTS)
def register_candidate(adapter_dir, tenant: str = DEFAULT_TENANT, **manifest) -> Version:
    """A new version in `tenant`'s registry. Idempotent (see gate.apply.register_challenger): a retried run
    finds the version it registered."""
    return register_challenger(open_registry(tenant=tenant), adapter_dir, **manifest)


@task(name="read-version", **TASK_DEFAULTS)
def read_version(ref: str, alias: str | None = None, tenant: str = DEFAULT_TENANT) -> tuple[Version, str | None]:
    """A version of `tenant`'s registry, and the version `alias` points at now (what a move of that alias
    will expect)."""
    registry = open_registry(tenant=tenant)
    return registry.get(ref), registry.aliases().get(alias) if alias else None


@task(name="resolve-incumbent", **TASK_DEFAULTS)
def resolve_incumbent(base_path: str, tenant: str = DEFAULT_TENANT) -> incumbent.Incumbent:
    """`tenant`'s champion now (its own base model and verified adapter), or the base alone while it has none."""
    logger = get_run_logger()
    return incumbent.resolve_incumbent(open_registry(tenant=tenant), base_path,
                                       lambda name: resolve_base_model(name, get_settings().models_dir, log=logger.info))


@task(name="apply-decision", **TASK_DEFAULTS)
def apply_decision(version_id: str, decision: Decision, tenant: str = DEFAULT_TENANT, *,
                   expected_champion: str | None) -> None:
    """`tenant`'s champion moves only if it is still `expected_champion`, the incumbent the gate compared
    against; otherwise ConflictError (not retried: the decision is stale) and nothing changes."""
    commit_decision(open_registry(tenant=tenant), version_id, decision, tenant, expected_champion,
                    get_settings().state_dir / "metrics" / "tuneloop.prom")
    if decision.promote:  # the `promote` deployment's trigger: a new champion goes to serving
        emit_event(event=CHAMPION_EVENT, resource={"prefect.resource.id": f"tuneloop.model.{version_id}",
                                                   "tuneloop.tenant": tenant},
                   payload={"version": version_id, "replaced": expected_champion})


@task(name="publish-report", **TASK_DEFAULTS)
def publish_report(summary: RetrainSummary, tenant: str = DEFAULT_TENANT) -> RetrainSummary:
    """The summary goes into the registry beside the version (JSON, Markdown, HTML); people read it
    in the Prefect UI as a Markdown artifact and a metrics table. Returns it naming its reports."""
    registry = open_registry(tenant=tenant)
    registry.attach(summary.version, "evaluation.json", summary.to_json())
    out = registry.get(summary.version).path / "report"
    paths = write_reports(summary, out)
    registry.attach_folder(summary.version, "report", out)  # a no-op when the registry is this folder
    reason = summary.decision.reason[:250]
    create_markdown_artifact(render_markdown(summary), key="retrain-report", description=reason)
    rows = [{"metric": m, "incumbent": summary.incumbent_metrics.get(m), "candidate": v,
             **({"ci_low": summary.intervals[m].low, "ci_high": summary.intervals[m].high}
                if m in summary.intervals else {})}
            for m, v in summary.candidate_metrics.items()]
    create_table_artifact(rows, key="retrain-metrics", description=reason)
    return summary.with_reports(paths)
