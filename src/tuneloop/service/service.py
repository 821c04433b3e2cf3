"""The service behind `/v1`: files, fine-tuning jobs and models of each tenant, over one home folder.

Prefect stays outside: `runs` (the entry layer's, see cli/up.py) submits a job's flow run, reads its state
and stops it. Everything a tenant owns is looked up within that tenant only, so another tenant's id is
the same 404 as an unknown one.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Protocol

from tuneloop.errors import UserError
from tuneloop.feedback.store import FeedbackStore
from tuneloop.runtime.shared import shared_state
from tuneloop.service import jobs as J
from tuneloop.service import promotions as P
from tuneloop.service.errors import NotFound
from tuneloop.service.feedback import Completions, record_feedback
from tuneloop.service.files import FileStore
from tuneloop.service.home import Home
from tuneloop.service.requests import build_spec, parse_create
from tuneloop.specs import TINY_BASE

MIN_EXAMPLES = 10  # OpenAI's minimum for a training file
STEP = re.compile(r"[1-9][0-9]{0,8}")  # a checkpoint id's step, as the service writes it
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


class Runs(Protocol):
    def submit(self, job_id: str, tenant: str, spec: dict) -> str: ...  # the new flow run's id
    def view(self, run_id: str) -> J.RunView | None: ...
    def stop(self, run_id: str, message: str) -> None: ...  # the worker kills its process
    def abandon(self, run_id: str, message: str) -> None: ...  # its process is gone: mark it cancelled
    def promote(self, promotion_id: str, tenant: str, spec: dict, token: str) -> str: ...  # a promote run's id
    def result(self, run_id: str) -> dict | None: ...  # a completed run's persisted result


class BadState(UserError):
    """An action the job's status does not allow (cancel a finished job, resume a running one): a 400."""


class Service:
    def __init__(self, home: Home, runs: Runs | None = None, bases: tuple[str, ...] = (TINY_BASE,),
                 tokens: P.Tokens | None = None):
        self.home, self.runs, self.bases = home, runs, bases
        self.files = FileStore(home.files)
        self.jobs = J.JobStore(home.jobs)
        self.completions = Completions(home.completions)
        # where collect-feedback keeps it; with TUNELOOP_STATE_STORE, also where other machines read it
        self.feedback_store = FeedbackStore(home.root / "feedback", shared=shared_state())
        self.url: str | None = None  # where the promote flow reaches this service (set by `tuneloop up`)
        self.tokens = tokens or P.Tokens()  # the keys of promotions in flight, and the loop key
        self.served: Callable[[str], str | None] | None = None  # tenant -> version live in its slots
        self._adapters: dict[tuple[str, str], Path] = {}  # verified adapter folders (see _adapter)

    def feedback(self, tenant: str, body: dict) -> dict:
        return record_feedback(self.feedback_store, self.completions, tenant, body,
                               emit=getattr(self.runs, "emit_negative", None))

    # -- registries ----------------------------------------------------------------------------------
    def registry(self, tenant: str):
        from tuneloop.registry import open_registry

        return open_registry(str(self.home.registry(tenant)))

    def _version_of(self, tenant: str, job_id: str):
        reg = self.registry(tenant)
        for v in reg.list():
            if v.manifest.get("job") == job_id:
                return v
        return None

    # -- jobs ----------------------------------------------------------------------------------------
    def create_job(self, tenant: str, body: dict) -> dict:
        req = parse_create(body)
        train = self.files.get(tenant, req["training_file"])
        files = [("training_file", train)]
        if req["validation_file"]:
            files.append(("validation_file", self.files.get(tenant, req["validation_file"])))
        wanted = "dpo" if req["method"] == "dpo" else "chat"
        for param, f in files:
            if f.get("format", "chat") != wanted and wanted == "chat":
                raise UserError(f"{param}={f['id']}", f"holds {f.get('format')} rows; a supervised job trains on "
                                "chat rows", "upload a chat-format file (messages or prompt/completion), or create "
                                "the job with method={'type': 'dpo'}")
            if f.get("format", "chat") != wanted:
                raise UserError(f"{param}={f['id']}", f"holds {f.get('format')} rows; a dpo job trains on preference "
                                "rows", "upload a preference file (input, preferred_output, non_preferred_output), "
                                "or create the job with method={'type': 'supervised'}")
        if train.get("rows", 0) < MIN_EXAMPLES:
            raise UserError(f"training_file={train['id']}", f"has {train.get('rows')} example(s); a job needs at "
                            f"least {MIN_EXAMPLES}", "add examples to the file and upload it again")
        base, init_adapter = self._base_for(tenant, req["model"])
        job_id = J.new_id(J.JOB_PREFIX)
        validation = self.files.path(tenant, req["validation_file"]) if req["validation_file"] else None
        spec, hyper = build_spec(req, base, tenant, job_id, self.files.path(tenant, train["id"]), validation,
                                 init_adapter)
        record = {"id": job_id, "tenant": tenant, "created_at": time.time(), "model": req["model"],
                  "base_model": base, "training_file": train["id"], "validation_file": req["validation_file"],
                  "suffix": req["suffix"], "seed": spec.training.seed, "metadata": req["metadata"],
                  "method": req["method"], "hyperparameters": hyper, "spec": spec.model_dump(mode="json"),
                  "fine_tuned_model_name": J.fine_tuned_name(base, tenant, req["suffix"], job_id),
                  "runs": [], "status": None}
        J.add_event(record, f"Validated training file: {train['id']} ({train.get('rows')} examples)")
        if self.runs is None:
            raise UserError("fine_tuning.jobs.create", "this server has no Prefect to run jobs on",
                            "start the service with `tuneloop up`")
        run_id = self.runs.submit(job_id, tenant, record["spec"])  # raises before any record is written
        record["runs"].append(run_id)
        J.add_event(record, "Fine-tuning job queued")
        self.jobs.save(record)
        return self._object(record)

    def _base_for(self, tenant: str, model: str) -> tuple[str, Path | None]:
        """The base model a job trains, and the adapter it starts from when `model` is a fine-tuned model.

        A local folder must be under the service's models folder: a key may not make the service read
        (or tell apart) arbitrary paths on its machine."""
        if model.startswith("ft:"):
            base, adapter = self.resolve_model(tenant, model)
            if adapter is None:
                raise NotFound(model, "model", "GET /v1/models", "model")
            return base, adapter[1]
        if model == "champion":
            raise UserError("model='champion'", "a job names the model it continues from",
                            "give the champion's fine_tuned_model id (GET /v1/models/champion shows it)")
        if model in self.bases or HUB_ID.fullmatch(model) and not model.startswith((".", "~")):
            return model, None
        root = self.models_root()
        folder = (root / model).resolve() if not Path(model).expanduser().is_absolute() else \
            Path(model).expanduser().resolve()
        if folder.is_relative_to(root) and (folder / "config.json").exists():
            return str(folder), None
        raise UserError(f"model={model!r}", "a base is a Hugging Face id (org/name), tuneloop/tiny-llama, or a "
                        "model folder under the service's models folder", f"put the model in {root.name}/ on the "
                        "service's machine and name it by its folder, or give a hub id")

    def models_root(self) -> Path:
        from tuneloop.settings import get_settings

        return get_settings().models_dir.resolve()

    def job(self, tenant: str, job_id: str) -> dict:
        return self._object(self.jobs.get(tenant, job_id))

    def _object(self, record: dict) -> dict:
        status, outcome = self._observe(record)
        if outcome:
            run = record["runs"][-1] if record.get("runs") else None
            record = self.jobs.update(record["tenant"], record["id"], lambda r: _finish(r, outcome, run))
            if record.get("status") in J.TERMINAL or record.get("status") == "paused":
                status = record["status"]
        if any(p["status"] == "running" for p in record.get("promotions", [])):
            record = self._observe_promotions(record)
        return J.to_object(record, status, self.home.runs)

    def _observe(self, record: dict) -> tuple[str, dict]:
        if record.get("status") in J.TERMINAL or record.get("status") == "paused" or not record.get("runs"):
            return J.observe(record, None, None, self.home.runs)
        view = self.runs.view(record["runs"][-1]) if self.runs is not None else None
        if view is None:  # Prefect cannot say (down, or it lost the run)
            if record.get("cancel_requested") and record.get("run_gone"):
                return "cancelled", {"status": "cancelled", "finished_at": int(time.time())}
            return record.get("status") or "queued", {}
        version = self._version_of(record["tenant"], record["id"]) if view.state_type == "COMPLETED" else None
        return J.observe(record, view, version, self.home.runs)

    def list_jobs(self, tenant: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        records, more = J.page(self.jobs.list(tenant), after, limit)
        return [self._object(r) for r in records], more

    def cancel(self, tenant: str, job_id: str) -> dict:
        self.job(tenant, job_id)  # reads the latest outcome into the record first

        def change(r):  # checked under the job's lock: a concurrent resume or pause sees it
            if r.get("status") in J.TERMINAL:
                raise BadState(f"job {job_id}", f"is already {r['status']}",
                               "only a queued, running or paused job cancels")
            r["cancel_requested"] = True
            J.add_event(r, "Job cancellation requested; checkpoints are kept")
            if r.get("status") == "paused" and not r.get("submitting"):
                _finish(r, {"status": "cancelled", "finished_at": int(time.time())}, r["runs"][-1])

        record = self.jobs.update(tenant, job_id, change)
        if record.get("status") != "cancelled" and record.get("runs"):
            self._stop(record, "cancelled through the fine-tuning API")
        return self._object(self.jobs.get(tenant, job_id))

    def _stop(self, record: dict, message: str) -> None:
        try:
            self.runs.stop(record["runs"][-1], message)
        except LookupError:  # Prefect no longer knows the run: nothing runs it
            self.jobs.update(record["tenant"], record["id"], lambda r: r.update(run_gone=True))

    def pause(self, tenant: str, job_id: str) -> dict:
        self.job(tenant, job_id)

        def change(r):
            if r.get("status") in J.TERMINAL or r.get("status") == "paused" or r.get("cancel_requested") \
                    or r.get("pause_requested") or r.get("submitting"):
                shown = r.get("status") or ("cancelling" if r.get("cancel_requested") else "pausing")
                raise BadState(f"job {job_id}", f"is {shown}", "only a queued or running job pauses")
            r["pause_requested"] = True
            J.add_event(r, "Job pause requested; it resumes from its last checkpoint")

        record = self.jobs.update(tenant, job_id, change)
        self._stop(record, "paused through the fine-tuning API")
        return self._object(self.jobs.get(tenant, job_id))

    def resume(self, tenant: str, job_id: str) -> dict:
        self.job(tenant, job_id)
        return self._new_run(tenant, job_id, "Job resumed", paused=True)

    def _new_run(self, tenant: str, job_id: str, reason: str, paused: bool) -> dict:
        """Another flow run of the job's spec: it finds the job's run folder and resumes from its checkpoint.
        One at a time per job (`submitting` is set under the lock); a cancel that lands meanwhile stops it."""
        def reserve(r):
            if r.get("status") in J.TERMINAL or r.get("cancel_requested") or r.get("submitting") or (
                    paused and r.get("status") != "paused"):
                shown = r.get("status") or ("cancelling" if r.get("cancel_requested") else "resuming")
                raise BadState(f"job {job_id}", f"is {shown}", "only a paused job resumes")
            r["submitting"] = True

        record = self.jobs.update(tenant, job_id, reserve)
        try:
            run_id = self.runs.submit(job_id, tenant, record["spec"])
        except BaseException:
            self.jobs.update(tenant, job_id, lambda r: r.pop("submitting", None))
            raise
        step = max((c["step_number"] for c in J.checkpoints(record, self.home.runs)), default=0)

        def commit(r):
            r.pop("submitting", None)
            r["runs"].append(run_id)
            if r.get("status") not in J.TERMINAL:
                r.update(status=None, pause_requested=False)
            J.add_event(r, f"{reason}: it continues from checkpoint step {step}" if step else
                        f"{reason}: no checkpoint yet, it starts from the beginning")

        record = self.jobs.update(tenant, job_id, commit)
        if record.get("cancel_requested"):  # cancelled while the run was being submitted
            self._stop(record, "cancelled through the fine-tuning API")
        return self._object(self.jobs.get(tenant, job_id))

    def resume_orphans(self) -> list[str]:
        """At start: a job whose flow run was in flight when the service stopped gets a new run, which
        resumes from the job's last checkpoint; the old run is marked cancelled so nothing retries it."""
        resumed = []
        for tenant in self.jobs.tenants():
            for record in self.jobs.list(tenant):
                if any(p["status"] in ("running", "submitting") for p in record.get("promotions", [])):
                    self._end_promotions(record)
                if record.get("status") in J.TERMINAL or record.get("status") == "paused" or not record["runs"]:
                    continue
                view = self.runs.view(record["runs"][-1])
                if view is None or view.state_type in ("RUNNING", "PENDING", "CANCELLING", "CRASHED"):
                    if view is not None:
                        self.runs.abandon(record["runs"][-1], "superseded: the service restarted while it ran")
                    if record.get("cancel_requested") or record.get("pause_requested"):
                        continue  # its stop request is honoured: observe() ends it
                    self._new_run(tenant, record["id"], "The service restarted while the job ran", paused=False)
                    resumed.append(record["id"])
        return resumed

    def _end_promotions(self, record: dict) -> None:
        """At start: a promotion in flight when the service stopped is over. The slots lived in the stopped
        process and start again from the production alias, which only a finished promotion moves."""
        why = "the service restarted during the promotion; the slots start again from the production alias"
        for p in record["promotions"]:
            if p["status"] == "running":
                try:
                    self.runs.abandon(p["run"], why)
                except LookupError:
                    pass

        def write(r):
            for p in r["promotions"]:
                if p["status"] in ("running", "submitting"):
                    p.update(status="cancelled", reason=why, finished_at=int(time.time()))
                    J.add_event(r, f"Promotion {p['id']} cancelled: {why}", "warn")
            r["promotions"] = [p for p in r["promotions"] if p.get("run")]

        self.jobs.update(record["tenant"], record["id"], write)

    def events(self, tenant: str, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        record = self.jobs.get(tenant, job_id)
        self._object(record)
        return J.page(J.events(self.jobs.get(tenant, job_id), self.home.runs), after, limit)

    def checkpoints(self, tenant: str, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        return J.page(J.checkpoints(self.jobs.get(tenant, job_id), self.home.runs), after, limit)

    def evaluate(self, tenant: str, job_id: str, body: dict) -> dict:
        """Score the job's fine-tuned model, and its base beside it, on one of the tenant's chat files."""
        from tuneloop.data import validate_file
        from tuneloop.evals.run import evaluate_model
        from tuneloop.models.base import resolve_base_model
        from tuneloop.serving.bodies import BadField, number
        from tuneloop.settings import get_settings
        from tuneloop.specs import EvalSpec

        unknown = sorted(set(map(str, body)) - {"file", "max_items", "max_new_tokens"})
        if unknown:
            raise BadField(unknown[0], body[unknown[0]], "evaluate takes file, max_items and max_new_tokens",
                           "drop the others")
        job = self.job(tenant, job_id)
        if job["status"] != "succeeded":
            raise BadState(f"job {job_id}", f"is {job['status']}; only a succeeded job has a model to evaluate",
                           "wait for it to succeed")
        f = self.files.get(tenant, body.get("file") or job["training_file"])
        if f.get("format", "chat") != "chat":
            raise UserError(f"file={f['id']}", f"holds {f.get('format')} rows; evaluation scores chat rows",
                            "give a chat-format file")
        spec = EvalSpec(max_new_tokens=number(body, "max_new_tokens", 64, 1, 512, int),
                        max_items=number(body, "max_items", 200, 1, 2000, int))
        path = self.files.path(tenant, f["id"])
        rows = validate_file(path, min_examples=1, tenant=tenant).rows  # validated at upload
        base, (_, adapter) = self.resolve_model(tenant, job["fine_tuned_model"])
        base_path = resolve_base_model(base, get_settings().models_dir, log=lambda m: None)
        tuned = evaluate_model(base_path, adapter, rows, spec, job["fine_tuned_model"])
        bare = evaluate_model(base_path, None, rows, spec, base)
        return {"object": "fine_tuning.job.evaluation", "fine_tuning_job_id": job_id, "file": f["id"],
                "items": min(len(rows), spec.max_items),
                "model": job["fine_tuned_model"], "metrics": tuned.metrics, "base_model": base,
                "base_metrics": bare.metrics}

    # -- promotions ----------------------------------------------------------------------------------
    def promote(self, tenant: str, job_id: str, body: dict) -> dict:
        """Run the promote flow for the job's model against this tenant's slots (see service.promotions)."""
        job = self.job(tenant, job_id)
        if job["status"] != "succeeded" or not job["tuneloop"]["version"]:
            raise BadState(f"job {job_id}", f"is {job['status']}; only a succeeded job has a model to promote",
                           "wait for it to succeed")
        if self.url is None or self.runs is None:
            raise UserError("promote", "this server does not run flows or does not know its own address",
                            "start the service with `tuneloop up`")
        smoke = None
        if body.get("smoke_file") is not None:
            f = self.files.get(tenant, str(body["smoke_file"]))
            if f.get("format", "chat") != "chat":
                raise UserError(f"smoke_file={f['id']}", f"holds {f.get('format')} rows; smoke items are chat rows",
                                "give a chat-format file")
            smoke = str(self.files.path(tenant, f["id"]))
        version = job["tuneloop"]["version"]
        spec = P.parse(body, self.url, version, smoke, tenant)
        pid = J.new_id(P.PREFIX)

        def reserve(r):  # one promotion at a time per job
            if any(p["status"] == "running" for p in r.get("promotions", [])):
                raise BadState(f"job {job_id}", "has a promotion running", "wait for it to end (GET the job)")
            r.setdefault("promotions", []).append({"id": pid, "status": "submitting"})

        self.jobs.update(tenant, job_id, reserve)
        token = self.tokens.make(tenant, pid)
        try:
            run_id = self.runs.promote(pid, tenant, spec.model_dump(mode="json"), token)
        except BaseException:
            self.tokens.drop(pid)
            self.jobs.update(tenant, job_id, lambda r: r.update(
                promotions=[p for p in r["promotions"] if p["id"] != pid]))
            raise
        promotion = P.new(pid, run_id, spec, version)

        def commit(r):
            r["promotions"] = [promotion if p["id"] == pid else p for p in r["promotions"]]
            J.add_event(r, f"Promotion {pid} started ({spec.mode}): {version} goes to the idle slot, is validated, "
                        "then takes traffic; a breach rolls it back")

        self.jobs.update(tenant, job_id, commit)
        return promotion

    def promotions(self, tenant: str, job_id: str) -> list[dict]:
        record = self.jobs.get(tenant, job_id)
        if any(p["status"] == "running" for p in record.get("promotions", [])):
            record = self._observe_promotions(record)
        return [p for p in record.get("promotions", []) if p["status"] != "submitting"]

    def _observe_promotions(self, record: dict) -> dict:
        updates = {}
        for p in record.get("promotions", []):
            if p["status"] != "running":
                continue
            view = self.runs.view(p["run"]) if self.runs is not None else None
            if view is None:
                continue
            result = self.runs.result(p["run"]) if view.state_type == "COMPLETED" else None
            end = P.ended(p, view.state_type, view.message, result)
            if end is not None:
                updates[p["id"]] = end | {"finished_at": int(time.time())}

        def write(r):
            for p in r.get("promotions", []):
                if p["id"] in updates and p["status"] == "running":
                    p.update(updates[p["id"]])
                    self.tokens.drop(p["id"])
                    J.add_event(r, f"Promotion {p['id']} {p['status']}: {p['reason']}",
                                "info" if p["status"] in ("promoted", "already-live") else "warn",
                                data={"promotion": p["id"], "outcome": p["status"]})

        return self.jobs.update(record["tenant"], record["id"], write) if updates else record

    # -- models --------------------------------------------------------------------------------------
    def resolve_model(self, tenant: str, model: str) -> tuple[str, tuple[str, Path] | None]:
        """(base model id, (adapter name, adapter folder) or None) for a model this tenant may use."""
        if model in self.tenant_bases(tenant):
            return model, None
        if model == "champion":
            reg = self.registry(tenant)
            v = reg.champion()
            if v is None:
                raise NotFound(model, "model", "GET /v1/models", "model")
            return v.manifest["base_model"], (f"{tenant}:{v.id}", self._adapter(tenant, v.id))
        name, _, ckpt = model.partition(":ckpt-step-")
        record = self._job_of_model(tenant, name)  # one record read: the name ends with the job's id
        if record is not None and ckpt:
            path = J.checkpoint_adapter(record, self.home.runs, int(ckpt)) if STEP.fullmatch(ckpt) else None
            if path is not None:
                return record["base_model"], (model, path)
        elif record is not None:
            if record.get("status") != "succeeded":
                self._object(record)
                record = self.jobs.get(tenant, record["id"])
            if record.get("status") == "succeeded" and record.get("version"):
                return record["base_model"], (model, self._adapter(tenant, record["version"]))
        raise NotFound(model, "model", "GET /v1/models", "model")

    def _job_of_model(self, tenant: str, name: str) -> dict | None:
        """The tenant's not-deleted job whose fine-tuned model is `name` (J.fine_tuned_name's shape)."""
        if not name.startswith("ft:"):
            return None
        try:
            record = self.jobs.get(tenant, J.JOB_PREFIX + name.rsplit(":", 1)[-1])
        except NotFound:
            return None
        return record if record.get("fine_tuned_model_name") == name and not record.get("deleted") else None

    def _adapter(self, tenant: str, version: str) -> Path:
        """A registry version's adapter folder, its files' sha256 checked on first use (a version is written
        once and never changed, so a request does not hash the adapter again)."""
        key = (tenant, version)
        if key not in self._adapters:
            self._adapters[key] = Path(self.registry(tenant).adapter_for(version))
        return self._adapters[key]

    def tenant_bases(self, tenant: str) -> list[str]:
        """The service's bases, and every base this tenant's jobs trained."""
        return list(dict.fromkeys([*self.bases, *(r["base_model"] for r in self.jobs.list(tenant))]))

    def models(self, tenant: str) -> list[dict]:
        out = [{"id": b, "object": "model", "created": 0, "owned_by": "tuneloop"} for b in self.tenant_bases(tenant)]
        reg = self.registry(tenant)
        champion = reg.champion()
        live = self.served(tenant) if self.served is not None else getattr(champion, "id", None)
        for record in self.jobs.list(tenant):
            if record.get("status") == "succeeded" and not record.get("deleted"):
                out.append({"id": record["fine_tuned_model"], "object": "model",
                            "created": int(record.get("finished_at") or record["created_at"]), "owned_by": tenant,
                            "tuneloop": {"job": record["id"], "version": record.get("version"),
                                         "champion": champion is not None and champion.id == record.get("version"),
                                         "live": live is not None and live == record.get("version")}})
        if live is not None:  # `champion` answers from the tenant's live slot
            out.append({"id": "champion", "object": "model", "created": 0, "owned_by": tenant,
                        "tuneloop": {"version": live, "base_model": reg.get(live).manifest["base_model"],
                                     "registry_champion": getattr(champion, "id", None),
                                     "production": reg.aliases().get("production")}})
        return out

    def model(self, tenant: str, model: str) -> dict:
        for m in self.models(tenant):
            if m["id"] == model:
                return m
        self.resolve_model(tenant, model)  # a checkpoint id: a model too, though not listed (as OpenAI's)
        return {"id": model, "object": "model", "created": 0, "owned_by": tenant}

    def delete_model(self, tenant: str, model: str) -> dict:
        for record in self.jobs.list(tenant):
            if record.get("fine_tuned_model") == model and not record.get("deleted"):
                reg = self.registry(tenant)
                held = {getattr(reg.champion(), "id", None), reg.aliases().get("production"),
                        self.served(tenant) if self.served is not None else None}
                if record.get("version") in held:
                    raise BadState(f"model {model}", "is the tenant's champion, its production version or live in "
                                   "its slots", "promote another model first, then delete this one")
                self.jobs.update(tenant, record["id"], lambda r: r.update(deleted=True))
                return {"id": model, "object": "model", "deleted": True}
        raise NotFound(model, "model", "GET /v1/models", "model")


    def health(self) -> dict:
        """The registry and the store: their folders can be written (a full or read-only disk shows here)."""
        import os

        out = {}
        for name, path in (("registry", self.home.root / "registries"), ("store", self.home.files)):
            try:
                path.mkdir(parents=True, exist_ok=True)
                state = "ok" if os.access(path, os.W_OK) else "read-only"
            except OSError as e:
                state = f"down ({e.strerror})"
            out[name] = {"state": state}  # no path: /health answers without a key
        return out

    def stats(self, tenant: str) -> dict:
        """The tenant's jobs by status, tokens trained, models and feedback, as counts."""
        from collections import Counter

        records = self.jobs.list(tenant)
        by_status = Counter(self._observe(r)[0] for r in records)
        labels = Counter(i.label()[0] for i in self.feedback_store.items() if i.tenant == tenant)
        return {"object": "stats", "tenant": tenant, "jobs": {"total": len(records), **dict(sorted(by_status.items()))},
                "trained_tokens": sum(r.get("trained_tokens") or 0 for r in records),
                "models": {"fine_tuned": sum(1 for r in records if r.get("status") == "succeeded"
                                             and not r.get("deleted")),
                           "champion": getattr(self.registry(tenant).champion(), "id", None)},
                "files": len(self.files.list(tenant)), "feedback": {"total": sum(labels.values()), **labels}}


def _finish(record: dict, outcome: dict, run: str | None) -> None:
    """Write a job's outcome, observed on flow run `run`, into its record, with the events that tell it; an
    outcome of a run that is no longer the job's current one (resumed since), or one already written, is not."""
    if record.get("status") in J.TERMINAL or record.get("status") == outcome["status"]:
        return  # another reader wrote it first
    if run is not None and (not record.get("runs") or record["runs"][-1] != run or record.get("submitting")):
        return  # observed on a run the job has moved past
    if outcome["status"] == "paused" and not record.get("pause_requested"):
        return
    gate = outcome.get("gate")
    record.update(outcome)
    status = outcome["status"]
    if status == "succeeded":
        J.add_event(record, f"New fine-tuned model created: {record['fine_tuned_model']}")
        if gate:
            J.add_event(record, ("Promoted to champion: " if gate["promoted"] else "Kept as a candidate (the "
                                 "champion stays): ") + str(gate.get("reason")), data={"gate": gate})
        J.add_event(record, "The job has successfully completed")
    elif status == "failed":
        J.add_event(record, f"The job failed: {outcome['error']['message']}", "error")
    elif status == "cancelled":
        J.add_event(record, "The job was cancelled")
    elif status == "paused":
        J.add_event(record, "The job is paused")
