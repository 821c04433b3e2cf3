"""Drift detection: inputs, the test, the event."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.events import emit_event

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.tasks.feedback import feedback_store
from tuneloop.runtime import observability as metrics
from tuneloop.drift.detect import DriftReport, detect_drift
from tuneloop.feedback.window import prompts_from_jsonl, scores, split_window
from tuneloop.registry import open_registry
from tuneloop.runtime import shared
from tuneloop.settings import get_settings
from tuneloop.specs import DriftSpec

DRIFT_EVENT = "tuneloop.drift.detected"


@task(name="load-reference-prompts", **TASK_DEFAULTS)
def load_reference_prompts(spec: DriftSpec) -> tuple[list[str], str]:
    """The spec's reference file, else the training split the champion was trained on."""
    if spec.reference is not None:
        return prompts_from_jsonl(spec.reference), str(spec.reference)
    champion = open_registry(tenant=spec.tenant).champion()
    if champion is None:
        return [], "no champion yet"
    folder = get_settings().datasets_dir / champion.manifest["dataset_version"][:16]
    shared.pull(folder, "datasheet.json")  # trained on another machine: its dataset is in the shared state
    path = folder / "train.jsonl"
    return prompts_from_jsonl(path), f"champion {champion.id} training data"


@task(name="load-window", **TASK_DEFAULTS)
def load_window(spec: DriftSpec) -> dict:
    window, before = split_window(feedback_store().items(), spec.tenant, spec.window_days)
    return {"prompts": [i.prompt for i in window if i.prompt], "window_scores": scores(window),
            "reference_scores": scores(before)}


@task(name="run-drift-test", **TASK_DEFAULTS)
def run_drift_test(spec: DriftSpec, reference: list[str], window: dict) -> DriftReport:
    return detect_drift(reference, window["prompts"], backend=spec.backend, alpha=spec.alpha,
                        min_auc=spec.min_auc, max_samples=spec.max_samples,
                        reference_scores=window["reference_scores"] or None,
                        window_scores=window["window_scores"] or None)


@task(name="emit-drift-event", **TASK_DEFAULTS)
def emit_drift_event(spec: DriftSpec, report: DriftReport, report_path: Path) -> None:
    metrics.record_drift(spec.tenant)
    emit_event(event=DRIFT_EVENT,
               resource={"prefect.resource.id": f"tuneloop.drift.{spec.tenant}", "tuneloop.tenant": spec.tenant},
               payload={"prompts_drifted": report.drifted, "scores_dropped": report.output_dropped,
                        "auc": report.auc, "p_value": report.p_value, "report": str(report_path)})
    get_run_logger().warning(f"drift for tenant {spec.tenant}: prompts drifted={report.drifted} "
                             f"(AUC {report.auc:.3f}, p {report.p_value:.2g}), scores dropped={report.output_dropped}")
