"""Training jobs in OpenAI's fine-tuning vocabulary, for every trainer and for Prefect runs.

A job is `validating_files`, `queued`, `running`, `succeeded`, `failed` or `cancelled`, exactly
like an OpenAI `fine_tuning.job`. The local trainer, the remote trainers and the CLI (which shows
Prefect flow runs) all speak it, so an operator reads one status word everywhere.

Transitions follow the job's life: validating_files -> queued -> running -> succeeded; any live
job may fail or be cancelled; running -> queued when a job is paused or preempted and waits again.
A poller can miss a short state, so forward skips (queued -> succeeded) are legal too; going back
to validating_files, or leaving a terminal state, is not: it raises `IllegalTransition`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneloop.errors import TuneloopError

STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "running"}) | TERMINAL,
    "queued": frozenset({"running"}) | TERMINAL,
    "running": frozenset({"queued"}) | TERMINAL,
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
# OpenAI's newer pause/resume states, shown in the six-word vocabulary with a note
_OPENAI_EXTRA = {"pausing": ("queued", "pausing at the user's request"),
                 "paused": ("queued", "paused; resume it on the service to continue")}


class IllegalTransition(TuneloopError, ValueError):
    """A job status change its life cycle does not allow (a service or a bug, never the operator)."""


class JobFailed(TuneloopError):
    """A training job ended `failed`; the message is the service's own."""

    def __init__(self, job: "Job", where: str):
        self.job = job
        err = job.error or JobError("unknown", "the service gave no reason")
        super().__init__(f"training job {job.id} on {where} failed ({err.code}): {err.message}")


def check_transition(old: str, new: str) -> None:
    """Raise `IllegalTransition` unless `old -> new` is allowed (staying put always is)."""
    for s in (old, new):
        if s not in TRANSITIONS:
            raise IllegalTransition(f"unknown job status {s!r}; known: {', '.join(STATUSES)}")
    if old != new and new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "nothing (it is terminal)"
        raise IllegalTransition(f"a job cannot go from {old} to {new}; from {old} it may go to {allowed}")


def normalize_status(status: str) -> tuple[str, str | None]:
    """A service's status in the six-word vocabulary, with a note when it had to be translated."""
    if status in TRANSITIONS:
        return status, None
    if status in _OPENAI_EXTRA:
        return _OPENAI_EXTRA[status]
    raise IllegalTransition(f"the service reported job status {status!r}; known: {', '.join(STATUSES)}")


@dataclass(frozen=True)
class JobError:
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class JobEvent:
    """One line of a job's story. `type`: message | metrics (as OpenAI) | status (tuneloop's own:
    the poller saw the status change; `data` = {"status", "previous"})."""

    created_at: float
    level: str  # info | warn | error
    message: str
    data: dict | None = None
    type: str = "message"
    id: str = ""

    @classmethod
    def from_openai(cls, d: dict) -> "JobEvent":
        return cls(created_at=d.get("created_at") or 0, level=d.get("level") or "info", message=d.get("message", ""),
                   data=d.get("data") or None, type=d.get("type") or "message", id=d.get("id", ""))


@dataclass(frozen=True)
class JobCheckpoint:
    """A usable snapshot: a service model id (`model`) or a local adapter folder (`path`)."""

    step: int
    metrics: dict = field(default_factory=dict)
    model: str | None = None
    path: Path | None = None
    created_at: float | None = None
    id: str = ""

    @classmethod
    def from_openai(cls, d: dict) -> "JobCheckpoint":
        return cls(step=int(d["step_number"]), metrics=dict(d.get("metrics") or {}),
                   model=d.get("fine_tuned_model_checkpoint"), created_at=d.get("created_at"), id=d.get("id", ""))

    def to_json(self) -> dict:
        return asdict(self) | {"path": str(self.path) if self.path else None}


@dataclass
class Job:
    id: str
    status: str
    model: str  # the base model
    fine_tuned_model: str | None = None  # remote result: the service's model id
    adapter_dir: Path | None = None  # local result: the adapter folder
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: JobError | None = None
    trained_tokens: int | None = None
    hyperparameters: dict = field(default_factory=dict)
    note: str | None = None  # why the status reads as it does (a paused job shows as queued, ...)

    def __post_init__(self):
        self.status, note = normalize_status(self.status)
        self.note = self.note or note

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def advance(self, status: str, note: str | None = None) -> bool:
        """Move to `status` (a service word is normalized first); True if it changed."""
        status, translated = normalize_status(status)
        check_transition(self.status, status)
        changed = status != self.status
        self.status, self.note = status, note or translated
        if self.terminal and self.finished_at is None:
            self.finished_at = time.time()
        return changed

    def update(self, seen: "Job") -> bool:
        """Take a fresh view of the same job (from a poll): status checked, other fields copied."""
        changed = self.advance(seen.status, seen.note)
        for name in ("fine_tuned_model", "adapter_dir", "finished_at", "error", "trained_tokens"):
            if getattr(seen, name) is not None:
                setattr(self, name, getattr(seen, name))
        self.hyperparameters = seen.hyperparameters or self.hyperparameters
        return changed

    @classmethod
    def from_openai(cls, d: dict) -> "Job":
        err = d.get("error") or None
        if err and not (err.get("code") or err.get("message")):
            err = None  # OpenAI sends {} or {"code": null, ...} for jobs that have not failed
        return cls(id=d["id"], status=d["status"], model=d.get("model", ""),
                   fine_tuned_model=d.get("fine_tuned_model"), created_at=d.get("created_at") or time.time(),
                   finished_at=d.get("finished_at"), trained_tokens=d.get("trained_tokens"),
                   error=(JobError(err.get("code") or "error", err.get("message") or "", err.get("param"))
                          if err else None),
                   hyperparameters=dict(d.get("hyperparameters") or {}))

    def to_json(self) -> dict:
        d = asdict(self)
        d["adapter_dir"] = str(self.adapter_dir) if self.adapter_dir else None
        return d


# -- Prefect flow-run states in the same vocabulary ----------------------------------------------

CHECKPOINTS_ARTIFACT = "training-checkpoints"  # the table artifact the train-adapter task keeps up to date
VALIDATION_TASKS = frozenset({"prepare-base-model", "validate-dataset", "estimate-job"})

_PREFECT_TYPES = {"SCHEDULED": "queued", "PENDING": "queued", "RUNNING": "running", "COMPLETED": "succeeded",
                  "FAILED": "failed", "CRASHED": "failed", "CANCELLED": "cancelled", "CANCELLING": "cancelled",
                  "PAUSED": "queued"}
_PREFECT_NOTES = {  # by state name (the type's default name needs no note)
    "late": "late: past its scheduled start and no worker has picked it up; is a worker polling its work pool?",
    "awaitingretry": "failed an attempt and waits to retry",
    "awaitingconcurrencyslot": "waiting for a concurrency slot",
    "submitting": "being submitted to its infrastructure",
    "infrastructurepending": "waiting for its infrastructure to start",
    "retrying": "running again after a failed attempt",
    "cached": "completed from a cached result",
    "timedout": "failed: it ran past its timeout",
    "crashed": "failed: its infrastructure crashed (out of memory, a killed worker, ...), not its code",
    "cancelling": "cancelling: asked to stop, not stopped yet",
    "paused": "paused: waiting to be resumed (an approval or input), shown as queued",
    "suspended": "suspended: waiting for input and holding no infrastructure, shown as queued",
}


def _prefect_type(state_type: str) -> str:
    key = str(state_type).rsplit(".", 1)[-1].upper()  # "RUNNING", "running" or "StateType.RUNNING"
    if key not in _PREFECT_TYPES:
        raise ValueError(f"unknown Prefect state type {state_type!r}; known: {', '.join(_PREFECT_TYPES)}")
    return key


def status_from_prefect(state_type: str, state_name: str | None = None) -> str:
    """The job status a Prefect flow-run state reads as (its name only refines the note)."""
    return _PREFECT_TYPES[_prefect_type(state_type)]


def note_from_prefect(state_type: str, state_name: str | None = None) -> str | None:
    """What the status word leaves out (a Late run, a Crashed one, a Paused one), or None."""
    key = _prefect_type(state_type)
    name = (state_name or "").replace(" ", "").lower()
    return _PREFECT_NOTES.get(name) or _PREFECT_NOTES.get(key.lower())


def phase_from_tasks(status: str, started_tasks: list[str]) -> tuple[str, str | None]:
    """Refine a running flow run's status from the task runs it has started (names, as Prefect shows them:
    "validate-dataset-0a1b", ...): while only the data checks and the estimate have run, the job is
    `validating_files`, as OpenAI's is while it checks the uploaded files."""
    if status != "running" or not started_tasks:
        return status, None
    def checking(name: str) -> bool:
        return any(name == t or name.startswith(t + "-") for t in VALIDATION_TASKS)

    if all(checking(n) for n in started_tasks):
        return "validating_files", "checking the data and estimating the job; training has not started"
    return status, None
