"""Adapter training, on this worker or on a remote trainer (an AutoTrain-style service)."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from tuneloop.data import PreparedDataset
from tuneloop.specs import RetrainSpec
from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.training import TrainResult
from tuneloop.training.jobs import CHECKPOINTS_ARTIFACT
from tuneloop.training.runs import final_checkpoints, run_folder, train_run

ARTIFACT_EVERY_S = 5.0  # the training waits for each artifact request: at most one of each kind per 5 s
# (a progress update every 5% and a table every checkpoint were 30+ requests, 3% of a demo retrain)


class _Artifacts:
    """The run's Prefect progress bar (moved by 5% or more) and checkpoint table, each sent at most every
    ARTIFACT_EVERY_S while training; the final ones after it."""

    def __init__(self, run_name: str):
        self.run_name, self.shown, self.published = run_name, 0.0, []
        self.sent = [float("-inf"), float("-inf")]  # when the progress and the checkpoint table were last sent
        self.progress_id = create_progress_artifact(0.0, description=f"training {run_name}")

    def publish(self, rows: list[dict]) -> None:
        if rows:
            create_table_artifact(rows, key=CHECKPOINTS_ARTIFACT,
                                  description=f"checkpoints of {self.run_name}, newest last")
        self.published = rows

    def on_step(self, step: int, total: int, rows: list[dict] | None) -> None:
        now = time.monotonic()
        done = 100.0 * step / max(total, 1)
        if done - self.shown >= 5 and now - self.sent[0] >= ARTIFACT_EVERY_S:
            update_progress_artifact(self.progress_id, done)
            self.shown, self.sent[0] = done, now
        if rows is not None and rows != self.published and now - self.sent[1] >= ARTIFACT_EVERY_S:
            self.publish(rows)
            self.sent[1] = now

    def finish(self, result: TrainResult, rows: list[dict]) -> None:
        if not result.stopped_reason:
            update_progress_artifact(self.progress_id, 100.0)
        if rows != self.published:
            self.publish(rows)


@task(name="train-adapter", **TASK_DEFAULTS)
def train_adapter(spec: RetrainSpec, base_path: str, dataset: PreparedDataset, should_stop=None) -> TrainResult:
    """Train or resume; `should_stop` (a RunGuard) may end the run early with a reason, checkpoint kept."""
    run_dir = run_folder(spec, base_path, dataset.version)
    artifacts = _Artifacts(run_dir.name)
    result = train_run(spec, base_path, dataset, run_dir, get_run_logger(), artifacts.on_step, should_stop)
    artifacts.finish(result, final_checkpoints(spec, result, run_dir))
    return result
