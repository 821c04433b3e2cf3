"""Registry writes: new versions and alias moves."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import TASK_DEFAULTS
from tuneloop import observability as metrics
from tuneloop.promotion import Decision
from tuneloop.registry import Version, open_registry
from tuneloop.reports import render_markdown, write_reports
from tuneloop.settings import get_settings


@task(name="register-candidate", **TASK_DEFAULTS)
def register_candidate(adapter_dir, **manifest) -> Version:
    registry = open_registry()
    version = registry.create_version(adapter_dir, **manifest)
    registry.set_alias("challenger", version.id)
    return version


@task(name="apply-decision", **TASK_DEFAULTS)
def apply_decision(version_id: str, decision: Decision, tenant: str = "default") -> None:
    registry = open_registry()
    registry.record_decision(version_id, decision.to_json())
    metrics.record_promotion(tenant, decision.promote)
    metrics.record_evaluation(version_id, registry.get(version_id).metrics)
    metrics.write_textfile(get_settings().state_dir / "metrics" / "tuneloop.prom")


@task(name="publish-report", **TASK_DEFAULTS)
def publish_report(summary: dict) -> dict:
    """The summary goes into the registry beside the version (JSON, Markdown, HTML); people read it
    in the Prefect UI as a Markdown artifact and a metrics table."""
    registry = open_registry()
    registry.attach(summary["version"], "evaluation.json", summary)
    paths = write_reports(summary, registry.get(summary["version"]).path / "report")
    reason = summary["decision"]["reason"][:250]
    create_markdown_artifact(render_markdown(summary), key="retrain-report", description=reason)
    rows = [{"metric": m, "incumbent": summary["incumbent_metrics"].get(m), "candidate": v,
             **({"ci_low": summary["intervals"][m]["low"], "ci_high": summary["intervals"][m]["high"]}
                if m in summary.get("intervals", {}) else {})}
            for m, v in summary["candidate_metrics"].items()]
    create_table_artifact(rows, key="retrain-metrics", description=reason)
    return {k: str(v) for k, v in paths.items()}
