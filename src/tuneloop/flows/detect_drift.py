"""detect-drift: are recent prompts still like the ones the champion was trained on?"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tuneloop.tasks import run_logger
from tuneloop.tasks.drift import emit_drift_event, load_reference_prompts, load_window, run_drift_test
from tuneloop.runtime.fsutil import atomic_write_text
from tuneloop.runtime import shared
from tuneloop.settings import get_settings
from tuneloop.specs import DriftSpec, for_tenant

MIN_PROMPTS = 20


@flow(name="detect-drift")
def detect_drift(spec: DriftSpec, tenant: str | None = None) -> dict:
    """`tenant`: test this tenant's prompts against its own champion instead of the spec's tenant."""
    logger = run_logger()
    spec = for_tenant(spec, tenant)
    reference, where = load_reference_prompts(spec)
    window = load_window(spec)
    if len(reference) < MIN_PROMPTS or len(window["prompts"]) < MIN_PROMPTS:
        msg = (f"not enough prompts to test drift: {len(reference)} reference ({where}), "
               f"{len(window['prompts'])} in the last {spec.window_days:g} days (need {MIN_PROMPTS} each)")
        logger.info(msg)
        return {"drifted": False, "skipped": msg}
    report = run_drift_test(spec, reference, window)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = get_settings().state_dir / "drift" / spec.tenant / f"drift-{stamp}.json"
    data = report.to_json() | {"reference_source": where, "tenant": spec.tenant, "window_days": spec.window_days}
    atomic_write_text(path, json.dumps(data, indent=2, default=str))
    shared.push(path)
    fired = report.drifted or report.output_dropped
    verdict = ("DRIFT DETECTED" if report.drifted else "no prompt drift") + \
        ("; feedback scores dropped" if report.output_dropped else "")
    create_markdown_artifact(
        f"# detect-drift ({spec.tenant}): {verdict}\n\n"
        f"- reference: {where}, {report.n_reference} prompts\n- window: last {spec.window_days:g} days, "
        f"{report.n_window} prompts\n- classifier AUC {report.auc:.3f}, p-value {report.p_value:.3g} "
        f"(alpha {spec.alpha}, min AUC {spec.min_auc}), embeddings: {report.backend}\n"
        f"- report: `{path}`\n", key=f"drift-{spec.tenant}", description=verdict)
    if fired and spec.emit_events:
        emit_drift_event(spec, report, path)
    logger.info(f"{verdict}: AUC {report.auc:.3f}, p {report.p_value:.3g}")
    return {"drifted": report.drifted, "output_dropped": report.output_dropped, "report": str(path),
            "auc": report.auc, "p_value": report.p_value, "event": bool(fired and spec.emit_events)}
