"""Registry writes: new versions and alias moves."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks import TASK_DEFAULTS
from tuneloop.promotion import Decision
from tuneloop.registry import Version, open_registry
from tuneloop.report import retrain_markdown


@task(name="register-candidate", **TASK_DEFAULTS)
def register_candidate(adapter_dir, **manifest) -> Version:
    registry = open_registry()
    version = registry.create_version(adapter_dir, **manifest)
    registry.set_alias("challenger", version.id)
    return version


@task(name="apply-decision", **TASK_DEFAULTS)
def apply_decision(version_id: str, decision: Decision) -> None:
    open_registry().record_decision(version_id, decision.to_json())


@task(name="publish-report", **TASK_DEFAULTS)
def publish_report(summary: dict) -> str:
    """The summary goes into the registry beside the version; people read it as a Prefect artifact."""
    open_registry().attach(summary["version"], "evaluation.json", summary)
    markdown = retrain_markdown(summary)
    create_markdown_artifact(markdown, key="retrain-report", description=summary["decision"]["reason"][:250])
    return markdown
