"""retrain picks its trainer from the spec (this worker, or an AutoTrain-style service that sends the adapter
back), and `tuneloop jobs get` shows a retrain run's checkpoints and its validation phase."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT
from tuneloop.cli.main import main
from tuneloop.registry import open_registry
from tuneloop.specs import RetrainSpec, SpecError, TrainerSpec, validate_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrain(prefect_harness):
    sys.path.insert(0, str(ROOT))
    from tuneloop.flows.retrain import retrain

    return retrain


def latest_retrain_run_id() -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
    return str(runs[0].id)


def jobs_get(run_id: str, capsys) -> dict:
    capsys.readouterr()
    assert main(["jobs", "get", run_id]) == 0
    return json.loads(capsys.readouterr().out)


def test_trainer_spec_refuses_what_retrain_cannot_use():
    with pytest.raises(SpecError, match="keeps the fine-tuned model"):
        validate_spec({"data": "x.jsonl", "trainer": {"kind": "openai"}})
    with pytest.raises(SpecError, match="needs base_url"):
        validate_spec({"data": "x.jsonl", "trainer": {"kind": "autotrain"}})
    assert RetrainSpec(data="x.jsonl").trainer == TrainerSpec(kind="local")


def test_retrain_on_an_autotrain_service_gates_and_registers_the_adapter_it_sends_back(
        retrain, tiny_base, demo_files, good_adapter, state_dir, monkeypatch, capsys):
    from fakes.autotrain_server import archive_folder, fake_autotrain

    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_test")
    with fake_autotrain(token="hf_secret_for_test", adapter=archive_folder(good_adapter), total_steps=3) as at:
        spec = validate_spec({"data": str(demo_files["feedback"]), "eval_data": str(demo_files["heldout"]), "tenant": "demo",
                              "trainer": {"kind": "autotrain", "base_url": at.url, "poll_interval": 0.01},
                              "training": {"epochs": 1, "max_steps": 3}})
        out = retrain(spec)
    (create,) = at.calls("POST /train")
    assert create["body"]["base_model"] == spec.base_model and create["body"]["data"]["train"]
    # the adapter came home and went through the same gate as a local one: it is the trained demo adapter
    assert out["promoted"] is True and out["version"] == "v1", out["decision"]["reason"]
    assert out["candidate_metrics"]["exact_match"] > out["incumbent_metrics"]["exact_match"]
    manifest = open_registry(tenant="demo").get("v1").manifest
    assert manifest["training"]["trainer"] == "autotrain" and manifest["training"]["job_id"].startswith("at-")
    assert "hf_secret_for_test" not in json.dumps(manifest)

    job = jobs_get(latest_retrain_run_id(), capsys)
    assert job["status"] == "succeeded"
    assert [c["step"] for c in job["checkpoints"]] == [3] and job["checkpoints"][0]["path"].endswith("adapter")


def test_jobs_get_lists_a_local_runs_checkpoints(retrain, tiny_base, demo_files, state_dir, capsys):
    spec = validate_spec({"data": str(demo_files["feedback"]), "eval_data": str(demo_files["heldout"]), "tenant": "demo",
                          "training": {"epochs": 1, "max_steps": 6, "save_every": 2, "keep_checkpoints": 2,
                                       "rank": 4, "alpha": 8, "batch_size": 4, "gradient_accumulation": 1},
                          "evaluation": {"max_items": 8, "max_new_tokens": 8}})
    retrain(spec)
    job = jobs_get(latest_retrain_run_id(), capsys)
    assert job["status"] == "succeeded"
    steps = [c["step"] for c in job["checkpoints"]]
    assert steps == [4, 6]  # keep_checkpoints=2 of saves at 2, 4, 6
    assert all(c["train_loss"] is not None for c in job["checkpoints"])
