"""Training on an AutoTrain-style REST service that sends the trained LoRA adapter back.

The REST shape (documented in docs/remote-trainers.md, served by tests/fakes/autotrain_server.py):

    GET  /health                 -> {"status": "ok"}
    POST /train                  {base_model, project_name, task: "llm-sft", params, data: {format: "chat",
                                  train: [{messages}], valid: [{messages}]}} -> the job
    GET  /train/{id}             -> {id, status, base_model, created_at, finished_at, error: {code, message}|null,
                                     progress: {step, total, loss, val_loss}, trained_tokens, model, message}
    POST /train/{id}/cancel      -> the job
    GET  /train/{id}/adapter     -> a tar (optionally gzipped) or zip of adapter_config.json + *.safetensors;
                                    404 when the service keeps the model and names it in `model` instead

`status` uses the six words of `tuneloop.training.jobs`. The archive is unpacked defensively
(`unpack_adapter`): regular files only, no absolute or ``..`` paths, safetensors weights only, a
size cap; then published atomically as run_dir/adapter.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Callable

import httpx

from tuneloop.data.validate import Row
from tuneloop.errors import TuneloopError, UnsafeFileError, UserError
from tuneloop.runtime.fsutil import atomic_write_text, publish_dir, staging_dir
from tuneloop.runtime.safety import PICKLE_SUFFIXES
from tuneloop.specs import TrainingSpec
from tuneloop.training.remote.client import ServiceClient
from tuneloop.training.jobs import Job, JobError, JobEvent, JobFailed
from tuneloop.training.interface import JobResult, Log, Progress, ShouldStop
from tuneloop.training.remote.common import (
    JobResult, Log, Progress, ShouldStop, chat_record, earlier_job, fingerprint, follow, remote_result,
)

WHERE = "AutoTrain"
ALLOWED_SUFFIXES = (".safetensors", ".json", ".md", ".txt")
FIELD_FIXES = {
    "base_model": "pass a base model id or path the service can load as base_model",
    "params": "check the training spec: the service rejected one of its values",
    "data": "check the rows with `tuneloop data validate FILE`",
    "project_name": "use a project_name of letters, digits, '-' and '_'",
    "": "check base_url (the service's root, e.g. http://autotrain.internal:7860) and that the job id exists",
}


class UnsafeArchiveError(TuneloopError):
    """An adapter archive that could write outside its folder, or holds something other than an adapter."""


class AutoTrainTrainer:
    """`Trainer` for the AutoTrain-style REST shape above; the adapter comes back to run_dir/adapter."""

    def __init__(self, base_url: str, token: str | None = None, *, project_name: str = "tuneloop",
                 poll_interval: float = 5.0, cancel_timeout_s: float = 120.0, timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 1.0, max_download_bytes: int = 4 << 30, resume: bool = True,
                 transport: httpx.BaseTransport | None = None):
        self.project_name, self.poll_interval, self.cancel_timeout_s = project_name, poll_interval, cancel_timeout_s
        self.max_download_bytes, self.resume = max_download_bytes, resume
        self.http = ServiceClient(
            base_url, WHERE, headers={"Authorization": f"Bearer {token}"} if token else None, credential="the token",
            credential_fix="pass a valid token as token=, or set HF_TOKEN (make_trainer reads the variable named "
                           "by token_env)",
            field_fixes=FIELD_FIXES, timeout=timeout, max_retries=max_retries, backoff=backoff, transport=transport)

    def __repr__(self) -> str:
        return f"AutoTrainTrainer({self.http.base_url!r})"

    @staticmethod
    def params_for(spec: TrainingSpec) -> dict:
        return {"epochs": spec.epochs, "batch_size": spec.batch_size,
                "gradient_accumulation": spec.gradient_accumulation, "lr": spec.learning_rate,
                "max_steps": spec.max_steps, "warmup_steps": spec.warmup_steps, "weight_decay": spec.weight_decay,
                "max_grad_norm": spec.max_grad_norm,
                "max_seq_length": spec.max_seq_len, "peft": True, "lora_r": spec.rank, "lora_alpha": spec.alpha,
                "lora_dropout": spec.dropout, "target_modules": ",".join(spec.target_modules),
                "quantization": "int4" if spec.quantization == "4bit" else None, "seed": spec.seed,
                "eval_every": spec.eval_every, "early_stopping_patience": spec.early_stopping_patience}

    def health(self) -> dict:
        return self.http.json("GET", "/health")

    @staticmethod
    def job_from(d: dict, base_model: str = "") -> Job:
        err = d.get("error") or None
        return Job(id=d["id"], status=d["status"], model=d.get("base_model") or base_model,
                   fine_tuned_model=d.get("model"), created_at=d.get("created_at") or time.time(),
                   finished_at=d.get("finished_at"), trained_tokens=d.get("trained_tokens"),
                   error=JobError(err.get("code") or "error", err.get("message") or "") if err else None,
                   hyperparameters=dict(d.get("params") or {}))

    def start(self, run_dir: Path, body: dict, log: Log) -> tuple[Job, dict]:
        """Follow the job an earlier attempt of this run started for the same request, or create one
        (the request's fingerprint is kept in run_dir/job.json)."""
        key = fingerprint(body)
        earlier = earlier_job(run_dir, self.http.base_url, key) if self.resume else None
        found = self.http.request("GET", f"/train/{earlier}", expect=(404,)) if earlier else None
        alive = found is not None and found.status_code == 200
        job = self.job_from(found.json(), body["base_model"]) if alive else None
        if job is not None and job.status not in ("failed", "cancelled"):
            log(f"{WHERE}: following job {job.id} ({job.status}), started by an earlier attempt for this run")
        else:
            job = self.job_from(self.http.json("POST", "/train", json_body=body), body["base_model"])
            log(f"{WHERE}: created job {job.id} on {body['base_model']}")
        record = {"trainer": "autotrain", "base_url": self.http.base_url, "fingerprint": key,
                  "request": {k: v for k, v in body.items() if k != "data"}}
        atomic_write_text(run_dir / "job.json", json.dumps(record | {"job": job.to_json()}, indent=2))
        return job, record

    @staticmethod
    def events_from(d: dict, last: dict) -> list[JobEvent]:
        """The service reports only its latest message and progress: new ones become events."""
        events, p = [], d.get("progress") or {}
        if d.get("message") and d["message"] != last.get("message"):
            last["message"] = d["message"]
            events.append(JobEvent(time.time(), "info", d["message"]))
        if (p.get("step") or 0) > last.get("step", 0):
            last["step"] = p["step"]
            data = {"step": p["step"], "total_steps": p.get("total"), "train_loss": p.get("loss")}
            if p.get("val_loss") is not None:
                data["valid_loss"] = p["val_loss"]
            loss = f" loss {p['loss']:.4f}" if p.get("loss") is not None else ""
            events.append(JobEvent(time.time(), "info", f"step {p['step']}/{p.get('total')}{loss}", data, "metrics"))
        return events

    def train(self, spec: TrainingSpec, base_model: str, train_rows: list[Row], val_rows: list[Row],
              run_dir: Path, log: Log = print, should_stop: ShouldStop | None = None,
              progress: Progress | None = None) -> JobResult:
        """Submit (or find this run's earlier job), follow to the end, fetch the adapter; `JobFailed` if it fails."""
        if not train_rows:
            raise UserError("train_rows", "is empty", "give the trainer at least one training row")
        run_dir = Path(run_dir)
        self.health()
        job, record = self.start(run_dir, {
            "base_model": base_model, "project_name": self.project_name, "task": "llm-sft",
            "params": self.params_for(spec), "data": {"format": "chat", "train": [chat_record(r) for r in train_rows],
                                                      "valid": [chat_record(r) for r in val_rows]}}, log)
        last: dict = {}

        def poll() -> tuple[Job, list[JobEvent]]:
            d = self.http.json("GET", f"/train/{job.id}")
            return self.job_from(d, base_model), self.events_from(d, last)

        def cancel() -> None:  # 409: it ended between the last poll and now; the next poll shows how
            self.http.request("POST", f"/train/{job.id}/cancel", expect=(409,))

        seen = follow(job, poll, cancel, log=log, should_stop=should_stop, progress=progress,
                      poll_interval=self.poll_interval, cancel_timeout_s=self.cancel_timeout_s, where=WHERE)
        atomic_write_text(run_dir / "job.json", json.dumps(record | {"job": seen.job.to_json()}, indent=2))
        if seen.job.status == "failed":
            raise JobFailed(seen.job, f"{WHERE} at {self.http.base_url}")
        adapter_dir = self.download_adapter(job.id, run_dir) if seen.job.status == "succeeded" else None
        if seen.job.status == "succeeded" and adapter_dir is None and not seen.job.fine_tuned_model:
            raise TuneloopError(f"{WHERE} job {job.id} succeeded but the service sent no adapter (404 on "
                                f"/train/{job.id}/adapter) and named no model; check the service's storage settings")
        if adapter_dir is not None:
            seen.job.adapter_dir = adapter_dir
            log(f"{WHERE} {job.id}: adapter saved in {adapter_dir}")
        result = remote_result(seen, "autotrain", base_model, run_dir, adapter_dir, [])
        atomic_write_text(run_dir / "result.json", json.dumps(result.to_json(), indent=2))
        return result

    def download_adapter(self, job_id: str, run_dir: Path) -> Path | None:
        """GET the adapter archive and publish it as run_dir/adapter; None if the service has none (404)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=run_dir, prefix=".download.") as tmp:
            archive = Path(tmp) / "adapter.archive"
            r = self.http.request("GET", f"/train/{job_id}/adapter", expect=(404,), dest=archive,
                                  max_bytes=self.max_download_bytes)
            if r.status_code == 404:
                return None
            staged = staging_dir(run_dir, "adapter")
            try:
                unpack_adapter(archive, staged, self.max_download_bytes, source=f"{WHERE} job {job_id}")
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
        final = run_dir / "adapter"
        if final.exists():
            shutil.rmtree(final)
        publish_dir(staged, final)
        return final


# -- unpacking safely -----------------------------------------------------------------------------

Entry = tuple[str, int, Callable[[], IO[bytes]]]


def unpack_adapter(archive: Path, dest: Path, max_bytes: int = 4 << 30, source: str = "the archive") -> Path:
    """Unpack a zip or tar of a LoRA adapter into the empty folder `dest`.

    Refuses links and special files, absolute or ``..`` paths, duplicate names, pickle weights
    (`UnsafeFileError`), files other than safetensors/json/md/txt, and more than `max_bytes` in all.
    A single top-level folder is stripped. adapter_config.json and adapter_model.safetensors must
    be there, and every safetensors header must parse.
    """
    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            entries: list[Entry] = []
            for info in zf.infolist():
                if info.is_dir():
                    continue
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool recorded no file type
                if kind and kind != stat.S_IFREG:
                    raise UnsafeArchiveError(f"{source}: {info.filename!r} is a link or special file; an adapter "
                                             "archive holds regular files only")
                entries.append((info.filename, info.file_size, lambda i=info: zf.open(i)))
            return _write(entries, Path(dest), max_bytes, source)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            entries = []
            for m in tf.getmembers():
                if m.isdir():
                    continue
                if not m.isfile():
                    what = "link" if m.issym() or m.islnk() else "special file"
                    raise UnsafeArchiveError(f"{source}: {m.name!r} is a {what}; an adapter archive holds regular "
                                             "files only")
                entries.append((m.name, m.size, lambda m=m: tf.extractfile(m)))
            return _write(entries, Path(dest), max_bytes, source)
    raise UnsafeArchiveError(f"{source}: the adapter download is neither a zip nor a tar archive")


def _relative(name: str, source: str) -> PurePosixPath:
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or not parts or ".." in parts:
        raise UnsafeArchiveError(f"{source}: refusing archive member {name!r}: it points outside the adapter folder")
    return PurePosixPath(*parts)


def _write(entries: list[Entry], dest: Path, max_bytes: int, source: str) -> Path:
    plan: dict[PurePosixPath, Entry] = {}
    for entry in entries:
        rel = _relative(entry[0], source)
        if rel in plan:
            raise UnsafeArchiveError(f"{source}: {entry[0]!r} appears twice in the archive")
        plan[rel] = entry
    tops = {rel.parts[0] for rel in plan}
    if len(tops) == 1 and all(len(rel.parts) > 1 for rel in plan):  # adapter/adapter_config.json ...
        plan = {PurePosixPath(*rel.parts[1:]): e for rel, e in plan.items()}
    pickles = sorted(str(r) for r in plan if r.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeFileError(pickles, source)
    other = sorted(str(r) for r in plan if r.suffix.lower() not in ALLOWED_SUFFIXES)
    if other:
        raise UnsafeArchiveError(f"{source}: unexpected file(s) {other} in the adapter archive; it may hold "
                                 f"only {', '.join(ALLOWED_SUFFIXES)} files")
    missing = {"adapter_config.json", "adapter_model.safetensors"} - {str(r) for r in plan}
    if missing:
        raise UnsafeArchiveError(f"{source}: the adapter archive lacks {sorted(missing)} at its top level "
                                 f"(it holds {sorted(str(r) for r in plan)})")
    if sum(e[1] for e in plan.values()) > max_bytes:
        raise UnsafeArchiveError(f"{source}: the adapter archive unpacks to more than {max_bytes:,} bytes")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise TuneloopError(f"unpack_adapter: {dest} is not empty")
    written = 0
    for rel, (_, _, opener) in plan.items():
        target = dest.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(target, "xb") as out:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > max_bytes:  # sizes in headers can lie
                    raise UnsafeArchiveError(f"{source}: the adapter archive unpacks to more than {max_bytes:,} bytes")
                out.write(chunk)
    _check_adapter(dest, source)
    return dest


def _check_adapter(folder: Path, source: str) -> None:
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except ValueError as e:
        raise UnsafeArchiveError(f"{source}: adapter_config.json is not JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UnsafeArchiveError(f"{source}: adapter_config.json is not a JSON object")
    for path in folder.rglob("*.safetensors"):
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            ok = 0 < n <= size - 8
            try:
                header = json.loads(fh.read(n)) if ok else None
            except ValueError:
                header = None
        tensors = [v for k, v in header.items() if k != "__metadata__"] if isinstance(header, dict) else [None]
        if not all(isinstance(t, dict) and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2
                   and 0 <= t["data_offsets"][0] <= t["data_offsets"][1] <= size - 8 - n for t in tensors):
            raise UnsafeArchiveError(f"{source}: {path.name} is not a valid safetensors file")
