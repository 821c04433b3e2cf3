"""The retrain flow learning over time and from preferences: a warm start from the tenant's champion with earlier
rows replayed, recorded in the lineage; a DPO retrain gated the same way as SFT."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from tuneloop.registry import open_registry
from tuneloop.specs import validate_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrain(prefect_harness):
    import sys

    sys.path.insert(0, str(ROOT))
    from tuneloop.flows.retrain import retrain

    return retrain


def demo_spec(data: Path, heldout: Path, tenant: str, **training):
    preset = yaml.safe_load(resources.files("tuneloop").joinpath("assets/demo-preset.yaml").read_text())
    preset["training"] |= training
    preset["gate"]["min_metrics"] = {"exact_match": 0.1}  # round 1 knows half the held-out intents at most
    return validate_spec(preset | {"data": str(data), "eval_data": str(heldout), "tenant": tenant})


def write(path: Path, rows: list[dict], tenant: str) -> Path:
    path.write_text("".join(json.dumps(r | {"tenant": tenant}) + "\n" for r in rows))
    return path


def test_a_warm_start_continues_the_champion_and_replays_its_rows(retrain, tiny_base, demo_files, tmp_path, state_dir):
    rows = [json.loads(line) for line in demo_files["feedback"].read_text().splitlines()]
    held = [json.loads(line) for line in demo_files["heldout"].read_text().splitlines()]
    first, second = ("billing", "shipping", "refund"), ("account", "technical", "cancel")
    pick = lambda rs, intents: [r for r in rs if r["messages"][-1]["content"] in intents]  # noqa: E731
    heldout = write(tmp_path / "heldout.jsonl", pick(held, first + second), "cl")

    one = retrain(demo_spec(write(tmp_path / "r1.jsonl", pick(rows, first), "cl"), heldout, "cl",
                            epochs=3, init_from="champion"))
    assert one["promoted"] is True and one["version"] == "v1"
    reg = open_registry(tenant="cl")
    v1 = reg.get("v1")
    assert v1.manifest["lineage"] == {"method": "sft", "init_from": None, "replay": None}  # no champion yet

    two = retrain(demo_spec(write(tmp_path / "r2.jsonl", pick(rows, second), "cl"), heldout, "cl",
                            epochs=1, max_steps=6, init_from="champion", replay={"fraction": 0.25}))
    v2 = reg.get(two["version"])
    lineage = v2.manifest["lineage"]
    assert lineage["init_from"] == "v1" and v2.manifest["parent_version"] == "v1"
    assert lineage["replay"] == {v1.manifest["dataset_version"][:16]: pytest.approx(0.25 * 160, abs=12)}
    assert v2.manifest["spec"]["training"]["init_adapter"]  # it trained on from the champion's adapter
    train_rows = (state_dir / "datasets" / v2.manifest["dataset_version"][:16] / "train.jsonl").read_text().splitlines()
    intents = {json.loads(x)["messages"][-1]["content"] for x in train_rows}
    assert set(first) <= intents and set(second) <= intents  # round 1's rows came back in


def test_a_dpo_retrain_trains_on_pairs_and_is_gated_on_the_preferred_answers(retrain, tiny_base, tmp_path, state_dir):
    from tuneloop.demo.data import write_preference_data

    files = write_preference_data(tmp_path / "pref", seed=1)
    out = retrain(demo_spec(files["pairs"], files["heldout"], "demo", method="dpo", epochs=1, max_steps=8))
    v = open_registry(tenant="demo").get(out["version"])
    assert v.manifest["lineage"]["method"] == "dpo" and v.manifest["spec"]["training"]["sft_weight"] == 1.0
    assert v.manifest["dataset"]["splits"]["train"] > 300 and "exact_match" in v.manifest["metrics"]
    assert out["incumbent_label"] == "base" and isinstance(out["promoted"], bool)


def test_a_warm_start_needs_a_champion_on_the_same_base(retrain, tmp_path):
    from tuneloop.flows.retrain import warm_start
    from tuneloop.gate.incumbent import Incumbent

    said = []

    class Log:
        info = warning = staticmethod(said.append)

    spec = demo_spec(tmp_path / "d.jsonl", tmp_path / "h.jsonl", "w", init_from="champion")
    assert warm_start(spec, Incumbent(None, "/models/tiny", None), "/models/tiny", Log) == (spec, None)
    assert "no champion yet" in said[-1]
    other = Incumbent("v3", "/models/other", tmp_path / "adapter")
    assert warm_start(spec, other, "/models/tiny", Log) == (spec, None) and "another base" in said[-1]
    warm, parent = warm_start(spec, Incumbent("v3", "/models/tiny", tmp_path / "adapter"), "/models/tiny", Log)
    assert parent == "v3" and warm.training.init_adapter == tmp_path / "adapter"
    cold = demo_spec(tmp_path / "d.jsonl", tmp_path / "h.jsonl", "w")
    assert warm_start(cold, Incumbent("v3", "/models/tiny", tmp_path / "adapter"), "/models/tiny", Log) == (cold, None)
