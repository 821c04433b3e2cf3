"""collect-feedback: fetch what is new from every source, rebuild each tenant's dataset, then emit the negative
events: a retrain an event starts always finds the data the event announces."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from tuneloop.tasks import run_logger
from tuneloop.tasks.feedback import build_dataset, collect_source, emit_negative_events
from tuneloop.feedback.items import FeedbackPolicy
from tuneloop.specs import CollectSpec


@flow(name="collect-feedback")
def collect_feedback(spec: CollectSpec) -> dict:
    logger = run_logger()
    policy = FeedbackPolicy(min_score=spec.min_score, min_rating=spec.min_rating)
    results = [collect_source(source) for source in spec.sources]  # every new item stored first
    rows = [result.summary(policy) for result in results]
    tenants = sorted({i.tenant for result in results for i in result.new})
    datasets = {}
    if spec.build_datasets:
        for tenant in tenants:
            ds = build_dataset(tenant, spec.window_days, policy, spec.max_user_share, spec.license)
            datasets[tenant] = {"version": ds.version, "path": str(ds.path), **ds.counts}
    events = 0
    if spec.emit_events:  # after the datasets they count toward
        for result in results:
            events += emit_negative_events(result, policy, {t: d["version"] for t, d in datasets.items()})
    create_table_artifact(rows, key="collect-feedback", description="items fetched, new and negative per source")
    summary = {"sources": rows, "new": sum(r["new"] for r in rows), "negative_events": events,
               "datasets": datasets}
    logger.info(f"collected {summary['new']} new item(s), {events} negative event(s), datasets: {list(datasets)}")
    return summary
