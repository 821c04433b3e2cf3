"""What the remote trainers share: the rows they upload, how a job is recognised on a retry, following a
job to its end, and its result."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuneloop.data.validate import Row
from tuneloop.errors import TransientError
from tuneloop.training.interface import JobResult, Log, Progress, ShouldStop
from tuneloop.training.jobs import Job, JobEvent


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
