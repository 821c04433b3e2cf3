"""A local stand-in for the AutoTrain-style REST service `tuneloop.training.remote.autotrain` talks to.

- GET  /health                  {"status": "ok"}
- POST /train                   {base_model, project_name, task, params, data: {format, train, valid}}
- GET  /train/{id}              the job; each call moves it one tick (`slow=n`: every n-th call)
- POST /train/{id}/cancel       409 once the job has ended
- GET  /train/{id}/adapter      the `adapter` archive bytes once succeeded (409 before); 404 with
                                `keep_model` set (the job then names that model instead)

It trains nothing: the job walks validating_files -> queued -> running (step 1..total_steps,
with a loss) -> succeeded, or `failed` with `fail_error` at `fail_at` (a step number or
"validating_files"). The adapter it returns is whatever archive the test hands it (see
`archive_folder`), e.g. a real LoRA adapter built with peft on a tiny base.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from fakes.base import Answer, json_answer
from fakes.job_service import FakeService, error_answer

DEFAULT_FAILURE = {"code": "training_error", "message": "CUDA out of memory. Tried to allocate 2.00 GiB"}


def archive_folder(folder: Path, fmt: str = "tar.gz", prefix: str = "adapter") -> bytes:
    """The files of `folder` as a tar, tar.gz or zip, under `prefix/` (or at the top with prefix "")."""
    buf = io.BytesIO()
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())

    def name(p: Path) -> str:
        rel = p.relative_to(folder).as_posix()
        return f"{prefix}/{rel}" if prefix else rel

    if fmt == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for p in files:
                zf.write(p, name(p))
    else:
        with tarfile.open(fileobj=buf, mode="w:gz" if fmt == "tar.gz" else "w") as tf:
            for p in files:
                tf.add(p, name(p))
    return buf.getvalue()


@dataclass
class SimTrain:
    id: str
    base_model: str
    params: dict
    train: list[dict]
    valid: list[dict]
    total_steps: int
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "validating_files"
    step: int = 0
    loss: float | None = None
    val_loss: float | None = None
    finished_at: int | None = None
    error: dict | None = None
    model: str | None = None
    message: str | None = "validating the data"
    polls: int = 0

    def to_json(self) -> dict:
        return {"id": self.id, "status": self.status, "base_model": self.base_model, "params": self.params,
                "created_at": self.created_at, "finished_at": self.finished_at, "error": self.error,
                "progress": {"step": self.step, "total": self.total_steps, "loss": self.loss,
                             "val_loss": self.val_loss},
                "trained_tokens": sum(len(m["content"].split()) for r in self.train for m in r["messages"]) * self.step,
                "model": self.model, "message": self.message}


class FakeAutoTrain(FakeService):
    name = "fake-autotrain"

    def __init__(self, token: str | None = None, *, adapter: bytes | None = None,
                 content_type: str = "application/x-tar", total_steps: int = 5, fail_at: str | int | None = None,
                 fail_error: dict | None = None, slow: int = 1, keep_model: str | None = None, delay_s: float = 0.0):
        super().__init__(token=token, delay_s=delay_s)
        self.adapter, self.content_type, self.keep_model = adapter, content_type, keep_model
        self.total_steps, self.fail_at, self.slow = total_steps, fail_at, slow
        self.fail_error = dict(fail_error or DEFAULT_FAILURE)
        self.jobs: dict[str, SimTrain] = {}
        self._ids = itertools.count(1)

    def _tick(self, job: SimTrain) -> None:
        job.polls += 1
        if job.status in ("succeeded", "failed", "cancelled") or job.polls % self.slow:
            return
        if job.status == "validating_files":
            if self.fail_at == "validating_files":
                job.status, job.error, job.finished_at = "failed", dict(self.fail_error), int(time.time())
                return
            job.status, job.message = "queued", "waiting for a GPU"
        elif job.status == "queued":
            job.status, job.message = "running", "training started"
        elif job.status == "running":
            job.step += 1
            job.loss = round(3.0 / job.step, 4)
            job.val_loss = round(3.3 / job.step, 4) if job.valid else None
            if self.fail_at == job.step:
                job.status, job.error, job.finished_at = "failed", dict(self.fail_error), int(time.time())
                job.message = "training failed"
            elif job.step == job.total_steps:
                job.status, job.finished_at, job.message = "succeeded", int(time.time()), "training finished"
                job.model = self.keep_model

    def route(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes) -> Answer:
        if (method, path) == ("GET", "/health"):
            return json_answer(200, {"status": "ok", "version": "fake-1"})
        if (method, path) == ("POST", "/train"):
            return self._create(raw)
        m = re.fullmatch(r"/train/([^/]+)(?:/(cancel|adapter))?", path)
        job = self.jobs.get(m[1]) if m else None
        if job is None:
            return error_answer(404, f"no such route or job: {method} {path}", param="id")
        if method == "GET" and m[2] is None:
            self._tick(job)
            return json_answer(200, job.to_json())
        if method == "POST" and m[2] == "cancel":
            if job.status in ("succeeded", "failed", "cancelled"):
                return error_answer(409, f"job {job.id} already {job.status}")
            job.status, job.finished_at, job.message = "cancelled", int(time.time()), "cancelled by the client"
            return json_answer(200, job.to_json())
        if method == "GET" and m[2] == "adapter":
            if job.status != "succeeded":
                return error_answer(409, f"job {job.id} is {job.status}; the adapter exists once it succeeds")
            if self.keep_model or self.adapter is None:
                return error_answer(404, f"job {job.id} keeps no adapter here; its model is {job.model}")
            return 200, {"Content-Type": self.content_type}, self.adapter
        return error_answer(404, f"no such route: {method} {path}")

    def _create(self, raw: bytes) -> Answer:
        body = json.loads(raw or b"{}")
        if not body.get("base_model"):
            return error_answer(422, "base_model is required", param="base_model")
        data = body.get("data") or {}
        train = data.get("train")
        if not isinstance(train, list) or not train or not all(isinstance(r.get("messages"), list) for r in train):
            return error_answer(422, "data.train must be a non-empty list of {messages: [...]}", param="data.train")
        job = SimTrain(id=f"at-{next(self._ids):06d}", base_model=body["base_model"], params=body.get("params") or {},
                       train=train, valid=data.get("valid") or [], total_steps=self.total_steps)
        self.jobs[job.id] = job
        return json_answer(201, job.to_json())


def fake_autotrain(token: str | None = None, **kw) -> FakeAutoTrain:
    """A fake to run with `with`: started on 127.0.0.1 and a free port, stopped on exit."""
    return FakeAutoTrain(token=token, **kw)
