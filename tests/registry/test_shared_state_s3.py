"""The shared state on S3 (a moto server): the same contract as a shared folder (tests/unit/test_shared_state.py),
through boto3 and real HTTP."""

from __future__ import annotations

import json

from tuneloop.feedback.items import FeedbackItem
from tuneloop.feedback.store import FeedbackStore
from tuneloop.runtime.shared import shared_state
from tuneloop.settings import Settings
from tuneloop.training.checkpoint import fetch_checkpoint, share_checkpoints


def machine(tmp_path, name: str, bucket: str):
    return shared_state(Settings(state_dir=tmp_path / name, state_store=f"s3://{bucket}/team/state"))


def test_folders_checkpoints_and_feedback_cross_machines_through_a_bucket(tmp_path, s3_bucket):
    import boto3

    a, b = machine(tmp_path, "a", s3_bucket), machine(tmp_path, "b", s3_bucket)
    folder = tmp_path / "a" / "datasets" / "v1"
    folder.mkdir(parents=True)
    (folder / "eval.jsonl").write_text("row\n")
    (folder / "datasheet.json").write_text("{}")
    assert a.push(folder, "datasheet.json") == 2
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(keys) == ["team/state/datasets/v1/datasheet.json", "team/state/datasets/v1/eval.jsonl"]
    assert b.pull(tmp_path / "b" / "datasets" / "v1", "datasheet.json")
    assert (tmp_path / "b" / "datasets" / "v1" / "eval.jsonl").read_text() == "row\n"

    run = tmp_path / "a" / "runs" / "run-1"
    ckpt = run / "checkpoints" / "step-0000004"
    (ckpt / "adapter").mkdir(parents=True)
    (ckpt / "adapter" / "adapter_model.safetensors").write_bytes(b"w")
    (ckpt / "state.json").write_text(json.dumps({"global_step": 4, "best_step": 0}))
    share_checkpoints(a, run, set())
    assert fetch_checkpoint(b, tmp_path / "b" / "runs" / "run-1") == "step-0000004"

    item = FeedbackItem(id="api:1", source="api", messages=({"role": "user", "content": "q"},), response="r",
                        timestamp="2026-12-01T00:00:00Z", score=0.0, tenant="acme")
    assert FeedbackStore(tmp_path / "a" / "feedback", a).add([item])
    assert [i.id for i in FeedbackStore(tmp_path / "b" / "feedback", b).items()] == ["api:1"]
