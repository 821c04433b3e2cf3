"""General benchmarks: scoring a model, comparing two, storing results against a version."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks import TASK_DEFAULTS
from tuneloop.evals.benchmarks import BenchmarkResult, evaluate_benchmarks
from tuneloop.promotion import paired_bootstrap
from tuneloop.specs import BenchmarkSpec, GateSpec


@task(name="run-benchmark-suite", **TASK_DEFAULTS)
def run_benchmark_suite(spec: BenchmarkSpec, base_path: str, adapter_dir: Path | None,
                        quantization: str = "none") -> dict[str, BenchmarkResult]:
    return evaluate_benchmarks(base_path, adapter_dir, list(spec.names), spec.batch_size, spec.limit,
                               spec.max_new_tokens, quantization)


def headline(result: BenchmarkResult) -> str:
    """The metric a benchmark is guarded on: normalized accuracy for multiple choice, else exact match."""
    return "acc_norm" if "acc_norm" in result.per_item else "exact_match"


def compare_benchmarks(candidate: dict[str, BenchmarkResult], incumbent: dict[str, BenchmarkResult],
                       gate: GateSpec) -> tuple[dict, dict]:
    """(guarded per-item pairs for `decide`, a summary row per benchmark for reports)."""
    guarded, rows = {}, {}
    for name, c in candidate.items():
        i, metric = incumbent[name], headline(c)
        guarded[name] = (c.per_item[metric], i.per_item[metric])
        delta, low, high = paired_bootstrap(c.per_item[metric], i.per_item[metric], gate.bootstrap_resamples or 2000,
                                            gate.confidence, gate.seed)
        tol = gate.guarded.get(name, gate.default_tolerance)
        rows[name] = {"metric": metric, "candidate": c.metrics, "incumbent": i.metrics, "delta": delta,
                      "low": low, "high": high, "tolerance": tol, "ok": -delta <= tol + 1e-12}
    return guarded, rows
