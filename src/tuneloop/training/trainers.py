"""The trainers behind `tuneloop.training.interface.Trainer`: `LocalTrainer` here, the remote ones in
`tuneloop.training.remote`, and `make_trainer(kind, **options)` to pick one (see docs/remote-trainers.md)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

from tuneloop.data.validate import Row
from tuneloop.errors import UserError
from tuneloop.specs import TrainingSpec
from tuneloop.training.interface import KINDS, JobResult, Log, Progress, ShouldStop, Trainer
from tuneloop.training.jobs import Job, JobEvent
from tuneloop.training.loop import TrainResult

__all__ = ["KINDS", "JobResult", "LocalTrainer", "Trainer", "make_trainer"]


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
        from tuneloop.models.base import resolve_base_model
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
        from tuneloop.training.remote.openai import OpenAIFineTuningTrainer

        env = options.pop("api_key_env", "OPENAI_API_KEY")
        options["api_key"] = _secret(options.get("api_key"), env, "api_key", required=True)
        return OpenAIFineTuningTrainer(**options)
    if kind == "autotrain":
        from tuneloop.training.remote.autotrain import AutoTrainTrainer

        env = options.pop("token_env", "HF_TOKEN")
        options["token"] = _secret(options.get("token"), env, "token", required=False)
        if "base_url" not in options:
            raise UserError("autotrain", "needs base_url", "pass base_url=, e.g. http://autotrain.internal:7860")
        return AutoTrainTrainer(**options)
    raise UserError(repr(kind), "is not a trainer kind", f"use one of {', '.join(KINDS)}")
