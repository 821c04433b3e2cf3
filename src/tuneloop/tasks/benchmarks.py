"""General benchmarks: scoring a model on them."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.evals.records import Recorded, record_benchmarks
from tuneloop.evals.suite import BenchmarkResult, evaluate_benchmarks
from tuneloop.registry import DEFAULT_TENANT, Version, open_registry
from tuneloop.specs import BenchmarkSpec


@task(name="run-benchmark-suite", **TASK_DEFAULTS)
def run_benchmark_suite(spec: BenchmarkSpec, base_path: str, adapter_dir: Path | None,
                        quantization: str = "none") -> dict[str, BenchmarkResult]:
    return evaluate_benchmarks(base_path, adapter_dir, list(spec.names), spec.batch_size, spec.limit,
                               spec.max_new_tokens, quantization)


@task(name="record-benchmarks", **TASK_DEFAULTS)
def keep_benchmarks(version: Version, results: dict[str, BenchmarkResult], tenant: str = DEFAULT_TENANT) -> Recorded:
    """The results go beside the version in `tenant`'s registry; people read them as a table artifact."""
    recorded = record_benchmarks(open_registry(tenant=tenant), version, results)
    create_table_artifact(recorded.rows, key=f"benchmarks-{version.id}",
                          description=f"general benchmarks of {version.id}")
    return recorded
