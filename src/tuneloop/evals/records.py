"""Benchmark results kept beside the registry version they scored, with its lineage, one file per run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from tuneloop.evals.suite import BenchmarkResult, headline


@dataclass
class Recorded:
    version: str
    path: str
    rows: list[dict]  # benchmark, items, metric (the headline), score, seconds

    def to_json(self) -> dict:
        return {"version": self.version, "path": self.path, "scores": {r["benchmark"]: r["score"] for r in self.rows}}


def record_benchmarks(registry, version, results: dict[str, BenchmarkResult]) -> Recorded:
    """Attach `benchmarks-<UTC stamp>.json` (the results and the version's lineage) to `version`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    m = version.manifest
    record = {
        "version": version.id, "at": stamp, "base_model": m["base_model"],
        "lineage": {"parent_version": m.get("parent_version"), "dataset_version": m.get("dataset_version"),
                    "feedback_window": m.get("feedback_window")},
        "results": {name: r.to_json() for name, r in results.items()},
    }
    path = registry.attach(version.id, f"benchmarks-{stamp}.json", record)
    rows = [{"benchmark": name, "items": r.n, "metric": headline(r), "score": r.metrics[headline(r)],
             "seconds": round(r.seconds, 2)} for name, r in results.items()]
    return Recorded(version.id, str(path), rows)


def training_quantization(version) -> str:
    """The quantization the version was trained with: it is scored the same way."""
    return version.manifest.get("spec", {}).get("training", {}).get("quantization", "none")
