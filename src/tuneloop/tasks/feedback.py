"""Feedback collection and dataset building."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.events import emit_event

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.runtime import observability as metrics
from tuneloop.feedback.build import FeedbackDataset, build_feedback_dataset
from tuneloop.feedback.collect import CollectResult, collect
from tuneloop.feedback.items import FeedbackPolicy
from tuneloop.feedback.sources import make_source
from tuneloop.feedback.store import FeedbackStore
from tuneloop.settings import get_settings
from tuneloop.specs import SourceSpec

NEGATIVE_EVENT = "tuneloop.feedback.negative"


def feedback_store() -> FeedbackStore:
    return FeedbackStore(get_settings().state_dir / "feedback")


@task(name="collect-source", **TASK_DEFAULTS)
def collect_source(source: SourceSpec) -> CollectResult:
    result = collect(make_source(source), feedback_store())
    for item in result.new:
        metrics.record_feedback(result.source, item.label()[0])
    metrics.write_textfile(get_settings().state_dir / "metrics" / "tuneloop.prom")
    logger = get_run_logger()
    for err in result.errors[:20]:
        logger.warning(f"{result.source}: skipped {err}")
    return result


@task(name="emit-negative-events", **TASK_DEFAULTS)
def emit_negative_events(result: CollectResult, policy: FeedbackPolicy) -> int:
    """One `tuneloop.feedback.negative` event per new negative item: retrain's trigger counts them."""
    n = 0
    for item, reason in result.negatives(policy):
        emit_event(event=NEGATIVE_EVENT,
                   resource={"prefect.resource.id": f"tuneloop.feedback.{item.id}",
                             "tuneloop.tenant": item.tenant, "tuneloop.source": item.source},
                   payload={"reason": reason, "score": item.score, "rating": item.rating})
        n += 1
    return n


@task(name="build-feedback-dataset", **TASK_DEFAULTS)
def build_dataset(tenant: str, window_days: float, policy: FeedbackPolicy, max_user_share: float,
                  license: str) -> FeedbackDataset:
    return build_feedback_dataset(feedback_store().items(), get_settings().state_dir / "feedback" / "datasets",
                                  tenant=tenant, window_days=window_days, policy=policy,
                                  max_user_share=max_user_share, license=license)
