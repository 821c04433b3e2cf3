"""The retrain flow under a real (temporary) Prefect API: promote, reject, refuse bad data."""

from __future__ import annotations

import asyncio
import json
from importlib import resources

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
    from flows.retrain import retrain

    return retrain


def demo_spec(data, heldout, **training):
    preset = yaml.safe_load(resources.files("tuneloop").joinpath("presets/demo.yaml").read_text())
    preset["training"] |= training
    return validate_spec(preset | {"data": str(data), "eval_data": str(heldout)})


def read_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def go():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return asyncio.run(go())


def test_promotes_good_feedback_then_rejects_corrupted(retrain, tiny_base, demo_files, state_dir):
    one = retrain(demo_spec(demo_files["feedback"], demo_files["heldout"]))
    assert one["promoted"] is True and one["version"] == "v1"
    gain = one["candidate_metrics"]["exact_match"] - one["incumbent_metrics"]["exact_match"]
    assert gain >= 0.30, one["decision"]["reason"]
    assert one["incumbent_label"] == "base"

    two = retrain(demo_spec(demo_files["corrupted"], demo_files["heldout"], epochs=4))
    assert two["promoted"] is False
    assert two["incumbent_label"] == "champion v1"
    assert "exact_match" in two["decision"]["reason"] and "v1" in two["decision"]["reason"]
    assert two["decision"]["items"] == one["decision"]["items"] == 120

    reg = open_registry()
    assert reg.aliases() == {"champion": "v1"}
    v1, v2 = reg.get("v1"), reg.get("v2")
    assert v1.status["status"] == "champion" and v2.status["status"] == "rejected"
    assert v2.status["reason"] == two["decision"]["reason"]
    assert v2.manifest["parent_version"] == "v1" and v1.manifest["parent_version"] is None
    assert v1.manifest["dataset_version"] != v2.manifest["dataset_version"]
    assert reg.verify("v1") == [] and reg.verify("v2") == []
    assert {f["path"] for f in v1.manifest["files"]} >= {"adapter/adapter_config.json",
                                                        "adapter/adapter_model.safetensors"}

    artifacts = read_artifact("retrain-report")
    assert len(artifacts) >= 2
    text = "\n".join(a.data for a in artifacts)
    assert "PROMOTED" in text and "REJECTED" in text and "| exact_match |" in text


def test_bad_data_fails_the_flow_and_writes_nothing(retrain, tiny_base, state_dir, tmp_path):
    from tuneloop.errors import DataValidationError

    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "billing"}]})
    bad.write_text("\n".join([good] * 12 + ['{"messages": [', '{"prompt": "x", "completion": ""}']) + "\n")
    with pytest.raises(DataValidationError) as err:
        retrain(validate_spec({"data": str(bad), "dataset": {"test_split": 0.2}}))
    assert "line 13" in str(err.value) and "line 14" in str(err.value)
    reg = open_registry()
    assert reg.ids() == [] and reg.aliases() == {}
    assert not (state_dir / "datasets").exists()
    assert not (state_dir / "runs").exists()
    report = json.loads(next((state_dir / "reports").glob("validation-*.json")).read_text())
    assert {i["line"] for i in report["issues"]} == {13, 14}
