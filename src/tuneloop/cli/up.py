"""`tuneloop up`: the whole service on one machine, in the foreground; `tuneloop keys create`.

`up` starts, in order: a local Prefect server on SQLite under the home (unless PREFECT_API_URL names one),
the `cpu-pool` work pool, the shipped deployments and automations, a process worker, and the HTTP API
(service/api.py). Jobs whose flow runs were in flight when the service last stopped get a new run, which
resumes from their checkpoints. SIGINT or SIGTERM stops the API, then the worker and the server, by PID
(each in its own process group, escalated to SIGKILL: a worker may ignore SIGTERM once its server is gone).

This is the entry layer: the only part of the service that talks to Prefect.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from importlib import resources
from pathlib import Path
from uuid import UUID

import yaml

from tuneloop.errors import TuneloopError, UserError
from tuneloop.service.home import Home
from tuneloop.service.jobs import RunView
from tuneloop.serving.engine import DEFAULT_MAX_BATCH

# Prefect's CLI through this interpreter: the `prefect` script may live elsewhere than sys.executable's folder
# (`pip install --user`, a venv lending its packages) or not at all; this is the prefect tuneloop imports.
PREFECT = [sys.executable, "-m", "prefect"]
RETRAIN = "retrain/retrain"
PROMOTE = "promote/promote"
QUERY_SECONDS = "2"  # how often the worker asks for work (Prefect's default 10 s is most of a job's wait in queue)
HEARTBEAT_ENV = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}  # as the shipped retrain deployments send


class Unavailable(TuneloopError):
    """Prefect's API did not answer: a 503, the client may retry."""

    http_status = 503


@contextmanager
def _prefect_errors():
    import httpx

    try:
        yield
    except (httpx.HTTPError, OSError, RuntimeError) as e:
        raise Unavailable(f"the orchestrator (Prefect) did not answer ({type(e).__name__}); nothing was changed. "
                          "Fix: retry in a moment; if it persists, check `tuneloop up`'s logs/prefect-server.log") \
            from None


class PrefectRuns:
    """A job's flow runs on Prefect: runs of the retrain deployment; a run finds its tenant's registry by the
    spec's tenant and TUNELOOP_TENANT_REGISTRY."""

    def __init__(self, home: Home, deployment: str = RETRAIN):
        self.home, self.deployment = home, deployment

    def submit(self, job_id: str, tenant: str, spec: dict) -> str:
        from prefect.deployments import run_deployment

        env = HEARTBEAT_ENV | {"TUNELOOP_TENANT_REGISTRY": self.home.tenant_registry}
        with _prefect_errors():
            fr = run_deployment(self.deployment, parameters={"spec": spec}, timeout=0, flow_run_name=job_id,
                                tags=["tuneloop-service", f"tenant:{tenant}", f"job:{job_id}"],
                                job_variables={"env": env})
        return str(fr.id)

    def promote(self, promotion_id: str, tenant: str, spec: dict, token: str) -> str:
        """A run of the promote deployment against the service's own slots; `token` is the promotion's key."""
        from prefect.deployments import run_deployment

        env = {"TUNELOOP_TENANT_REGISTRY": self.home.tenant_registry, spec["admin_token_env"]: token}
        with _prefect_errors():
            fr = run_deployment(PROMOTE, parameters={"spec": spec}, timeout=0, flow_run_name=promotion_id,
                                tags=["tuneloop-service", f"tenant:{tenant}", f"promotion:{promotion_id}"],
                                job_variables={"env": env})
        return str(fr.id)

    def result(self, run_id: str) -> dict | None:
        """A completed run's persisted result (the promote flow's outcome), None when it cannot be read."""
        from prefect.client.orchestration import get_client

        try:
            with _prefect_errors(), get_client(sync_client=True) as client:
                state = client.read_flow_run(UUID(run_id)).state
            value = state.result(raise_on_failure=False) if state is not None else None
        except Exception:  # noqa: BLE001 - a result that cannot be read reads as none; the job says so
            return None
        return value if isinstance(value, dict) else None

    def view(self, run_id: str) -> RunView | None:
        """The run's state; None when Prefect does not know the run or does not answer (the job then reads
        as last known)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.exceptions import ObjectNotFound

        try:
            with _prefect_errors(), get_client(sync_client=True) as client:
                try:
                    fr = client.read_flow_run(UUID(run_id))
                except ObjectNotFound:
                    return None
                st = fr.state
                if st is None:
                    return RunView("SCHEDULED")
                tasks = []
                if st.type.value == "RUNNING":
                    tasks = [t.name for t in client.read_task_runs(flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=[fr.id]))) if t.start_time is not None]
                return RunView(st.type.value, st.name or "", st.message, tasks)
        except Unavailable:
            return None

    def stop(self, run_id: str, message: str) -> None:
        """Ask the worker to stop the run (it kills the run's process; checkpoints stay)."""
        self._set(run_id, "cancelling", message)

    def abandon(self, run_id: str, message: str) -> None:
        """Mark a run whose process is gone as cancelled, so no retry automation starts it again."""
        self._set(run_id, "cancelled", message)

    def _set(self, run_id: str, kind: str, message: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled, Cancelling

        from prefect.exceptions import ObjectNotFound

        with _prefect_errors(), get_client(sync_client=True) as client:
            try:
                fr = client.read_flow_run(UUID(run_id))
            except ObjectNotFound:
                raise LookupError(run_id) from None
            if fr.state is not None and fr.state.type.value in ("COMPLETED", "FAILED", "CANCELLED"):
                return  # (a CRASHED run is cancelled too: else the retry automation would start it again)
            state = Cancelling(message=message) if kind == "cancelling" else Cancelled(message=message)
            client.set_flow_run_state(UUID(run_id), state, force=True)

    def emit_negative(self, item, reason: str) -> None:
        """The event collect-feedback sends for a negative item: the retrain trigger counts them."""
        from prefect.events import emit_event

        from tuneloop.tasks.feedback import NEGATIVE_EVENT

        emit_event(event=NEGATIVE_EVENT, resource={"prefect.resource.id": f"tuneloop.feedback.{item.id}",
                                                   "tuneloop.tenant": item.tenant, "tuneloop.source": item.source},
                   payload={"reason": reason, "score": item.score, "rating": item.rating})

    def health(self, worker: subprocess.Popen | None) -> dict:
        import httpx

        from prefect.settings import PREFECT_API_URL

        api = PREFECT_API_URL.value()
        try:
            ok = httpx.get(f"{api}/health", timeout=3).status_code == 200
            prefect = {"state": "ok" if ok else "down", "url": api}
        except httpx.HTTPError as e:
            prefect = {"state": "down", "url": api, "error": type(e).__name__}
        w = {"state": "ok" if worker is not None and worker.poll() is None else "down", "pool": "cpu-pool"}
        if worker is not None:
            w["pid"] = worker.pid
        return {"prefect": prefect, "worker": w}


# -- processes -----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same_port(home: Home) -> int:
    """The local Prefect server's port of the last start on this home when it is free (its UI stays at one
    address), else a free one; remembered for the next start."""
    saved = home.prefect / "port"
    if saved.exists():
        port = int(saved.read_text())
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass
    port = _free_port()
    home.prefect.mkdir(parents=True, exist_ok=True)
    saved.write_text(str(port))
    return port


def _start(args: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the process's group and to every process it started (Prefect's worker starts each flow run
    in a session of its own: stopping the worker alone leaves a job training), then SIGKILL to what is left.
    A stopped job's run is resumed from its checkpoint at the next start."""
    import psutil

    try:
        started = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    for p in started:
        with suppress(psutil.Error):
            p.terminate()
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    _, alive = psutil.wait_procs(started, timeout=5)
    for p in alive:
        with suppress(psutil.Error):
            p.kill()
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _wait_healthy(api: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError("prefect server", f"exited with {proc.returncode} at start", f"read {log}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise UserError("prefect server", f"not healthy after {timeout:.0f} s", f"read {log}")


def _prefect(args: list[str], env: dict, log: Path, cwd: Path, timeout: float = 300) -> None:
    with open(log, "ab") as fh:
        proc = subprocess.run([*PREFECT, *args], env=env, cwd=cwd, stdout=fh,
                              stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        raise UserError(f"prefect {' '.join(args[:2])}", f"failed with exit code {proc.returncode}",
                        f"read {log}")


def _asset(name: str) -> str:
    """The text of a deployment file shipped in the package (tuneloop/assets/NAME), so an installed wheel has
    them: copies of the checkout's prefect.yaml and deployments/automations.yaml, kept byte-equal by
    tests/unit/test_packaged_deployments.py."""
    source = resources.files("tuneloop").joinpath("assets", name)
    if not source.is_file():
        raise UserError(f"tuneloop/assets/{name}", "tuneloop up applies the deployment files shipped in the "
                        "package, and this installation has none", "reinstall tuneloop (pip install tuneloop, or "
                        "pip install -e . from a checkout)")
    return source.read_text(encoding="utf-8")


_SCRIPT_ENTRYPOINT = re.compile(r"src/((?:\w+/)*\w+)\.py:(\w+)")


def _module_entrypoint(deployment: str, entrypoint: str) -> str:
    """`src/tuneloop/flows/retrain.py:retrain` as the module path `tuneloop.flows.retrain.retrain`: the
    worker imports the flow from the installed package (a checkout's or a wheel's), so no source tree is
    needed beside it."""
    m = _SCRIPT_ENTRYPOINT.fullmatch(entrypoint)
    parts = m.group(1).split("/") if m else []
    if not parts or parts[0] != "tuneloop":
        raise UserError(f"prefect.yaml deployment {deployment!r}: entrypoint {entrypoint!r}",
                        "tuneloop up runs flows from the installed package, so an entrypoint must be "
                        "src/tuneloop/<module path>.py:<flow function>",
                        "point the entrypoint at a flow under src/tuneloop/ (in prefect.yaml and its copy "
                        "src/tuneloop/assets/prefect.yaml)")
    if not resources.files("tuneloop").joinpath(*parts[1:-1], f"{parts[-1]}.py").is_file():
        raise UserError(f"prefect.yaml deployment {deployment!r}: entrypoint {entrypoint!r}",
                        f"this installation of tuneloop has no module {'.'.join(parts)}",
                        "point the entrypoint at a flow module that exists, or reinstall tuneloop")
    return ".".join(parts) + "." + m.group(2)


def _setting(name: str, unit: str, least: int, fix: str, off: bool = False) -> int:
    """A whole-number setting from the environment: 0 when unset (or, with `off`, set to 0); below `least`
    (or not a whole number) stops `up` naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or (int(raw) < least and not (off and int(raw) == 0)):
        raise UserError(f"{name}={raw!r}", f"is a whole number of {unit}, at least {least}" + (
            " (0: off)" if off else ""), fix)
    return int(raw)


def negatives_threshold() -> int:
    """TUNELOOP_NEGATIVES_THRESHOLD: how many negative feedback events of one tenant within the window start a
    retrain for that tenant (0: the shipped prefect.yaml's, 100)."""
    return _setting("TUNELOOP_NEGATIVES_THRESHOLD", "events", 1,
                    "e.g. TUNELOOP_NEGATIVES_THRESHOLD=100, or unset it for the shipped default")


def negatives_window() -> int:
    """TUNELOOP_NEGATIVES_WINDOW: the seconds within which a tenant's negatives are counted toward the threshold
    (0: the shipped prefect.yaml's, a week). Prefect's reactive trigger fires once the count is reached and
    then counts afresh from the end of that window, so a tenant's negatives start at most one retrain per
    window."""
    return _setting("TUNELOOP_NEGATIVES_WINDOW", "seconds", 60,
                    "e.g. TUNELOOP_NEGATIVES_WINDOW=86400 (a day), or unset it for the shipped week")


def collect_every() -> int:
    """TUNELOOP_COLLECT_EVERY: seconds between collect-feedback runs that read the home's drop file
    (`<home>/incoming/feedback.jsonl`); unset or 0, feedback arrives over POST /v1/feedback only."""
    return _setting("TUNELOOP_COLLECT_EVERY", "seconds", 5,
                    "e.g. TUNELOOP_COLLECT_EVERY=300, or unset it to take feedback over the API only", off=True)


def _deployment_files(home: Home, workdir: Path, threshold: int = 0, every: int = 0,
                      window: int = 0) -> tuple[Path, Path]:
    """The shipped prefect.yaml and automations.yaml as `up` applies them, written into the home. In
    prefect.yaml: the triggers kept (each tenant's negatives start that tenant's retrain, `threshold` of them
    within `window` seconds when not 0; a new champion starts its promotion onto this service's slots),
    schedules left out (they read feedback files and run drift checks this service does not have) but
    collect-feedback's when `every`
    is not 0 (it then reads the home's drop file every `every` seconds), entrypoints as module paths and
    flow runs working in `workdir` (where `up` was started: a relative path means the same folder to `up`
    and to its flow runs), so the deployments run from an installed wheel as from a checkout."""
    config = yaml.safe_load(_asset("prefect.yaml"))
    config["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(workdir)}}]
    for d in config["deployments"]:
        d.pop("schedules", None)
        d.pop("pull", None)  # (an image's folder, retrain-gpu's: a module entrypoint needs only the package)
        if d["name"] == "collect-feedback" and every:  # the drop file, every `every` seconds
            d["schedules"] = [{"interval": every}]
            d["parameters"]["spec"]["sources"] = [{"kind": "file", "name": "incoming", "path": str(home.incoming),
                                                   "missing_ok": True}]
        for trigger in d.get("triggers", []):
            if "tuneloop.feedback.negative" in trigger.get("expect", []):
                trigger.update({"threshold": threshold} if threshold else {})
                trigger.update({"within": window} if window else {})
        d["entrypoint"] = _module_entrypoint(d["name"], d["entrypoint"])
    deployments, automations = home.root / "prefect.yaml", home.root / "automations.yaml"
    deployments.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    automations.write_text(_asset("automations.yaml"), encoding="utf-8")
    return deployments, automations


def _apply(deployments: Path, automations: Path, env: dict, log: Path, cwd: Path) -> None:
    """Work pool, deployments and automations, each made idempotent (a restart applies them again)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    names = [a["name"] for a in yaml.safe_load(automations.read_text(encoding="utf-8"))["automations"]]
    with get_client(sync_client=True) as client:
        for pool in ("cpu-pool", "gpu-pool"):  # gpu-pool: the GPU deployments' pool; a GPU host's worker serves it
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:
                pass
        for a in client.read_automations():
            if a.name in names:
                client.delete_automation(a.id)
    _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", str(deployments)], env, log, cwd)
    _prefect(["automation", "create", "--from-file", str(automations)], env, log, cwd)


def _applied(home: Home, fingerprint: str) -> bool:
    """Whether this Prefect already has what `_apply` would apply (a restart on the same home): the stamp
    written after the last apply names the same files, and this Prefect has the retrain deployment."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    stamp = home.prefect / ".applied"
    if not stamp.exists() or stamp.read_text() != fingerprint:
        return False
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(RETRAIN)
        except ObjectNotFound:
            return False
    return True


def _fingerprint(*files: Path) -> str:
    """The files as applied (their working directory and module entrypoints included)."""
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def cmd_up(args) -> int:
    import uvicorn

    from tuneloop.service.api import create_service_app
    from tuneloop.service.promotions import TOKEN_ENV, Tokens
    from tuneloop.service.service import Service
    from tuneloop.serving.adapters import AdapterPool

    home = Home.at(args.home)
    home.root.mkdir(parents=True, exist_ok=True)
    logs = home.root / "logs"
    lock = _only_one(home)  # held until this process exits
    _port_free(args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what was started, even while starting
    workdir = Path.cwd()  # the flow runs' working directory, as `up`'s own
    every = collect_every()
    # a bad file or setting stops `up` here
    files = _deployment_files(home, workdir, negatives_threshold(), every, negatives_window())
    fingerprint = _fingerprint(*files)
    url = f"http://{_loopback(args.host)}:{args.port}"  # where flow runs reach this service
    tokens = Tokens()
    # the loop key: promote runs started by the champion.changed trigger present it, naming their tenant
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")} | home.env() | {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TUNELOOP_SERVER": os.environ.get("TUNELOOP_SERVER") or url,
        TOKEN_ENV: tokens.make_loop()}
    os.environ.update(home.env())
    started: list[subprocess.Popen] = []
    worker = None
    t0 = time.perf_counter()
    try:
        api = os.environ.get("PREFECT_API_URL")
        if not api:
            port = args.prefect_port or _same_port(home)
            api = f"http://127.0.0.1:{port}/api"
            log = logs / "prefect-server.log"
            print(f"starting Prefect on {api} (SQLite under {home.prefect}; log {log})", flush=True)
            started.append(_start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                                   str(port)], log, env, home.root))
            _wait_healthy(api, started[-1], log)
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"] = api
        if _applied(home, fingerprint):
            print("the work pools, deployments and automations are as applied before", flush=True)
        else:
            print("applying the work pools, deployments and automations", flush=True)
            _apply(*files, env, logs / "deploy.log", workdir)
            (home.prefect / ".applied").write_text(fingerprint)
        worker = _start([*PREFECT, "worker", "start", "--pool", "cpu-pool", "--type", "process"],
                        logs / "worker.log", env | {"PREFECT_WORKER_QUERY_SECONDS": QUERY_SECONDS}, workdir)
        started.append(worker)
        runs = PrefectRuns(home)
        service = Service(home, runs, tokens=tokens)
        service.url = url  # where the promote flow reaches the slots
        for job in service.resume_orphans():
            print(f"resuming {job}: its run was in flight when the service stopped", flush=True)
        pool = AdapterPool(budget_bytes=int(args.adapter_budget_mb * 2**20), max_batch=args.max_batch)
        app = create_service_app(service, pool, health=lambda: runs.health(worker))
        if every:
            print(f"collecting feedback appended to {home.incoming} every {every} s", flush=True)
        print(f"tuneloop is up in {time.perf_counter() - t0:.0f} s: http://{args.host}:{args.port}/v1 "
              f"(home {home.root}; keys: tuneloop keys create --tenant NAME --home {args.home})", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=10)
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not leave the children behind
            signal.signal(sig, signal.SIG_IGN)
        for proc in reversed(started):
            _stop(proc)
        lock.close()
        print("tuneloop stopped", flush=True)
    return 0


def _only_one(home: Home):
    """One `tuneloop up` per home: a second would start a second Prefect on the same database and take the
    first one's runs for orphans."""
    import fcntl

    fh = open(home.root / ".up.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        raise UserError(f"--home {home.root}", f"another tuneloop up runs on this home (pid {fh.read().strip()})",
                        "stop it first, or give another --home") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def _loopback(host: str) -> str:
    """An address of this machine for `host` as `--host` gave it (a wildcard listens on loopback too)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"--host {host} --port {port}", f"cannot listen there ({e.strerror})",
                            "give a free --port, or stop what listens on it") from None


def cmd_keys(args) -> int:
    """The key alone on stdout (`KEY=$(tuneloop keys create ...)`), the note on it on stderr. The key is
    stored only once it has been written to stdout: a closed stdout stores nothing and says so."""
    from tuneloop.serving.keys import add_key

    home = Home.at(args.home)
    closed = UserError("stdout", "it was closed before the key could be written, so no key was stored",
                       "run tuneloop keys create again with its output read, e.g. KEY=$(tuneloop keys create ...)")

    def show(key: str) -> None:
        if sys.stdout is None:  # started with stdout closed
            raise closed
        try:
            sys.stdout.write(key + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # the reader is gone, or stdout was closed in this process
            with suppress(OSError, ValueError):  # else Python fails again flushing it at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise closed from None

    add_key(home.keys_file, args.tenant, args.role, args.name, show=show)
    print(f"(a {args.role} key of tenant {args.tenant}; only its sha256 is stored, in {home.keys_file}: "
          "keep the key now, it cannot be shown again)", file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    u = sub.add_parser("up", help="start the service: Prefect, a worker, the deployments and the OpenAI-compatible "
                                  "API, in the foreground")
    u.add_argument("--home", default=".tuneloop", help="the state folder (default .tuneloop)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=8000)
    u.add_argument("--prefect-port", type=int, help="port of the local Prefect server (default: a free one)")
    u.add_argument("--adapter-budget-mb", type=float, default=512.0,
                   help="memory for loaded adapters; the least recently used are unloaded beyond it (default 512)")
    u.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"sequences of one base decoded together, whatever their adapters; 1: one at a time "
                        f"(default {DEFAULT_MAX_BATCH})")
    u.set_defaults(func=cmd_up)
    k = sub.add_parser("keys", help="API keys of the service").add_subparsers(dest="keys_cmd", required=True)
    c = k.add_parser("create", help="make a key; it is printed once, alone on stdout (a note on it goes to "
                                  "stderr)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--role", default="user", choices=("user", "admin"))
    c.add_argument("--name", help="a label for the key (default TENANT-ROLE-N)")
    c.add_argument("--home", default=".tuneloop")
    c.set_defaults(func=cmd_keys)
