"""Fine-tuning jobs as OpenAI's `fine_tuning.job`, `.event` and `.checkpoint` objects.

A job is a record under the service's home (what was asked, the retrain spec made from it, the flow runs
that carried it out, in order) plus what those runs leave behind: progress and checkpoints in the job's run
folder, the registered version in the tenant's registry. The entry layer reads the current flow run's
Prefect state and hands it in as a `RunView`; everything else is read here, from files. Once a job ends,
its outcome is written into the record, so a finished job reads the same without Prefect.

Pause stops the current flow run and keeps its checkpoints; resume starts a new flow run of the same spec,
which finds the same run folder and resumes from its last checkpoint. A service restart does the same for
jobs whose runs were in flight.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.service.errors import NotFound
from tuneloop.runtime.fsutil import atomic_write_text, locked
from tuneloop.runtime.safety import is_safe_name
from tuneloop.training.checkpoint import list_checkpoints
from tuneloop.training.jobs import TERMINAL, phase_from_tasks, status_from_prefect
from tuneloop.training.runs import read_progress

JOB_PREFIX, EVENT_PREFIX, CHECKPOINT_PREFIX = "ftjob-", "ftevent-", "ftckpt-"


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def fine_tuned_name(base: str, tenant: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's shape `ft:<base>:<org>:<suffix>:<id>`, the tenant as the organisation."""
    return f"ft:{base}:{tenant}:{suffix or ''}:{job_id.removeprefix(JOB_PREFIX)}"


def checkpoint_name(model: str, step: int) -> str:
    return f"{model}:ckpt-step-{step}"


@dataclass
class RunView:
    """What Prefect says about a job's current flow run."""

    state_type: str  # SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, CANCELLING, CRASHED, PAUSED
    state_name: str = ""
    message: str | None = None
    started_tasks: list[str] = field(default_factory=list)

    @property
    def final(self) -> bool:
        """Ended for good. Not CRASHED: the retry automation reschedules a crashed run."""
        return self.state_type in ("COMPLETED", "FAILED", "CANCELLED")


class JobStore:
    """Job records, one JSON file per job, changed under a lock per tenant."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, tenant: str, job_id: str) -> Path:
        if not (isinstance(job_id, str) and job_id.startswith(JOB_PREFIX) and is_safe_name(job_id)):
            raise NotFound(job_id, "fine-tuning job", "GET /v1/fine_tuning/jobs", "fine_tuning_job_id")
        return self.root / tenant / f"{job_id}.json"

    def get(self, tenant: str, job_id: str) -> dict:
        try:
            return json.loads(self._path(tenant, job_id).read_text())
        except FileNotFoundError:
            raise NotFound(job_id, "fine-tuning job", "GET /v1/fine_tuning/jobs", "fine_tuning_job_id") from None

    def save(self, record: dict) -> dict:
        path = self._path(record["tenant"], record["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=1))
        return record

    def update(self, tenant: str, job_id: str, change) -> dict:
        """Read, change (a function of the record that edits it in place), write: one writer at a time."""
        folder = self.root / tenant
        folder.mkdir(parents=True, exist_ok=True)
        with locked(folder, ".jobs.lock"):
            record = self.get(tenant, job_id)
            change(record)
            return self.save(record)

    def list(self, tenant: str) -> list[dict]:
        """Newest first."""
        folder = self.root / tenant
        records = []
        for p in folder.glob(f"{JOB_PREFIX}*.json") if folder.exists() else []:
            try:
                records.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(records, key=lambda r: (r["created_at"], r["id"]), reverse=True)

    def tenants(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.exists() else []


def add_event(record: dict, message: str, level: str = "info", data: dict | None = None) -> None:
    record.setdefault("events", []).append({"created_at": time.time(), "level": level, "message": message,
                                            "type": "message", "data": data})


# -- the job's run folder ----------------------------------------------------------------------------------
def run_dir(runs: Path, job_id: str) -> Path | None:
    """The job's training run folder (the newest, should its spec ever have changed), or None before training."""
    folders = [p for p in (runs / job_id).glob("run-*") if p.is_dir()] if (runs / job_id).exists() else []
    return max(folders, key=lambda p: p.stat().st_mtime) if folders else None


def _history(folder: Path | None) -> list[dict]:
    """Every step's losses so far: the final result's history, else the newest checkpoint's."""
    if folder is None:
        return []
    for source in [folder / "result.json"] + [c / "state.json" for c in reversed(list_checkpoints(folder))]:
        try:
            return json.loads(source.read_text()).get("history") or []
        except (OSError, ValueError):
            continue
    return []


def checkpoints(record: dict, runs: Path) -> list[dict]:
    """The job's checkpoints, newest first, each usable as a model by its `fine_tuned_model_checkpoint`."""
    folder = run_dir(runs, record["id"])
    out = []
    for path in reversed(list_checkpoints(folder) if folder else []):
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, ValueError):
            continue
        step = int(state.get("global_step", 0))
        hist = {h["step"]: h for h in state.get("history") or []}
        point = hist.get(step, {})
        metrics = {"step": step, "train_loss": state.get("last_loss")}
        if point.get("val_loss") is not None:
            metrics["valid_loss"] = point["val_loss"]
        if state.get("best_val") is not None:
            metrics["full_valid_loss"] = state["best_val"]
        out.append({"id": CHECKPOINT_PREFIX + hashlib.sha256(f"{record['id']}:{step}".encode()).hexdigest()[:24],
                    "object": "fine_tuning.job.checkpoint", "created_at": int((path / "state.json").stat().st_mtime),
                    "fine_tuned_model_checkpoint": checkpoint_name(record["fine_tuned_model_name"], step),
                    "fine_tuning_job_id": record["id"], "step_number": step, "metrics": metrics})
    return out


def checkpoint_adapter(record: dict, runs: Path, step: int) -> Path | None:
    folder = run_dir(runs, record["id"])
    path = folder / "checkpoints" / f"step-{step:07d}" / "adapter" if folder else None
    return path if path is not None and path.exists() else None


def events(record: dict, runs: Path) -> list[dict]:
    """The job's story, newest first: the service's own lines and one metrics event per training step."""
    rows = [dict(e) for e in record.get("events", [])]
    folder = run_dir(runs, record["id"])
    total = (read_progress(folder) or {}).get("total") if folder else None
    for h in _history(folder):
        data = {"step": h["step"], "train_loss": h["loss"]}
        if h.get("val_loss") is not None:
            data["valid_loss"] = h["val_loss"]
        if total:
            data["total_steps"] = total
        text = f"Step {h['step']}{f'/{total}' if total else ''}: training loss={h['loss']:.4f}" + (
            f", validation loss={h['val_loss']:.4f}" if h.get("val_loss") is not None else "")
        rows.append({"created_at": h.get("t") or record["created_at"], "level": "info", "message": text,
                     "type": "metrics", "data": data})
    out = []
    for i, e in enumerate(rows):
        key = f"{record['id']}:{e['type']}:{e['data'].get('step') if e['type'] == 'metrics' else i}"
        out.append({"id": EVENT_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:24],
                    "object": "fine_tuning.job.event", "created_at": int(e["created_at"]), "level": e["level"],
                    "message": e["message"], "type": e["type"], "data": e.get("data") or {}, "_t": e["created_at"]})
    out.sort(key=lambda e: e.pop("_t"), reverse=True)
    return out


def page(items: list[dict], after: str | None, limit: int) -> tuple[list[dict], bool]:
    """OpenAI's cursor paging over a newest-first list: the items after the one with id `after`."""
    if after is not None:
        ids = [x["id"] for x in items]
        if after not in ids:
            raise NotFound(after, "cursor", "the listing", "after")
        items = items[ids.index(after) + 1:]
    return items[:limit], len(items) > limit


# -- status ------------------------------------------------------------------------------------------------
def observe(record: dict, view: RunView | None, version, runs: Path) -> tuple[str, dict]:
    """(status, outcome): the job's status now, and when it has just ended, the fields to write into the
    record (`finished_at`, `error`, `fine_tuned_model`, `version`, ...); else an empty dict."""
    if record.get("status") in TERMINAL or record.get("status") == "paused":
        return record["status"], {}
    if view is None:
        return "validating_files" if not record.get("runs") else "queued", {}
    now = int(time.time())
    kind = view.state_type
    if record.get("cancel_requested") and not (kind == "COMPLETED" and version is not None):
        return "cancelled", ({"status": "cancelled", "finished_at": now} if view.final else {})
    if record.get("pause_requested") and not (kind == "COMPLETED" and version is not None):
        return ("paused", {"status": "paused"}) if view.final else ("running", {})
    if kind == "COMPLETED":  # (even when a stop was asked for: it came too late, the model exists)
        if version is None:
            return "failed", {"status": "failed", "finished_at": now, "error": {
                "code": "no_model", "param": None,
                "message": f"the run completed without registering a model ({view.message or 'no message'})"}}
        training = version.manifest.get("training") or {}
        decision = (version.status or {}).get("decision") or {}
        return "succeeded", {
            "status": "succeeded", "finished_at": now, "version": version.id,
            "fine_tuned_model": record["fine_tuned_model_name"], "trained_tokens": training.get("train_tokens"),
            "gate": {"version": version.id, "promoted": (version.status or {}).get("status") == "champion",
                     "reason": (version.status or {}).get("reason"), "metric": decision.get("metric"),
                     "candidate": version.metrics, "incumbent": (version.manifest.get("incumbent") or {})}}
    if kind in ("FAILED", "CANCELLED"):  # CANCELLED without a request: a guard or approval stopped it
        code = "run_failed" if kind == "FAILED" else "stopped_by_guard"
        return "failed", {"status": "failed", "finished_at": now,
                          "error": {"code": code, "param": None, "message": view.message or kind.lower()}}
    if kind == "CRASHED":
        return "running", {}  # the retry automation reschedules it; it resumes from its checkpoint
    status = status_from_prefect(kind)
    if status == "running":  # the data checks come first: until another task starts, the files are validated
        status = phase_from_tasks(status, view.started_tasks)[0] if view.started_tasks else "validating_files"
    return ("running" if status == "cancelled" else status), {}


def estimated_finish(record: dict, runs: Path) -> int | None:
    folder = run_dir(runs, record["id"])
    p = read_progress(folder) if folder else None
    if not p or not p.get("step") or p["step"] >= p["total"]:
        return None
    per_step = p["elapsed_s"] / p["step"]
    return int(p["at"] + per_step * (p["total"] - p["step"]))


def to_object(record: dict, status: str, runs: Path) -> dict:
    """The OpenAI `fine_tuning.job` object (and a `tuneloop` extra: the gate's decision, the runs)."""
    hyper = {k: record["hyperparameters"].get(k) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    shown = hyper | ({"beta": record["hyperparameters"].get("beta")} if record["method"] == "dpo" else {})
    method = {"type": record["method"], record["method"]: {"hyperparameters": shown}}
    return {
        "id": record["id"], "object": "fine_tuning.job", "created_at": int(record["created_at"]),
        "error": record.get("error"), "fine_tuned_model": record.get("fine_tuned_model"),
        "finished_at": record.get("finished_at"), "hyperparameters": hyper, "model": record["model"],
        "organization_id": record["tenant"], "result_files": [], "seed": record["seed"], "status": status,
        "trained_tokens": record.get("trained_tokens"), "training_file": record["training_file"],
        "validation_file": record.get("validation_file"),
        "estimated_finish": estimated_finish(record, runs) if status == "running" else None,
        "integrations": [], "metadata": record.get("metadata") or None, "method": method, "user_provided_suffix":
        record.get("suffix"),
        "tuneloop": {"base_model": record["base_model"], "runs": record.get("runs", []),
                     "version": record.get("version"), "gate": record.get("gate"),
                     "preset": record["hyperparameters"].get("preset"),
                     "learning_rate": record["hyperparameters"].get("learning_rate")},
    }
