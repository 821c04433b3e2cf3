"""A real adapter through the S3 registry: trained on the tiny base, registered on a moto server, fetched
by the flows' task and loaded with PEFT to the same outputs as the folder it came from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tuneloop.models.base import load_model
from tuneloop.data import prepare_dataset
from tuneloop.errors import ChecksumError
from tuneloop.registry import open_registry
from tuneloop.specs import DataSpec, TrainingSpec
from tuneloop.training import train_lora

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]  # not `from conftest import ROOT`: tests/serving has a conftest too


def logits(base: str, adapter) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(base), str(adapter)).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 20, 30, 40, 50]])).logits


def test_trained_adapter_roundtrips_through_s3(tiny_base, demo_files, s3_bucket, state_dir, tmp_path, monkeypatch):
    ds = prepare_dataset(demo_files["feedback"], DataSpec())
    trained = train_lora(TrainingSpec(max_steps=2, batch_size=8, gradient_accumulation=1, learning_rate=3e-2),
                         tiny_base, ds.train[:16], ds.validation[:4], tmp_path / "run", log=lambda m: None)
    monkeypatch.setenv("TUNELOOP_REGISTRY", f"s3://{s3_bucket}/models")
    reg = open_registry()
    v = reg.create_version(trained.adapter_dir, base_model="tuneloop/tiny-llama", dataset_version=ds.version,
                           parent_version=None, spec={}, metrics={})
    assert {f["path"] for f in v.manifest["files"]} >= {"adapter/adapter_model.safetensors",
                                                        "adapter/adapter_config.json"}

    sys.path.insert(0, str(ROOT))
    from tuneloop.tasks.registry import fetch_adapter

    fetched = fetch_adapter.fn(v.id)
    assert fetched.is_relative_to(state_dir.resolve()) and fetched != trained.adapter_dir
    assert torch.equal(logits(tiny_base, fetched), logits(tiny_base, trained.adapter_dir))

    import boto3  # an attacker swaps the weights in the bucket; a fresh machine (no cache) refuses them

    weights = (trained.adapter_dir / "adapter_model.safetensors").read_bytes()
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"models/versions/{v.id}/adapter/adapter_model.safetensors",
                                  Body=weights[:-8] + b"\0" * 8)
    monkeypatch.setenv("TUNELOOP_STATE_DIR", str(tmp_path / "another-machine"))
    with pytest.raises(ChecksumError, match="adapter/adapter_model.safetensors"):
        fetch_adapter.fn(v.id)
