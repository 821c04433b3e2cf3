"""LoRA / QLoRA training with exact resume, locally or on a remote service (see trainers.py)."""

from tuneloop.training.jobs import (
    STATUSES, IllegalTransition, Job, JobCheckpoint, JobError, JobEvent, JobFailed, check_transition,
    note_from_prefect, status_from_prefect,
)
from tuneloop.training.loop import TrainResult, train_lora
from tuneloop.training.trainers import JobResult, LocalTrainer, Trainer, make_trainer

__all__ = [
    "STATUSES", "IllegalTransition", "Job", "JobCheckpoint", "JobError", "JobEvent", "JobFailed", "JobResult",
    "LocalTrainer", "TrainResult", "Trainer", "check_transition", "make_trainer", "note_from_prefect",
    "status_from_prefect", "train_lora",
]
