"""One interface over local and remote training: `Trainer.train(...) -> JobResult`.

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

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from tuneloop.data.validate import Row
from tuneloop.errors import TransientError, UserError
from tuneloop.specs import TrainingSpec
from tuneloop.training.jobs import Job, JobEvent
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


def chat_record(row: Row) -> dict:
    """A row as one line of OpenAI's chat fine-tuning JSONL."""
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in row.messages]}


def chat_jsonl(rows: list[Row]) -> bytes:
    return "".join(json.dumps(chat_record(r), ensure_ascii=False) + "\n" for r in rows).encode()


def fingerprint(request: object) -> str:
    """What identifies a job request, so a retried task can find the job its first attempt started."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def earlier_job(run_dir: Path, base_url: str, print_: str) -> str | None:
    """The id of a job an earlier attempt started in run_dir for the same request on the same service,
    unless it failed or was cancelled (then a new job is the way on)."""
    try:
        record = json.loads((Path(run_dir) / "job.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    job = record.get("job") or {}
    same = record.get("fingerprint") == print_ and record.get("base_url") == base_url
    return job.get("id") if same and job.get("status") not in ("failed", "cancelled") else None


# -- following a remote job ----------------------------------------------------------------------

@dataclass
class Followed:
    """What watching a job saw: its final state, why tuneloop stopped it, and its metrics."""

    job: Job
    stopped_reason: str | None = None
    step: int = 0
    total: int = 0
    loss: float | None = None
    best_val: float | None = None
    best_step: int = 0
    history: list[dict] = field(default_factory=list)
    running_s: float = 0.0
    seconds: float = 0.0

    def see(self, e: JobEvent) -> None:
        d = e.data or {}
        if e.type != "metrics" and "step" not in d:
            return
        self.step = int(d.get("step", self.step))
        self.total = int(d.get("total_steps", self.total) or self.total)
        entry = {"step": self.step}
        if d.get("train_loss") is not None:
            self.loss = entry["loss"] = float(d["train_loss"])
        val = d.get("full_valid_loss", d.get("valid_loss"))
        if val is not None:
            entry["val_loss"] = float(val)
            if self.best_val is None or val < self.best_val:
                self.best_val, self.best_step = float(val), self.step
        self.history.append(entry)


def follow(first: Job, poll: Callable[[], tuple[Job, list[JobEvent]]], cancel: Callable[[], None], *,
           log: Log, should_stop: ShouldStop | None, progress: Progress | None, poll_interval: float,
           cancel_timeout_s: float, where: str) -> Followed:
    """Poll until the job is terminal, reporting events and cancelling when `should_stop` says so."""
    seen = Followed(job=first)
    t0 = time.monotonic()
    running_since: float | None = None
    cancel_by: float | None = None

    def emit(e: JobEvent) -> None:
        seen.see(e)
        if progress is not None:
            progress(e)
        if e.type != "metrics" or seen.step % max(1, seen.total // 10) == 0 or seen.step == seen.total:
            log(f"{where} {first.id}: {e.message}")  # metrics: about ten lines a job, like local training

    emit(JobEvent(time.time(), "info", f"status {first.status}", {"status": first.status, "previous": None}, "status"))
    while True:
        current, events = poll()
        before = seen.job.status
        if seen.job.update(current):
            note = f" ({seen.job.note})" if seen.job.note else ""
            emit(JobEvent(time.time(), "info", f"status {before} -> {seen.job.status}{note}",
                          {"status": seen.job.status, "previous": before}, "status"))
        for e in events:
            emit(e)
        if seen.job.status == "running" and running_since is None:
            running_since = time.monotonic()
        if seen.job.terminal:
            break
        if cancel_by is None and should_stop is not None:
            elapsed = time.monotonic() - running_since if running_since is not None else 0.0
            reason = should_stop(seen.step, seen.total, elapsed) or None
            if reason:
                seen.stopped_reason = reason
                log(f"{where} {first.id}: cancelling at step {seen.step}/{seen.total}: {reason}")
                cancel()
                cancel_by = time.monotonic() + cancel_timeout_s
        elif cancel_by is not None and time.monotonic() > cancel_by:
            raise TransientError(f"{where} job {first.id} was cancelled ({seen.stopped_reason}) but still reads "
                                 f"{seen.job.status} after {cancel_timeout_s:g} s; check it on the service")
        time.sleep(poll_interval)
    now = time.monotonic()
    seen.seconds, seen.running_s = now - t0, (now - running_since) if running_since is not None else 0.0
    if seen.job.status == "cancelled" and seen.stopped_reason is None:
        seen.stopped_reason = f"the job was cancelled on {where}, not by tuneloop"
    return seen


def remote_result(seen: Followed, trainer: str, base_model: str, run_dir: Path, adapter_dir: Path | None,
                  checkpoints: list[dict]) -> JobResult:
    job = seen.job
    tokens = int(job.trained_tokens or 0)
    return JobResult(
        adapter_dir=adapter_dir, run_dir=run_dir, steps=seen.step, total_steps=seen.total, final_loss=seen.loss,
        best_val_loss=seen.best_val, best_step=seen.best_step, train_tokens=tokens,
        tokens_per_s=tokens / seen.running_s if seen.running_s > 0 else 0.0, seconds=seen.seconds,
        stopped_early=False, resumed_from_step=None, trainable_params=0, history=seen.history,
        stopped_reason=seen.stopped_reason, trainer=trainer, job_id=job.id, status=job.status,
        base_model=base_model, remote_model=job.fine_tuned_model, checkpoints=checkpoints)


# -- local ---------------------------------------------------------------------------------------

@dataclass
class LocalTrainer:
    """`train_lora` behind the shared interface. `base_model`: a local path or hub id, or the built-in
    tiny base (built under `models_dir`, default the settings' models folder)."""

    resume: bool = True
    models_dir: Path | None = None

    def train(self, spec: TrainingSpec, base_model: str, train_rows: list[Row], val_rows: list[Row],
              run_dir: Path, log: Log = print, should_stop: ShouldStop | None = None,
              progress: Progress | None = None) -> JobResult:
        from tuneloop.basemodel import resolve_base_model
        from tuneloop.settings import get_settings
        from tuneloop.training.loop import train_lora

        run_dir = Path(run_dir)
        emit = progress or (lambda e: None)
        job = Job(id=run_dir.name, status="running", model=base_model)
        emit(JobEvent(time.time(), "info", "status running", {"status": "running", "previous": None}, "status"))

        def log_both(line: str) -> None:
            emit(JobEvent(time.time(), "info", line))
            log(line)

        reported = [0]

        def stop(step: int, total: int, elapsed: float) -> str | None:  # train_lora asks after each step but the last
            reported[0] = step
            emit(JobEvent(time.time(), "info", f"step {step}/{total}", {"step": step, "total_steps": total}, "metrics"))
            return should_stop(step, total, elapsed) if should_stop else None

        base_path = resolve_base_model(base_model, self.models_dir or get_settings().models_dir, log=log_both)
        try:
            r = train_lora(spec, base_path, train_rows, val_rows, run_dir, resume=self.resume, log=log_both,
                           should_stop=stop)
        except Exception as e:
            job.advance("failed")
            emit(JobEvent(time.time(), "error", f"status running -> failed: {type(e).__name__}: {e}",
                          {"status": "failed", "previous": "running"}, "status"))
            raise
        if r.steps > reported[0]:
            emit(JobEvent(time.time(), "info", f"step {r.steps}/{r.total_steps} loss {r.final_loss:.4f}",
                          {"step": r.steps, "total_steps": r.total_steps, "train_loss": r.final_loss}, "metrics"))
        job.advance("cancelled" if r.stopped_reason else "succeeded")
        emit(JobEvent(time.time(), "info", f"status running -> {job.status}",
                      {"status": job.status, "previous": "running"}, "status"))
        base = {f.name: getattr(r, f.name) for f in fields(TrainResult)}
        return JobResult(**base, trainer="local", job_id=job.id, status=job.status, base_model=base_model)


# -- choosing one --------------------------------------------------------------------------------

def _secret(value: str | None, env: str | None, what: str, required: bool) -> str | None:
    if value:
        return value
    if env and os.environ.get(env):
        return os.environ[env]
    if required:
        raise UserError(env or what, f"is not set: the {what} is needed to start a remote job",
                        f"export {env}=... (or pass {what}=...)")
    return None


def make_trainer(kind: str, **options) -> Trainer:
    """A trainer by kind: "local" | "openai" | "autotrain"; `options` go to its constructor.

    Secrets never travel in options from a spec: "openai" reads `api_key` from the environment
    variable `api_key_env` (default OPENAI_API_KEY) when not given, "autotrain" reads `token` from
    `token_env` (default HF_TOKEN) and works without one.
    """
    if kind == "local":
        return LocalTrainer(**options)
    if kind == "openai":
        from tuneloop.training.openai_ft import OpenAIFineTuningTrainer

        env = options.pop("api_key_env", "OPENAI_API_KEY")
        options["api_key"] = _secret(options.get("api_key"), env, "api_key", required=True)
        return OpenAIFineTuningTrainer(**options)
    if kind == "autotrain":
        from tuneloop.training.autotrain import AutoTrainTrainer

        env = options.pop("token_env", "HF_TOKEN")
        options["token"] = _secret(options.get("token"), env, "token", required=False)
        if "base_url" not in options:
            raise UserError("autotrain", "needs base_url", "pass base_url=, e.g. http://autotrain.internal:7860")
        return AutoTrainTrainer(**options)
    raise UserError(repr(kind), "is not a trainer kind", f"use one of {', '.join(KINDS)}")
