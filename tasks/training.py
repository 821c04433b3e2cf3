"""Adapter training."""

from __future__ import annotations

import hashlib
import json

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks import TASK_DEFAULTS
from tuneloop import observability as metrics
from tuneloop.data import PreparedDataset
from tuneloop.settings import get_settings
from tuneloop.specs import RetrainSpec
from tuneloop.training import TrainResult, train_lora


def run_id(spec: RetrainSpec, base_path: str, dataset_version: str) -> str:
    """Same data, base and training spec → same run folder, so a retried flow resumes its checkpoints."""
    key = json.dumps([spec.training.model_dump(mode="json"), base_path, dataset_version], sort_keys=True)
    return "run-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@task(name="train-adapter", **TASK_DEFAULTS)
def train_adapter(spec: RetrainSpec, base_path: str, dataset: PreparedDataset, should_stop=None) -> TrainResult:
    """Train or resume; `should_stop` (a RunGuard) may end the run early with a reason, checkpoint kept."""
    run_dir = get_settings().runs_dir / run_id(spec, base_path, dataset.version)
    logger = get_run_logger()
    logger.info(f"TensorBoard logs: tensorboard --logdir {run_dir / 'tb'}")
    metrics.record_training_started(spec.tenant)
    progress_id = create_progress_artifact(0.0, description=f"training {run_dir.name}")
    shown = [0.0]

    def watch(step: int, total: int, elapsed: float) -> str | None:
        """Move the Prefect progress artifact (every 5%), then ask the guard whether to go on."""
        done = 100.0 * step / max(total, 1)
        if done - shown[0] >= 5 or step == total:
            update_progress_artifact(progress_id, done)
            shown[0] = done
        return should_stop(step, total, elapsed) if should_stop else None

    try:
        result = train_lora(spec.training, base_path, dataset.train, dataset.validation, run_dir,
                            resume=True, log=logger.info, should_stop=watch)
    except Exception:
        metrics.record_training_finished(spec.tenant, "failed", 0.0)
        raise
    metrics.record_training_finished(spec.tenant, "cancelled" if result.stopped_reason else "succeeded",
                                     result.seconds)
    if not result.stopped_reason:
        update_progress_artifact(progress_id, 100.0)
    metrics.record_loss(run_dir.name, result.final_loss, result.tokens_per_s)
    return result
