"""The evaluation summary of one retrain: what reports render and the registry keeps."""

from __future__ import annotations

from datetime import datetime, timezone

from tuneloop.gate.decide import Decision, paired_bootstrap

SAMPLE_ITEMS = 20


def benchmark_rows(candidate: dict, incumbent: dict, decision: Decision, confidence: float = 0.95,
                   resamples: int = 2000) -> dict:
    """One report row per guarded benchmark: both models' metrics, the paired interval of the
    headline difference, and the gate's own tolerance and verdict for it."""
    from tuneloop.evals.suite import headline

    rows = {}
    for name, c in candidate.items():
        metric, verdict = headline(c), decision.guarded[name]
        delta, low, high = paired_bootstrap(c.per_item[metric], incumbent[name].per_item[metric],
                                            resamples or 2000, confidence)
        rows[name] = {"metric": metric, "candidate": c.metrics, "incumbent": incumbent[name].metrics,
                      "delta": delta, "low": low, "high": high, "tolerance": verdict["tolerance"], "ok": verdict["ok"]}
    return rows


def build_summary(version: str, decision: Decision, candidate, incumbent, training: dict, dataset,
                  benchmarks: dict | None = None, judge: dict | None = None, confidence: float = 0.95,
                  resamples: int = 2000) -> dict:
    """candidate / incumbent are `EvalResult`s on the same items; training is `TrainResult.to_json()`."""
    intervals = {}
    for metric, cand_items in candidate.per_item.items():
        inc_items = incumbent.per_item.get(metric)
        if inc_items and set(inc_items) == set(cand_items) and cand_items:
            delta, low, high = paired_bootstrap(cand_items, inc_items, resamples or 2000, confidence)
            intervals[metric] = {"delta": delta, "low": low, "high": high}
    by_id = {i["id"]: i for i in incumbent.items}
    items = [{"id": c["id"], "prompt": c["prompt"], "reference": c["reference"], "candidate": c["prediction"],
              "incumbent": by_id.get(c["id"], {}).get("prediction")} for c in candidate.items[:SAMPLE_ITEMS]]
    return {
        "version": version, "promoted": decision.promote, "decision": decision.to_json(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "candidate_metrics": candidate.metrics, "incumbent_metrics": incumbent.metrics,
        "incumbent_label": incumbent.label, "intervals": intervals,
        "benchmarks": benchmarks or {}, "judge": judge or {},
        "dataset_version": dataset.version, "dataset_splits": dataset.manifest()["splits"],
        "training": training, "items": items,
    }
