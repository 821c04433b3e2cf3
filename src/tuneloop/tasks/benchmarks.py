"""General benchmarks: scoring a model on them."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.evals.suite import BenchmarkResult, evaluate_benchmarks
from tuneloop.specs import BenchmarkSpec


@task(name="run-benchmark-suite", **TASK_DEFAULTS)
def run_benchmark_suite(spec: BenchmarkSpec, base_path: str, adapter_dir: Path | None,
                        quantization: str = "none") -> dict[str, BenchmarkResult]:
    return evaluate_benchmarks(base_path, adapter_dir, list(spec.names), spec.batch_size, spec.limit,
                               spec.max_new_tokens, quantization)
