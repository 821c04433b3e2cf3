"""The trainer interface: `Trainer.train(...) -> JobResult`, and the callbacks every trainer takes.

Three trainers share it: `LocalTrainer` (this machine, `train_lora`), `OpenAIFineTuningTrainer`
(OpenAI's fine-tuning API or any service that copies it) and `AutoTrainTrainer` (an AutoTrain-style
REST service that sends the adapter back). `make_trainer(kind, **options)` picks one; see
docs/remote-trainers.md for the options of each.

Callbacks are the local trainer's, plus one:
- `log(line)`: human-readable progress;
- `should_stop(step, total_steps, elapsed_s) -> reason | None`: asked after each step locally and
  at each poll remotely (`elapsed_s` counts from when the job started running, so time spent in a
  queue is not billed against a guard); a reason cancels the job and lands in `stopped_reason`;
- `progress(event: JobEvent)`: every job event in order, including tuneloop's own ``status``
  events when the job's status changes.
"""


from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from tuneloop.data.validate import Row
from tuneloop.specs import TrainingSpec
from tuneloop.training.jobs import JobEvent
from tuneloop.training.loop import TrainResult

Log = Callable[[str], None]
ShouldStop = Callable[[int, int, float], "str | None"]
Progress = Callable[[JobEvent], None]
KINDS = ("local", "openai", "autotrain")


@dataclass
class JobResult(TrainResult):
    """`TrainResult` plus where the model is. `adapter_dir` is None when the service keeps the model
    and names it in `remote_model` instead. `trainable_params` is 0 when the service does not say."""

    trainer: str = "local"
    job_id: str | None = None
    status: str = "succeeded"  # succeeded | cancelled (a failed job raises JobFailed)
    base_model: str = ""
    remote_model: str | None = None
    checkpoints: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        d = super().to_json()
        d["adapter_dir"] = str(self.adapter_dir) if self.adapter_dir else None
        return d


@runtime_checkable
class Trainer(Protocol):
    def train(self, spec: TrainingSpec, base_model: str, train_rows: list[Row], val_rows: list[Row],
              run_dir: Path, log: Log = print, should_stop: ShouldStop | None = None,
              progress: Progress | None = None) -> JobResult: ...


