"""`tuneloop serve`, `tuneloop deploy ...` and `tuneloop jobs ...`: the management surface.

Deploy commands talk to a running server's admin API over HTTP; jobs are
Prefect flow runs, managed through Prefect's API (the one the UI uses), so a
job started here shows in the UI and the reverse. This module is part of the
entry layer (like cli.py) and may import prefect.
"""

from __future__ import annotations

import json
import os

from tuneloop.cli.runflow import import_flow, prefect_env
from tuneloop.errors import UserError
from tuneloop.serving.capacity import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_QUEUE
from tuneloop.serving.engine import DEFAULT_MAX_BATCH

DEFAULT_SERVER = os.environ.get("TUNELOOP_SERVER", "http://127.0.0.1:8000")
DEFAULT_DEPLOYMENT = "retrain/retrain"


def _admin(args):
    from tuneloop.serving.rollout import ServingAdmin

    return ServingAdmin(args.server or DEFAULT_SERVER, os.environ.get("TUNELOOP_ADMIN_TOKEN") or None)


def _show(obj) -> int:
    print(json.dumps(obj, indent=2, default=str))
    return 0


# -- serve / deploy -------------------------------------------------------------
def cmd_serve(args) -> int:
    from tuneloop.serving.server import run_server

    run_server(args.host, args.port, args.registry, args.base, args.version, args.name,
               drain_timeout=args.drain_timeout, allow_faults=args.allow_faults, keys_file=args.keys,
               max_concurrency=args.max_concurrency, max_queue=args.max_queue, max_batch=args.max_batch,
               engine=args.engine, vllm_url=args.vllm_url, vllm_key=os.environ.get(args.vllm_key_env) or None,
               adapter_budget_mb=args.adapter_budget_mb)
    return 0


def cmd_deploy(args) -> int:
    admin = _admin(args)
    if args.deploy_cmd == "status":
        st = admin.status()
        for name, s in st["slots"].items():
            role = "live" if name == st["live"] else ("canary %.0f%%" % (100 * st["canary"]["weight"])
                                                      if st["canary"] and st["canary"]["slot"] == name else "idle")
            print(f"{name:6} {role:12} {s['state']:8} {s['version'] or '-':8} in flight {s['in_flight']}")
        return 0
    if args.deploy_cmd == "rollback":
        st = admin.rollback()
        print(f"live: {st['live']} ({st['slots'][st['live']]['version']}), canary: {st['canary']}")
        return 0
    if args.deploy_cmd == "load":
        return _show(admin.load(args.slot, args.version)["slots"][args.slot])
    if args.deploy_cmd == "switch":
        st = admin.switch(args.slot)
        print(f"live: {st['live']} ({st['slots'][st['live']]['version']})")
        return 0
    if args.deploy_cmd == "promote":
        from tuneloop.specs import PromoteSpec, load_yaml_spec

        over = {k: v for k, v in (("version", args.version), ("mode", args.mode), ("server", args.server),
                                  ("smoke", args.smoke)) if v is not None}
        if args.config:
            spec = load_yaml_spec(args.config, PromoteSpec, **over)
        else:
            spec = PromoteSpec(**{"server": DEFAULT_SERVER, **over})
        result = import_flow("promote")(spec)
        print(f"{result['outcome']}: {result['reason']}")
        return 0 if result["outcome"] in ("promoted", "already-live") else 1
    raise AssertionError(args.deploy_cmd)


# -- jobs (Prefect flow runs) -----------------------------------------------------
def _run_json(fr) -> dict:
    """A flow run as a job, its status in OpenAI's fine-tuning vocabulary (queued, running, succeeded ...)."""
    from tuneloop.training.jobs import note_from_prefect, status_from_prefect

    st = fr.state
    return {"id": str(fr.id), "name": fr.name, "deployment_id": str(fr.deployment_id) if fr.deployment_id else None,
            "status": status_from_prefect(st.type.value, st.name) if st else None,
            "note": note_from_prefect(st.type.value, st.name) if st else None,
            "state": st.name if st else None, "message": st.message if st else None, "created": fr.created, "start_time": fr.start_time,
            "end_time": fr.end_time, "parameters": fr.parameters, "tags": fr.tags}


def _job_detail(client, fr) -> dict:
    """`_run_json` plus what the run's tasks and artifacts tell: `validating_files` while only the data checks
    have run, and the training checkpoints (step, losses, folder) the train task has published."""
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey,
                                                 FlowRunFilter, FlowRunFilterId)
    from prefect.client.schemas.sorting import ArtifactSort

    from tuneloop.training.jobs import CHECKPOINTS_ARTIFACT, phase_from_tasks

    job = _run_json(fr)
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
    status, note = phase_from_tasks(job["status"], [t.name for t in tasks if t.start_time is not None])
    if status != job["status"]:
        job["status"], job["note"] = status, note
    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[CHECKPOINTS_ARTIFACT]),
                                       flow_run_id=ArtifactFilterFlowRunId(any_=[fr.id])),
        sort=ArtifactSort.CREATED_DESC, limit=1)
    rows = []
    if found:
        data = found[0].data
        rows = json.loads(data) if isinstance(data, str) else (data or [])
    job["checkpoints"] = rows
    return job


def _params(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise UserError(p, "parameters are KEY=VALUE (VALUE as JSON when it parses, else a string)",
                            "write e.g. spec='{\"data\": \"feedback.jsonl\"}'")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_jobs(args) -> int:
    from uuid import UUID

    prefect_env()  # before Prefect reads its settings: the same profile and database as `tuneloop retrain`
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                 FlowRunFilterId, LogFilter, LogFilterFlowRunId)
    from prefect.client.schemas.sorting import FlowRunSort, LogSort
    from prefect.states import Cancelling

    def run_id(s: str) -> UUID:
        try:
            return UUID(s)
        except ValueError:
            raise UserError(s, "a job id is a flow run UUID", "copy it from `tuneloop jobs list`") from None

    if args.jobs_cmd == "create":
        from prefect.deployments import run_deployment

        fr = run_deployment(args.deployment, parameters=_params(args.param), timeout=0,
                            tags=["tuneloop-jobs"])
        return _show(_run_json(fr))
    with get_client(sync_client=True) as client:
        if args.jobs_cmd == "list":
            flt = None
            if args.deployment:
                dep = client.read_deployment_by_name(args.deployment)
                flt = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
            runs = client.read_flow_runs(deployment_filter=flt, sort=FlowRunSort.START_TIME_DESC, limit=args.limit)
            for fr in runs:
                j = _run_json(fr)
                print(f"{j['id']}  {j['status'] or '-':10} {j['name']:28} {j['start_time'] or j['created']}")
            return 0
        rid = run_id(args.id)
        if args.jobs_cmd == "get":
            return _show(_job_detail(client, client.read_flow_run(rid)))
        if args.jobs_cmd == "cancel":
            fr = client.read_flow_run(rid)
            if fr.state and fr.state.is_final():
                raise UserError(args.id, f"job is already {fr.state.name}", "only running or scheduled jobs cancel")
            client.set_flow_run_state(rid, Cancelling(message="cancelled with `tuneloop jobs cancel`"), force=True)
            return _show(_run_json(client.read_flow_run(rid)))
        if args.jobs_cmd == "events":
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[rid])))
            if not runs:
                raise UserError(args.id, "no such job", "list jobs with `tuneloop jobs list`")
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[rid])),
                                    sort=LogSort.TIMESTAMP_ASC, limit=args.limit)
            for lg in logs:
                print(f"{lg.timestamp:%Y-%m-%d %H:%M:%S} {lg.level:>2} {lg.message}")
            return 0
    raise AssertionError(args.jobs_cmd)


def add_parsers(sub) -> None:
    s = sub.add_parser("serve", help="serve the production version over an OpenAI-compatible API",
                       description="Blue/green slots; blue starts with --version, else the registry's "
                       "production alias, else champion, else the bare base. Admin routes need "
                       "TUNELOOP_ADMIN_TOKEN when it is set.")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--registry", help="registry folder or s3://BUCKET/PREFIX (default: the configured one)")
    s.add_argument("--base", help="base model for 'base' (default: the tiny local one)")
    s.add_argument("--version", help="version or alias for the blue slot at start")
    s.add_argument("--name", default="tuneloop", help="the served model name (default tuneloop)")
    s.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish requests on shutdown")
    s.add_argument("--allow-faults", action="store_true", help="enable fault injection (testing only)")
    s.add_argument("--keys", help="API keys file (sha256 of each key, its tenant and role): every route but "
                                  "/health then needs a key (default: $TUNELOOP_SERVE_KEYS; see docs/serving.md)")
    s.add_argument("--max-concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY,
                   help=f"generations running at once (default {DEFAULT_MAX_CONCURRENCY})")
    s.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help=f"requests waiting for a generation slot; beyond, 429 with Retry-After "
                        f"(default {DEFAULT_MAX_QUEUE})")
    s.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"sequences of one model decoded together (one forward per step for all); 1: one at a "
                        f"time (default {DEFAULT_MAX_BATCH})")
    s.add_argument("--engine", choices=("builtin", "vllm"), default=os.environ.get("TUNELOOP_SERVING_ENGINE", "builtin"),
                   help="builtin: models in this process; vllm: the slots are LoRA adapters loaded into the vLLM "
                        "server at --vllm-url (default $TUNELOOP_SERVING_ENGINE, else builtin; docs/serving.md)")
    s.add_argument("--vllm-url", default=os.environ.get("TUNELOOP_VLLM_URL"),
                   help="the vLLM server for --engine vllm (default $TUNELOOP_VLLM_URL)")
    s.add_argument("--vllm-key-env", default="VLLM_API_KEY", help="env var with vLLM's --api-key, if it has one")
    s.add_argument("--adapter-budget-mb", type=float, default=512.0,
                   help="memory for the slots' adapters on their shared base; the least recently used are "
                        "unloaded beyond it (default 512)")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("deploy", help="what a server serves: status, load, switch, rollback, promote")
    d.add_argument("--server", help="server URL (default: a promote --config's server, else $TUNELOOP_SERVER, "
                                    "else http://127.0.0.1:8000)")
    dd = d.add_subparsers(dest="deploy_cmd", required=True)
    dd.add_parser("status", help="each slot's version, state and role")
    dd.add_parser("rollback", help="end a canary, or switch back to the previous (warm) slot")
    ld = dd.add_parser("load", help="load a version into a slot (the idle one)")
    ld.add_argument("slot", choices=("blue", "green"))
    ld.add_argument("version")
    sw = dd.add_parser("switch", help="make a ready slot live")
    sw.add_argument("slot", choices=("blue", "green"))
    pr = dd.add_parser("promote", help="run the promote flow: validate, switch or canary, roll back on a breach")
    pr.add_argument("version", nargs="?", help="version or alias (default champion)")
    pr.add_argument("--mode", choices=("blue-green", "canary"))
    pr.add_argument("--smoke", help="JSONL chat rows to validate with (default: the version's eval rows)")
    pr.add_argument("--config", help="YAML file with a PromoteSpec")
    d.set_defaults(func=cmd_deploy)

    j = sub.add_parser("jobs", help="training jobs (Prefect flow runs): create, list, get, cancel, events")
    jj = j.add_subparsers(dest="jobs_cmd", required=True)
    c = jj.add_parser("create", help="start a run of a deployment (default retrain/retrain)")
    c.add_argument("--deployment", default=DEFAULT_DEPLOYMENT)
    c.add_argument("--param", action="append", metavar="KEY=VALUE")
    ls = jj.add_parser("list", help="recent jobs, newest first")
    ls.add_argument("--deployment", help="only this deployment's runs (flow/deployment)")
    ls.add_argument("--limit", type=int, default=20)
    for name, hlp in (("get", "a job's status, times and parameters"), ("cancel", "stop a job"),
                      ("events", "a job's log lines")):
        p = jj.add_parser(name, help=hlp)
        p.add_argument("id")
        if name == "events":
            p.add_argument("--limit", type=int, default=200)
    j.set_defaults(func=cmd_jobs)
