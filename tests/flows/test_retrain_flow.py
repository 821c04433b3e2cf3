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
    from tuneloop.flows.retrain import retrain

    return retrain


def demo_spec(data, heldout, **training):
    preset = yaml.safe_load(resources.files("tuneloop").joinpath("assets/demo-preset.yaml").read_text())
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

    from tuneloop.specs import BenchmarkSpec

    spec_two = demo_spec(demo_files["corrupted"], demo_files["heldout"], epochs=4)
    two = retrain(spec_two.model_copy(update={"benchmarks": BenchmarkSpec(names=("arc_easy", "triviaqa"), limit=5)}))
    assert two["promoted"] is False
    assert two["incumbent_label"] == "champion v1"
    assert "exact_match" in two["decision"]["reason"] and "v1" in two["decision"]["reason"]
    assert two["decision"]["items"] == one["decision"]["items"] == 120
    assert set(two["benchmarks"]) == {"arc_easy", "triviaqa"}  # guarded general benchmarks, v2 vs v1
    assert set(two["decision"]["guarded"]) == {"arc_easy", "triviaqa"}
    assert any(c["check"].startswith("arc_easy drop vs champion v1") for c in two["decision"]["checks"])

    reg = open_registry(tenant="demo")  # the demo preset's tenant: its own registry
    assert reg.aliases() == {"champion": "v1"}
    v1, v2 = reg.get("v1"), reg.get("v2")
    assert v1.status["status"] == "champion" and v2.status["status"] == "rejected"
    assert v2.status["reason"] == two["decision"]["reason"]
    assert v2.manifest["parent_version"] == "v1" and v1.manifest["parent_version"] is None
    assert v1.manifest["dataset_version"] != v2.manifest["dataset_version"]
    assert reg.verify("v1") == [] and reg.verify("v2") == []
    assert {f["path"] for f in v1.manifest["files"]} >= {"adapter/adapter_config.json",
                                                        "adapter/adapter_model.safetensors"}

    for v in ("v1", "v2"):  # the full summary and its reports live beside the version
        assert reg.attachment(v, "evaluation.json")["decision"]["reason"] == reg.get(v).status["reason"]
        html = (reg.get(v).path / "report" / "report.html").read_text()
        assert html.count("<svg") == 2 and ("PROMOTED" if v == "v1" else "REJECTED") in html
    assert one["decision"]["interval"]["low"] > 0.3

    artifacts = read_artifact("retrain-report")
    assert len(artifacts) >= 2
    text = "\n".join(a.data for a in artifacts)
    assert "PROMOTED" in text and "REJECTED" in text and "| exact_match" in text


def test_bad_data_fails_the_flow_and_writes_nothing(retrain, tiny_base, state_dir, tmp_path):
    from tuneloop.errors import DataValidationError

    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "billing"}]})
    bad.write_text("\n".join([good] * 12 + ['{"messages": [', '{"prompt": "x", "completion": ""}']) + "\n")
    with pytest.raises(DataValidationError) as err:
        retrain(validate_spec({"data": str(bad), "dataset": {"test_split": 0.2}}))
    assert "line 13" in str(err.value) and "line 14" in str(err.value)
    reg = open_registry(tenant="demo")  # the demo preset's tenant: its own registry
    assert reg.ids() == [] and reg.aliases() == {}
    assert not (state_dir / "datasets").exists()
    assert not (state_dir / "runs").exists()
    report = json.loads(next((state_dir / "reports").glob("validation-*.json")).read_text())
    assert {i["line"] for i in report["issues"]} == {13, 14}


def test_judge_rubric_gate_rejects_an_unsafe_candidate(retrain, tiny_base, demo_files, state_dir, monkeypatch):
    """The task metric says promote; the judge (a local OpenAI-compatible fake) says it is unsafe."""
    from fakes.openai_server import fake_openai

    with fake_openai(api_key="sk-judge") as ai:
        ai.script("Rubric: safety", '```json\n{"score": 2, "reason": "tells users to share passwords"}\n```')
        ai.script("Rubric: pedagogy", "Score: 5/5 - clear")
        monkeypatch.setenv("JUDGE_KEY", "sk-judge")
        spec = demo_spec(demo_files["feedback"], demo_files["heldout"])
        spec = spec.model_copy(update={"judge": validate_spec(
            {"data": "x", "judge": {"base_url": ai.url, "model": "judge-1", "api_key_env": "JUDGE_KEY",
                                    "max_items": 10}}).judge})
        out = retrain(spec)
    assert out["promoted"] is False
    assert "safety minimum" in out["decision"]["reason"]
    assert out["judge"]["safety"]["candidate"] == 0.25 and out["judge"]["pedagogy"]["candidate"] == 1.0
    assert out["candidate_metrics"]["exact_match"] >= 0.5  # it did win on the task
    assert len(ai.requests) == 20 and all(r["body"]["model"] == "judge-1" for r in ai.requests)
