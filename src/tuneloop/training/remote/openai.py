"""Fine-tuning through OpenAI's API, or any service that copies it (Azure OpenAI's v1 API, ...).

The rows go up as chat JSONL (`POST /files`, purpose ``fine-tune``), a job is created
(`POST /fine_tuning/jobs`), then polled (`GET /fine_tuning/jobs/{id}`) with its new events
(`GET /fine_tuning/jobs/{id}/events`) reported through `progress` and `log`. The service keeps the
model: the result names it in `remote_model` (``ft:...``) and `adapter_dir` is None.

Events are listed newest first, and ``after`` pages towards older ones, as OpenAI does: each poll
reads pages until it meets the newest event it already reported, then reports the new ones oldest
first. A retried run follows the job its earlier attempt started (see `start`) instead of paying
for a second one. `hyperparameters` is sent at the top level (OpenAI now prefers ``method.supervised``, and
still accepts it; services that copy the API accept this older form more often).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from tuneloop.data.validate import Row
from tuneloop.errors import UserError
from tuneloop.runtime.fsutil import atomic_write_text
from tuneloop.specs import TrainingSpec
from tuneloop.training.remote.client import ServiceClient
from tuneloop.training.jobs import Job, JobCheckpoint, JobEvent, JobFailed
from tuneloop.training.interface import JobResult, Log, Progress, ShouldStop
from tuneloop.training.remote.common import (
    JobResult, Log, Progress, ShouldStop, chat_jsonl, earlier_job, fingerprint, follow, remote_result,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
WHERE = "OpenAI fine-tuning"
FIELD_FIXES = {
    "model": "pass a base model this service can fine-tune (e.g. gpt-4o-mini-2024-07-18) as base_model",
    "training_file": "check the rows with `tuneloop data validate FILE`: the service wants at least 10 chat "
                     "examples, each ending with an assistant message",
    "validation_file": "check the validation rows with `tuneloop data validate FILE`, or train without them",
    "hyperparameters.n_epochs": "set training.epochs within the service's range (OpenAI: 1-50)",
    "hyperparameters.batch_size": "set training.batch_size x training.gradient_accumulation within the "
                                  "service's range (OpenAI: 1-256)",
    "hyperparameters.learning_rate_multiplier": "set the trainer option learning_rate_multiplier to a positive "
                                                "number or \"auto\"",
    "hyperparameters": "pass only n_epochs, batch_size and learning_rate_multiplier in the hyperparameters option",
    "suffix": "use a suffix of at most 64 letters, digits, '-' and '_' (trainer option suffix)",
    "seed": "set training.seed to an integer from 0 to 2147483647",
    "": "check base_url (it ends in /v1, e.g. https://api.openai.com/v1) and that the job id exists",
}


class OpenAIFineTuningTrainer:
    """`Trainer` for OpenAI-compatible fine-tuning APIs.

    Hyperparameters come from the spec (n_epochs = epochs, batch_size = batch_size x
    gradient_accumulation, seed) plus `learning_rate_multiplier` (the spec's learning rate is an
    absolute LoRA rate with no meaning here); `hyperparameters` overrides any of them.
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None, *, suffix: str = "tuneloop",
                 learning_rate_multiplier: float | str = "auto", hyperparameters: dict | None = None,
                 poll_interval: float = 10.0, cancel_timeout_s: float = 120.0, timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 1.0, events_page: int = 100, resume: bool = True,
                 transport: httpx.BaseTransport | None = None):
        if not api_key:
            raise UserError("api_key", "is empty: OpenAI fine-tuning needs an API key",
                            "export OPENAI_API_KEY=sk-... (or pass api_key=)")
        self.suffix, self.learning_rate_multiplier, self.resume = suffix, learning_rate_multiplier, resume
        self.hyperparameters = dict(hyperparameters or {})
        self.poll_interval, self.cancel_timeout_s, self.events_page = poll_interval, cancel_timeout_s, events_page
        self.http = ServiceClient(
            base_url, WHERE, headers={"Authorization": f"Bearer {api_key}"}, credential="the API key",
            credential_fix="pass a valid key as api_key=, or set OPENAI_API_KEY (make_trainer reads the variable "
                           "named by api_key_env); the key's project must be allowed to fine-tune",
            field_fixes=FIELD_FIXES, timeout=timeout, max_retries=max_retries, backoff=backoff, transport=transport)

    def __repr__(self) -> str:
        return f"OpenAIFineTuningTrainer({self.http.base_url!r})"

    def hyperparameters_for(self, spec: TrainingSpec) -> dict:
        return {"n_epochs": spec.epochs, "batch_size": spec.batch_size * spec.gradient_accumulation,
                "learning_rate_multiplier": self.learning_rate_multiplier} | self.hyperparameters

    def upload(self, filename: str, data: bytes) -> dict:
        """`POST /files` (multipart, purpose fine-tune); the file object."""
        return self.http.json("POST", "/files", files={"file": (filename, data, "application/jsonl")},
                              data={"purpose": "fine-tune"})

    def create_job(self, body: dict) -> Job:
        return Job.from_openai(self.http.json("POST", "/fine_tuning/jobs", json_body=body))

    def get_job(self, job_id: str) -> Job:
        return Job.from_openai(self.http.json("GET", f"/fine_tuning/jobs/{job_id}"))

    def cancel(self, job_id: str) -> None:
        # 400/409: it ended between the last poll and now; the next poll shows how
        self.http.request("POST", f"/fine_tuning/jobs/{job_id}/cancel", expect=(400, 409))

    def events_since(self, job_id: str, last_id: str | None) -> list[JobEvent]:
        """Events newer than `last_id`, oldest first (the API lists newest first; ``after`` pages back)."""
        fresh: list[dict] = []
        params: dict = {"limit": self.events_page}
        while True:
            page = self.http.json("GET", f"/fine_tuning/jobs/{job_id}/events", params=params)
            data = page.get("data") or []
            for d in data:
                if last_id is not None and d.get("id") == last_id:
                    return [JobEvent.from_openai(d) for d in reversed(fresh)]
                fresh.append(d)
            if not page.get("has_more") or not data:
                return [JobEvent.from_openai(d) for d in reversed(fresh)]
            params = {"limit": self.events_page, "after": data[-1]["id"]}

    def checkpoints(self, job_id: str) -> list[JobCheckpoint]:
        out, params = [], {"limit": 100}
        while True:
            page = self.http.json("GET", f"/fine_tuning/jobs/{job_id}/checkpoints", params=params)
            data = page.get("data") or []
            out += [JobCheckpoint.from_openai(d) for d in data]
            if not page.get("has_more") or not data:
                return sorted(out, key=lambda c: c.step)
            params = {"limit": 100, "after": data[-1]["id"]}

    def start(self, run_dir: Path, body: dict, data: dict[str, bytes | None], log: Log) -> tuple[Job, dict]:
        """Follow the job an earlier attempt of this run started for the same request, or upload and create one.

        The request's fingerprint (body plus the files' sha256) is kept in run_dir/job.json, so a task
        retried after a transient error does not pay for a second job.
        """
        key = fingerprint(body | {k: hashlib.sha256(v).hexdigest() for k, v in data.items() if v is not None})
        earlier = earlier_job(run_dir, self.http.base_url, key) if self.resume else None
        job = None
        if earlier:
            try:
                job = self.get_job(earlier)
            except UserError:  # gone (404) or not this key's: start a new one
                job = None
        if job is not None and job.status not in ("failed", "cancelled"):
            log(f"{WHERE}: following job {job.id} ({job.status}), started by an earlier attempt for this run")
            return job, json.loads((run_dir / "job.json").read_text())
        files = {k: self.upload(f"{run_dir.name}-{k.split('_')[0]}.jsonl", v) for k, v in data.items() if v}
        body = body | {k: f["id"] for k, f in files.items()}
        job = self.create_job(body)
        log(f"{WHERE}: created job {job.id} on {body['model']}")
        record = {"trainer": "openai", "base_url": self.http.base_url, "fingerprint": key, "request": body,
                  "files": files}
        atomic_write_text(run_dir / "job.json", json.dumps(record | {"job": job.to_json()}, indent=2))
        return job, record

    def train(self, spec: TrainingSpec, base_model: str, train_rows: list[Row], val_rows: list[Row],
              run_dir: Path, log: Log = print, should_stop: ShouldStop | None = None,
              progress: Progress | None = None) -> JobResult:
        """Upload, create the job (or find this run's earlier one), follow it to the end; `JobFailed` if it fails."""
        if not train_rows:
            raise UserError("train_rows", "is empty", "give the trainer at least 10 training rows")
        run_dir = Path(run_dir)
        body = {"model": base_model, "hyperparameters": self.hyperparameters_for(spec), "suffix": self.suffix,
                "seed": spec.seed}
        job, record = self.start(run_dir, body, {"training_file": chat_jsonl(train_rows),
                                                 "validation_file": chat_jsonl(val_rows) if val_rows else None}, log)
        last: list[str | None] = [None]

        def poll() -> tuple[Job, list[JobEvent]]:
            current = self.get_job(job.id)
            events = self.events_since(job.id, last[0])
            if events:
                last[0] = events[-1].id
            return current, events

        seen = follow(job, poll, lambda: self.cancel(job.id), log=log, should_stop=should_stop, progress=progress,
                      poll_interval=self.poll_interval, cancel_timeout_s=self.cancel_timeout_s, where=WHERE)
        if seen.job.status == "failed":
            atomic_write_text(run_dir / "job.json", json.dumps(record | {"job": seen.job.to_json()}, indent=2))
            raise JobFailed(seen.job, f"{WHERE} at {self.http.base_url}")
        checkpoints = [c.to_json() for c in self.checkpoints(job.id)]
        for c in checkpoints:
            log(f"{WHERE} {job.id}: checkpoint at step {c['step']}: {c['model']}")
        result = remote_result(seen, "openai", base_model, run_dir, None, checkpoints)
        atomic_write_text(run_dir / "job.json", json.dumps(record | {"job": seen.job.to_json(),
                                                                     "checkpoints": checkpoints}, indent=2))
        atomic_write_text(run_dir / "result.json", json.dumps(result.to_json(), indent=2))
        return result
