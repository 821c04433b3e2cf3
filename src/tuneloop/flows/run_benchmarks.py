"""run-benchmarks: score a registry version on general benchmarks and keep the results beside it."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow
from prefect.artifacts import create_table_artifact

from tuneloop.tasks import run_logger
from tuneloop.tasks.benchmarks import run_benchmark_suite
from tuneloop.tasks.data import prepare_base_model
from tuneloop.tasks.registry import fetch_adapter
from tuneloop.evals.suite import headline
from tuneloop.registry import open_registry
from tuneloop.specs import RunBenchmarksSpec


@flow(name="run-benchmarks")
def run_benchmarks(spec: RunBenchmarksSpec) -> dict:
    logger = run_logger()
    registry = open_registry()
    version = registry.get(spec.version)
    base = prepare_base_model(version.manifest["base_model"])
    quantization = version.manifest.get("spec", {}).get("training", {}).get("quantization", "none")
    results = run_benchmark_suite(spec.benchmarks, base, fetch_adapter(version.id), quantization)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {
        "version": version.id, "at": stamp, "base_model": version.manifest["base_model"],
        "lineage": {"parent_version": version.manifest.get("parent_version"),
                    "dataset_version": version.manifest.get("dataset_version"),
                    "feedback_window": version.manifest.get("feedback_window")},
        "results": {name: r.to_json() for name, r in results.items()},
    }
    path = registry.attach(version.id, f"benchmarks-{stamp}.json", record)
    rows = [{"benchmark": name, "items": r.n, "metric": headline(r), "score": r.metrics[headline(r)],
             "seconds": round(r.seconds, 2)} for name, r in results.items()]
    create_table_artifact(rows, key=f"benchmarks-{version.id}", description=f"general benchmarks of {version.id}")
    logger.info(f"{version.id}: " + ", ".join(f"{r['benchmark']} {r['score']:.3f}" for r in rows))
    return {"version": version.id, "path": str(path),
            "scores": {r["benchmark"]: r["score"] for r in rows}}
