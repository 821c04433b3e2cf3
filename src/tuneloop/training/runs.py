"""One retrain's training run: its folder (the same inputs find the same folder, so a retry resumes), one
process per folder, this machine or the spec's remote trainer, and the training metrics."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from tuneloop.errors import UserError
from tuneloop.runtime import observability as metrics
from tuneloop.runtime.faults import crash_point
from tuneloop.runtime.fsutil import atomic_write_text, locked
from tuneloop.runtime.shared import shared_state
from tuneloop.settings import get_settings
from tuneloop.specs import RetrainSpec
from tuneloop.training.checkpoint import checkpoint_rows, fetch_checkpoint, share_checkpoints
from tuneloop.training.interface import Log, ShouldStop
from tuneloop.training.loop import TrainResult, train_lora
from tuneloop.training.trainers import make_trainer

# progress(step, total_steps, checkpoint rows: None when a remote service holds them)
OnStep = Callable[[int, int, "list[dict] | None"], None]


def run_id(spec: RetrainSpec, base_path: str, dataset_version: str) -> str:
    """Same data, base and training spec → same run folder, so a retried flow resumes its checkpoints
    (or, remotely, follows the job its first attempt started)."""
    training = spec.training.model_dump(mode="json", exclude={"packing", "group_by_length"} | (
        {"init_adapter"} if spec.training.init_adapter is None else set()))  # (unset: the folder it always had)
    if not spec.training.packing and spec.training.group_by_length:
        training["group_by_length"] = True  # the only layout that changes which examples share a step
    # (packed and padded random batches are the same batches with the same loss, as before these options:
    # a run checkpointed by an older version keeps its folder and resumes)
    parts = [training, base_path, dataset_version]
    if spec.trainer.kind != "local":
        parts.append([spec.trainer.kind, spec.trainer.base_url])
    key = json.dumps(parts, sort_keys=True)
    return "run-" + hashlib.sha256(key.encode()).hexdigest()[:12]


PROGRESS_EVERY_S = 1.0
PROGRESS_FILE = "progress.json"  # {"step", "total", "elapsed_s", "at"}: what a job's estimated finish is made of


def write_progress(run_dir: Path, step: int, total: int, elapsed: float) -> None:
    atomic_write_text(run_dir / PROGRESS_FILE, json.dumps({"step": step, "total": total,
                                                           "elapsed_s": round(elapsed, 3), "at": time.time()}))


def read_progress(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def run_folder(spec: RetrainSpec, base_path: str, dataset_version: str) -> Path:
    """A service job's runs live under the job's name (the service reads their progress there)."""
    runs = get_settings().runs_dir
    return (runs / spec.job if spec.job else runs) / run_id(spec, base_path, dataset_version)


def run_dir_lock(run_dir: Path, logger):
    """One training process per run folder: a second attempt of the same run (rescheduled while the first
    was in fact alive; tasks.start_attempt stops the older one) waits here instead of writing the same
    checkpoints."""
    return locked(run_dir, ".train.lock",
                  on_wait=lambda: logger.warning(f"another process is training in {run_dir}; waiting for it to stop"))


def train_run(spec: RetrainSpec, base_path: str, dataset, run_dir: Path, logger, on_step: OnStep,
              should_stop: ShouldStop | None = None) -> TrainResult:
    """Train or resume `spec`'s adapter on `dataset` (a PreparedDataset) in `run_dir`, here or remotely.

    After each step (each poll remotely): `on_step(step, total, checkpoint rows)`, then the crash point
    "mid-training" once past half way with a checkpoint to resume from, then `should_stop`, whose reason
    ends the run early with its checkpoint kept."""
    remote = spec.trainer.kind != "local"
    shown = [0.0]
    sharing = None if remote else shared_state()  # checkpoints copied where another machine can resume them
    pushed: set[str] = set()

    def watch(step: int, total: int, elapsed: float) -> str | None:
        rows = None if remote else checkpoint_rows(run_dir)
        if sharing is not None:
            share_checkpoints(sharing, run_dir, pushed)
        on_step(step, total, rows)
        if time.monotonic() - shown[0] >= PROGRESS_EVERY_S or step >= total:
            write_progress(run_dir, step, total, elapsed)
            shown[0] = time.monotonic()
        if rows and 2 * step >= total:
            crash_point("mid-training")  # past half way, with a checkpoint to resume from
        return should_stop(step, total, elapsed) if should_stop else None

    log: Log = logger.info
    metrics.record_training_started(spec.tenant)
    try:
        if remote:
            t = spec.trainer
            trainer = make_trainer(t.kind, base_url=t.base_url, token_env=t.token_env,
                                   poll_interval=t.poll_interval, cancel_timeout_s=t.cancel_timeout_s)
            log(f"training on {t.kind} at {t.base_url}")
            result = trainer.train(spec.training, spec.base_model, dataset.train, dataset.validation, run_dir,
                                   log=log, should_stop=watch)
            if result.adapter_dir is None and not result.stopped_reason:
                raise UserError(t.base_url, f"the {t.kind} service kept the trained model "
                                f"({result.remote_model}) and sent no adapter back; retrain evaluates, registers "
                                "and serves adapters it can load", "configure the service to return the adapter "
                                "(GET /train/{id}/adapter), or train locally (trainer.kind: local)")
        else:
            log(f"TensorBoard logs: tensorboard --logdir {run_dir / 'tb'}")
            with run_dir_lock(run_dir, logger):
                if sharing is not None and (name := fetch_checkpoint(sharing, run_dir)):
                    log(f"{name} of this run fetched from the shared state ({sharing.url})")
                result = train_lora(spec.training, base_path, dataset.train, dataset.validation, run_dir,
                                    resume=True, log=log, should_stop=watch)
                if sharing is not None:
                    share_checkpoints(sharing, run_dir, pushed)  # the last one: a retry elsewhere skips training
    except Exception:
        metrics.record_training_finished(spec.tenant, "failed", 0.0)
        raise
    metrics.record_training_finished(spec.tenant, "cancelled" if result.stopped_reason else "succeeded",
                                     result.seconds)
    metrics.record_loss(run_dir.name, result.final_loss, result.tokens_per_s)
    return result


def final_checkpoints(spec: RetrainSpec, result: TrainResult, run_dir: Path) -> list[dict]:
    """The run's checkpoints as job checkpoints: this machine's, or the service's, or the adapter it sent."""
    if spec.trainer.kind == "local":
        return checkpoint_rows(run_dir)
    rows = [{"step": c.get("step"), "train_loss": (c.get("metrics") or {}).get("train_loss"),
             "best_val_loss": None, "path": c.get("path") or c.get("model")} for c in result.checkpoints]
    if not rows and result.adapter_dir is not None:
        rows = [{"step": result.steps, "train_loss": result.final_loss, "best_val_loss": result.best_val_loss,
                 "path": str(result.adapter_dir)}]
    return rows
