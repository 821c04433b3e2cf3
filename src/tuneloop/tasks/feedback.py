"""Feedback collection and dataset building."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.events import emit_event

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.runtime import observability as metrics
from tuneloop.feedback.build import FeedbackDataset, build_feedback_dataset, load_feedback_dataset
from tuneloop.feedback.collect import CollectResult, collect
from tuneloop.feedback.items import FeedbackPolicy
from tuneloop.feedback.sources import make_source
from tuneloop.feedback.store import FeedbackStore
from tuneloop.runtime import shared
from tuneloop.runtime.fsutil import atomic_write_text
from tuneloop.settings import get_settings
from tuneloop.specs import FeedbackDataSpec, SourceSpec

NEGATIVE_EVENT = "tuneloop.feedback.negative"


def feedback_store() -> FeedbackStore:
    return FeedbackStore(get_settings().state_dir / "feedback", shared=shared.shared_state())


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
def emit_negative_events(result: CollectResult, policy: FeedbackPolicy, datasets: dict | None = None) -> int:
    """One `tuneloop.feedback.negative` event per new negative item, naming its tenant: retrain's trigger
    counts them per tenant. `datasets`: tenant -> the dataset version already built with the item."""
    n = 0
    for item, reason in result.negatives(policy):
        emit_event(event=NEGATIVE_EVENT,
                   resource={"prefect.resource.id": f"tuneloop.feedback.{item.id}",
                             "tuneloop.tenant": item.tenant, "tuneloop.source": item.source},
                   payload={"reason": reason, "score": item.score, "rating": item.rating,
                            **({"dataset": datasets[item.tenant]} if item.tenant in (datasets or {}) else {})})
        n += 1
    return n


@task(name="build-tenant-dataset", **TASK_DEFAULTS)
def dataset_for_run(tenant: str, spec: FeedbackDataSpec, run_id: str | None) -> FeedbackDataset:
    """`tenant`'s feedback dataset for a retrain run, built from the store now: it holds every item stored
    before the run started, so every negative event that could have triggered the run is in it. Pinned to
    the run (`run_id`): a retried attempt trains on the very dataset its first attempt built, and finds its
    checkpoint, whatever feedback arrived in between."""
    root = get_settings().state_dir / "feedback" / "datasets"
    pin = root / tenant / "runs" / f"{run_id}.txt" if run_id else None
    if pin is not None and shared.pull(pin):  # (an attempt on another machine pinned it in the shared state)
        pinned = root / tenant / pin.read_text().strip()
        if shared.pull(pinned, "datasheet.json"):
            return load_feedback_dataset(pinned)
    policy = FeedbackPolicy(min_score=spec.min_score, min_rating=spec.min_rating)
    ds = build_feedback_dataset(feedback_store().items(), root, tenant=tenant, window_days=spec.window_days,
                                policy=policy, max_user_share=spec.max_user_share, license=spec.license)
    shared.push(ds.path, "datasheet.json")
    if pin is not None:
        atomic_write_text(pin, ds.path.name + "\n")
        shared.push(pin)
    get_run_logger().info(f"tenant {tenant}: dataset {ds.version[:16]} from the feedback store, {ds.counts}")
    return ds


@task(name="build-feedback-dataset", **TASK_DEFAULTS)
def build_dataset(tenant: str, window_days: float, policy: FeedbackPolicy, max_user_share: float,
                  license: str) -> FeedbackDataset:
    return build_feedback_dataset(feedback_store().items(), get_settings().state_dir / "feedback" / "datasets",
                                  tenant=tenant, window_days=window_days, policy=policy,
                                  max_user_share=max_user_share, license=license)
