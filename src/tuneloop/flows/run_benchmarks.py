"""run-benchmarks: score a registry version on general benchmarks and keep the results beside it."""

from __future__ import annotations

from prefect import flow

from tuneloop.evals.records import training_quantization
from tuneloop.specs import RunBenchmarksSpec
from tuneloop.tasks import run_logger
from tuneloop.tasks.benchmarks import keep_benchmarks, run_benchmark_suite
from tuneloop.tasks.data import prepare_base_model
from tuneloop.tasks.registry import fetch_adapter, read_version


@flow(name="run-benchmarks")
def run_benchmarks(spec: RunBenchmarksSpec) -> dict:
    logger = run_logger()
    version, _ = read_version(spec.version, tenant=spec.tenant)
    base = prepare_base_model(version.manifest["base_model"])
    results = run_benchmark_suite(spec.benchmarks, base, fetch_adapter(version.id, spec.tenant), training_quantization(version))
    recorded = keep_benchmarks(version, results, spec.tenant)
    logger.info(f"{version.id}: " + ", ".join(f"{r['benchmark']} {r['score']:.3f}" for r in recorded.rows))
    return recorded.to_json()
