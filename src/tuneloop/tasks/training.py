"""Adapter training, on this worker or on a remote trainer (an AutoTrain-style service)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.runtime import observability as metrics
from tuneloop.data import PreparedDataset
from tuneloop.errors import UserError
from tuneloop.runtime.faults import crash_point
from tuneloop.runtime.fsutil import locked
from tuneloop.settings import get_settings
from tuneloop.specs import RetrainSpec
from tuneloop.training import TrainResult, train_lora
from tuneloop.training.checkpoint import checkpoint_rows
from tuneloop.training.jobs import CHECKPOINTS_ARTIFACT
from tuneloop.training.trainers import make_trainer


def run_id(spec: RetrainSpec, base_path: str, dataset_version: str) -> str:
    """Same data, base and training spec → same run folder, so a retried flow resumes its checkpoints
    (or, remotely, follows the job its first attempt started)."""
    training = spec.training.model_dump(mode="json", exclude={"packing", "group_by_length"})
    if not spec.training.packing and spec.training.group_by_length:
        training["group_by_length"] = True  # the only layout that changes which examples share a step
    # (packed and padded random batches are the same batches with the same loss, as before these options:
    # a run checkpointed by an older version keeps its folder and resumes)
    parts = [training, base_path, dataset_version]
    if spec.trainer.kind != "local":
        parts.append([spec.trainer.kind, spec.trainer.base_url])
    key = json.dumps(parts, sort_keys=True)
    return "run-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def run_dir_lock(run_dir: Path, logger):
    """One training process per run folder: a second attempt of the same run (rescheduled while the first
    was in fact alive; tasks.start_attempt stops the older one) waits here instead of writing the same
    checkpoints."""
    return locked(run_dir, ".train.lock",
                  on_wait=lambda: logger.warning(f"another process is training in {run_dir}; waiting for it to stop"))


ARTIFACT_EVERY_S = 5.0  # the training waits for each artifact request: at most one of each kind per 5 s
# (a progress update every 5% and a table every checkpoint were 30+ requests, 3% of a demo retrain)


def _publish_checkpoints(rows: list[dict], run_name: str) -> None:
    if rows:
        create_table_artifact(rows, key=CHECKPOINTS_ARTIFACT, description=f"checkpoints of {run_name}, newest last")


@task(name="train-adapter", **TASK_DEFAULTS)
def train_adapter(spec: RetrainSpec, base_path: str, dataset: PreparedDataset, should_stop=None) -> TrainResult:
    """Train or resume; `should_stop` (a RunGuard) may end the run early with a reason, checkpoint kept."""
    run_dir = get_settings().runs_dir / run_id(spec, base_path, dataset.version)
    logger = get_run_logger()
    remote = spec.trainer.kind != "local"
    if not remote:
        logger.info(f"TensorBoard logs: tensorboard --logdir {run_dir / 'tb'}")
    metrics.record_training_started(spec.tenant)
    progress_id = create_progress_artifact(0.0, description=f"training {run_dir.name}")
    shown = [0.0]
    published: list[list[dict]] = [[]]
    sent = [float("-inf"), float("-inf")]  # when the progress and the checkpoint table were last sent

    def watch(step: int, total: int, elapsed: float) -> str | None:
        """Move the Prefect progress artifact (by 5% or more) and publish new checkpoints, each at most every
        ARTIFACT_EVERY_S (the final ones are sent after training), then ask the guard."""
        now = time.monotonic()
        done = 100.0 * step / max(total, 1)
        if done - shown[0] >= 5 and now - sent[0] >= ARTIFACT_EVERY_S:
            update_progress_artifact(progress_id, done)
            shown[0], sent[0] = done, now
        if not remote:
            rows = checkpoint_rows(run_dir)
            if rows != published[0] and now - sent[1] >= ARTIFACT_EVERY_S:
                _publish_checkpoints(rows, run_dir.name)
                published[0], sent[1] = rows, now
            if rows and 2 * step >= total:
                crash_point("mid-training")  # past half way, with a checkpoint to resume from
        return should_stop(step, total, elapsed) if should_stop else None

    try:
        if remote:
            t = spec.trainer
            trainer = make_trainer(t.kind, base_url=t.base_url, token_env=t.token_env,
                                   poll_interval=t.poll_interval, cancel_timeout_s=t.cancel_timeout_s)
            logger.info(f"training on {t.kind} at {t.base_url}")
            result = trainer.train(spec.training, spec.base_model, dataset.train, dataset.validation, run_dir,
                                   log=logger.info, should_stop=watch)
            if result.adapter_dir is None and not result.stopped_reason:
                raise UserError(t.base_url, f"the {t.kind} service kept the trained model "
                                f"({result.remote_model}) and sent no adapter back; retrain evaluates, registers "
                                "and serves adapters it can load", "configure the service to return the adapter "
                                "(GET /train/{id}/adapter), or train locally (trainer.kind: local)")
        else:
            with run_dir_lock(run_dir, logger):
                result = train_lora(spec.training, base_path, dataset.train, dataset.validation, run_dir,
                                    resume=True, log=logger.info, should_stop=watch)
    except Exception:
        metrics.record_training_finished(spec.tenant, "failed", 0.0)
        raise
    metrics.record_training_finished(spec.tenant, "cancelled" if result.stopped_reason else "succeeded",
                                     result.seconds)
    if not result.stopped_reason:
        update_progress_artifact(progress_id, 100.0)
    if not remote:
        rows = checkpoint_rows(run_dir)
    else:  # the service's checkpoints, or the adapter it sent back
        rows = [{"step": c.get("step"), "train_loss": (c.get("metrics") or {}).get("train_loss"),
                 "best_val_loss": None, "path": c.get("path") or c.get("model")} for c in result.checkpoints]
        if not rows and result.adapter_dir is not None:
            rows = [{"step": result.steps, "train_loss": result.final_loss, "best_val_loss": result.best_val_loss,
                     "path": str(result.adapter_dir)}]
    if rows != published[0]:
        _publish_checkpoints(rows, run_dir.name)
    metrics.record_loss(run_dir.name, result.final_loss, result.tokens_per_s)
    return result
