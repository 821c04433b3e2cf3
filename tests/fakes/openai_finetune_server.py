"""A local stand-in for OpenAI's fine-tuning API (files, jobs, events, checkpoints, cancel).

Routes, under /v1, with OpenAI's object shapes (`file`, `fine_tuning.job`, `fine_tuning.job.event`,
`fine_tuning.job.checkpoint`, lists with `has_more`):

- POST /v1/files                                  multipart: file + purpose=fine-tune
- POST /v1/fine_tuning/jobs                       {model, training_file, validation_file, hyperparameters, suffix, seed}
- GET  /v1/fine_tuning/jobs/{id}                  each call moves the simulated job one tick
- GET  /v1/fine_tuning/jobs/{id}/events           newest first; ?limit, ?after=<event id> pages to older ones
- GET  /v1/fine_tuning/jobs/{id}/checkpoints      newest first, same paging
- POST /v1/fine_tuning/jobs/{id}/cancel           400 once the job has ended

The job moves validating_files -> queued -> running (one step a tick: a metrics event, and a
checkpoint every `checkpoint_every` steps) -> succeeded. A tick is one job poll (`slow=n`: every
n-th poll), so tests are deterministic however slow the machine is. `fail_at="validating_files"`
or `fail_at=<step>` ends it `failed` with `fail_error`. `models`, when given, lists the base models
it accepts. Uploaded files are kept: `file_rows(file_id)` parses one back.

    with fake_openai_finetune(api_key="sk-test") as ft:
        ft.fail_next("POST /v1/fine_tuning/jobs", Fail(429, "Rate limit reached", retry_after="0"))
        ...; ft.jobs["ftjob-..."].status
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy

from fakes.base import Answer, json_answer
from fakes.job_service import FakeService, error_answer

DEFAULT_FAILURE = {"code": "invalid_training_file", "param": "training_file",
                   "message": "The job failed due to an invalid training file. Invalid file format. "
                              "Example 3, message 2: content is missing."}


@dataclass
class SimJob:
    id: str
    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict
    suffix: str | None
    seed: int | None
    total_steps: int
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "validating_files"
    step: int = 0
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    error: dict | None = None
    trained_tokens: int | None = None
    events: list[dict] = field(default_factory=list)  # oldest first
    checkpoints: list[dict] = field(default_factory=list)
    polls: int = 0

    def to_json(self) -> dict:
        return {"object": "fine_tuning.job", "id": self.id, "model": self.model, "created_at": self.created_at,
                "finished_at": self.finished_at, "fine_tuned_model": self.fine_tuned_model,
                "organization_id": "org-fake", "result_files": [], "status": self.status,
                "validation_file": self.validation_file, "training_file": self.training_file,
                "hyperparameters": self.hyperparameters, "trained_tokens": self.trained_tokens,
                "error": self.error, "seed": self.seed, "estimated_finish": None, "integrations": [],
                "metadata": None, "method": {"type": "supervised",
                                             "supervised": {"hyperparameters": self.hyperparameters}}}


class FakeOpenAIFineTuning(FakeService):
    name = "fake-openai-finetune"
    prefix = "/v1"

    def __init__(self, api_key: str | None = None, *, total_steps: int = 6, checkpoint_every: int = 2,
                 fail_at: str | int | None = None, fail_error: dict | None = None, slow: int = 1,
                 models: set[str] | None = None, delay_s: float = 0.0):
        super().__init__(token=api_key, delay_s=delay_s)
        self.total_steps, self.checkpoint_every, self.slow, self.models = total_steps, checkpoint_every, slow, models
        self.fail_at, self.fail_error = fail_at, dict(fail_error or DEFAULT_FAILURE)
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, SimJob] = {}
        self._ids = itertools.count(1)

    def file_rows(self, file_id: str) -> list[dict]:
        return [json.loads(line) for line in self.files[file_id]["content"].decode().splitlines()]

    # -- the simulated job ------------------------------------------------------------------

    def _event(self, job: SimJob, message: str, level: str = "info", data: dict | None = None,
               kind: str = "message") -> None:
        job.events.append({"object": "fine_tuning.job.event", "id": f"ftevent-{next(self._ids):05d}",
                           "created_at": int(time.time()), "level": level, "message": message,
                           "data": data or {}, "type": kind})

    def _fail(self, job: SimJob) -> None:
        job.status, job.finished_at, job.error = "failed", int(time.time()), dict(self.fail_error)
        self._event(job, job.error["message"], "error")

    def _tick(self, job: SimJob) -> None:
        job.polls += 1
        if job.status in ("succeeded", "failed", "cancelled") or job.polls % self.slow:
            return
        if job.status == "validating_files":
            if self.fail_at == "validating_files":
                return self._fail(job)
            job.status = "queued"
            self._event(job, "Files validated, moving job to queued state")
        elif job.status == "queued":
            job.status = "running"
            self._event(job, "Fine-tuning job started")
        elif job.status == "running":
            job.step += 1
            k, n = job.step, job.total_steps
            data = {"step": k, "train_loss": round(2.0 / k, 4), "total_steps": n,
                    "train_mean_token_accuracy": round(0.5 + 0.4 * k / n, 4)}
            message = f"Step {k}/{n}: training loss={data['train_loss']:.2f}"
            if job.validation_file and k % self.checkpoint_every == 0:
                data |= {"valid_loss": round(2.2 / k + (0.3 if k == n else 0), 4), "valid_mean_token_accuracy": 0.6}
                message += f", validation loss={data['valid_loss']:.2f}"
            self._event(job, message, data=data, kind="metrics")
            if self.fail_at == k:
                return self._fail(job)
            if k % self.checkpoint_every == 0 or k == n:
                name = f"ft:{job.model}:org-fake:{job.suffix}:{job.id[-8:]}:ckpt-step-{k}"
                job.checkpoints.append({"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job.id[-8:]}-{k}",
                                        "created_at": int(time.time()), "fine_tuned_model_checkpoint": name,
                                        "fine_tuning_job_id": job.id, "step_number": k,
                                        "metrics": {kk: v for kk, v in data.items() if kk != "total_steps"}})
                self._event(job, f"Checkpoint created at step {k}")
            if k == n:
                rows = self.file_rows(job.training_file)
                words = sum(len(m["content"].split()) for r in rows for m in r["messages"])
                epochs = job.hyperparameters.get("n_epochs")
                job.trained_tokens = words * (epochs if isinstance(epochs, int) else 1)
                job.fine_tuned_model = f"ft:{job.model}:org-fake:{job.suffix}:{job.id[-8:]}"
                job.status, job.finished_at = "succeeded", int(time.time())
                self._event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
                self._event(job, "The job has successfully completed")

    # -- routes -----------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes) -> Answer:
        if (method, path) == ("POST", "/files"):
            return self._upload(headers.get("content-type", ""), raw)
        if (method, path) == ("POST", "/fine_tuning/jobs"):
            return self._create(raw)
        m = re.fullmatch(r"/fine_tuning/jobs/([^/]+)(?:/(events|checkpoints|cancel))?", path)
        if not m:
            return error_answer(404, f"Invalid URL ({method} /v1{path})")
        job = self.jobs.get(m[1])
        if job is None:
            return error_answer(404, f"Could not find fine-tune: {m[1]}", param="fine_tuning_job_id",
                                err_code="fine_tune_not_found")
        what = m[2]
        if method == "GET" and what is None:
            self._tick(job)
            return json_answer(200, job.to_json())
        if method == "GET" and what in ("events", "checkpoints"):
            items = job.events if what == "events" else job.checkpoints
            return json_answer(200, _page(list(reversed(items)), query))
        if method == "POST" and what == "cancel":
            if job.status in ("succeeded", "failed", "cancelled"):
                return error_answer(400, f"Job has already {job.status}, cannot cancel")
            job.status, job.finished_at = "cancelled", int(time.time())
            self._event(job, "Fine-tuning job cancelled")
            return json_answer(200, job.to_json())
        return error_answer(404, f"Invalid URL ({method} /v1{path})")

    def _upload(self, content_type: str, raw: bytes) -> Answer:
        if not content_type.startswith("multipart/form-data"):
            return error_answer(400, "uploads must be multipart/form-data", param="file")
        msg = BytesParser(policy=email_policy).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
        if "file" not in parts:
            return error_answer(400, "'file' is a required property", param="file")
        purpose = parts["purpose"].get_content().strip() if "purpose" in parts else None
        if purpose != "fine-tune":
            return error_answer(400, f"'{purpose}' is not one of ['fine-tune', 'assistants', 'batch', ...] - 'purpose'",
                                param="purpose")
        content = parts["file"].get_payload(decode=True)
        fid = f"file-{next(self._ids):06d}"
        self.files[fid] = {"id": fid, "filename": parts["file"].get_filename(), "purpose": purpose,
                           "content": content}
        return json_answer(200, {"object": "file", "id": fid, "bytes": len(content), "created_at": int(time.time()),
                                 "filename": parts["file"].get_filename(), "purpose": purpose,
                                 "status": "processed", "status_details": None})

    def _create(self, raw: bytes) -> Answer:
        body = json.loads(raw or b"{}")
        model = body.get("model")
        if not model:
            return error_answer(400, "Missing required parameter: 'model'.", param="model")
        if self.models is not None and model not in self.models:
            return error_answer(400, f"Model {model} is not available for fine-tuning or does not exist.",
                                param="model", err_code="model_not_available")
        for name in ("training_file", "validation_file"):
            fid = body.get(name)
            if (name == "training_file" or fid is not None) and fid not in self.files:
                return error_answer(400, f"invalid {name}: {fid}", param=name)
        hp = dict(body.get("hyperparameters") or {})
        n = hp.get("n_epochs", "auto")
        if n != "auto" and not (isinstance(n, int) and 1 <= n <= 50):
            return error_answer(400, f"Invalid n_epochs: {n}. Must be between 1 and 50.",
                                param="hyperparameters.n_epochs")
        if len(body.get("suffix") or "") > 64:
            return error_answer(400, "suffix must be at most 64 characters", param="suffix")
        job = SimJob(id=f"ftjob-{next(self._ids):08d}", model=model, training_file=body["training_file"],
                     validation_file=body.get("validation_file"), hyperparameters=hp, suffix=body.get("suffix"),
                     seed=body.get("seed"), total_steps=self.total_steps)
        self.jobs[job.id] = job
        self._event(job, f"Created fine-tuning job: {job.id}")
        self._event(job, f"Validating training file: {job.training_file}"
                         + (f" and validation file: {job.validation_file}" if job.validation_file else ""))
        return json_answer(200, job.to_json())


def _page(items: list[dict], query: dict[str, str]) -> dict:
    """OpenAI's cursor page over newest-first items: `after` is the last id the caller already has."""
    limit = int(query.get("limit", 20))
    start = 0
    if "after" in query:
        ids = [i["id"] for i in items]
        start = ids.index(query["after"]) + 1 if query["after"] in ids else len(items)
    data = items[start:start + limit]
    return {"object": "list", "data": data, "has_more": start + limit < len(items),
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def fake_openai_finetune(api_key: str | None = None, **kw) -> FakeOpenAIFineTuning:
    """A fake to run with `with`: started on 127.0.0.1 and a free port, stopped on exit."""
    return FakeOpenAIFineTuning(api_key=api_key, **kw)
