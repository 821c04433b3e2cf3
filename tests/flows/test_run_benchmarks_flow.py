"""run-benchmarks under a temporary Prefect API: results stored against the version and its lineage."""

from __future__ import annotations

import pytest

from conftest import ROOT
from tuneloop.data import prepare_dataset
from tuneloop.registry import open_registry
from tuneloop.specs import DataSpec, RunBenchmarksSpec, TrainingSpec
from tuneloop.training import train_lora

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_benchmarks(prefect_harness):
    import sys

    sys.path.insert(0, str(ROOT))
    from tuneloop.flows.run_benchmarks import run_benchmarks

    return run_benchmarks


def test_scores_the_champion_and_stores_results(run_benchmarks, tiny_base, demo_files, state_dir, tmp_path):
    ds = prepare_dataset(demo_files["feedback"], DataSpec())
    trained = train_lora(TrainingSpec(max_steps=2, batch_size=8, gradient_accumulation=1), tiny_base,
                         ds.train[:16], ds.validation[:4], tmp_path / "run", log=lambda m: None)
    reg = open_registry()
    v = reg.create_version(trained.adapter_dir, base_model="tuneloop/tiny-llama", dataset_version=ds.version,
                           parent_version=None, spec={}, metrics={})
    reg.set_alias("champion", v.id)

    out = run_benchmarks(RunBenchmarksSpec(benchmarks={"names": ["arc_easy", "triviaqa"], "limit": 5}))
    assert out["version"] == "v1" and set(out["scores"]) == {"arc_easy", "triviaqa"}
    assert all(0.0 <= s <= 1.0 for s in out["scores"].values())
    stored = [p for p in v.path.iterdir() if p.name.startswith("benchmarks-")]
    assert len(stored) == 1
    record = reg.attachment("v1", stored[0].name)
    assert record["lineage"]["dataset_version"] == ds.version
    assert record["results"]["arc_easy"]["n"] == 5 and "acc_norm" in record["results"]["arc_easy"]["metrics"]
    assert reg.verify("v1") == []  # attachments do not disturb the manifest's checksums
