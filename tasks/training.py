"""Adapter training."""

from __future__ import annotations

import hashlib
import json

from prefect import get_run_logger, task

from tasks import TASK_DEFAULTS
from tuneloop.data import PreparedDataset
from tuneloop.settings import get_settings
from tuneloop.specs import RetrainSpec
from tuneloop.training import TrainResult, train_lora


def run_id(spec: RetrainSpec, base_path: str, dataset_version: str) -> str:
    """Same data, base and training spec → same run folder, so a retried flow resumes its checkpoints."""
    key = json.dumps([spec.training.model_dump(mode="json"), base_path, dataset_version], sort_keys=True)
    return "run-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@task(name="train-adapter", **TASK_DEFAULTS)
def train_adapter(spec: RetrainSpec, base_path: str, dataset: PreparedDataset) -> TrainResult:
    run_dir = get_settings().runs_dir / run_id(spec, base_path, dataset.version)
    return train_lora(spec.training, base_path, dataset.train, dataset.validation, run_dir,
                      resume=True, log=get_run_logger().info)
