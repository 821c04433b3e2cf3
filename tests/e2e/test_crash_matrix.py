"""Crash anywhere: the flow-run process is SIGKILLed at each stage of `retrain` and `promote` (a crash point,
tuneloop.runtime.faults), on a real Prefect server and process worker. The worker marks the run Crashed, the shipped
`retry-crashed-runs` automation (deployments/automations.yaml) reschedules the same flow run, and the retry
completes. After every case: no duplicate or half-written registry version, aliases point at complete
versions, training resumed from its checkpoint, serving kept answering."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import ROOT
from e2e.procs import BIN, free_port, prefect_call, run_cli, start, stop, wait_healthy

pytestmark = pytest.mark.slow
RETRAIN_POINTS = ["validate", "mid-training", "mid-evaluation", "registry-written"]


class Stack:
    """A Prefect server, the cpu-pool with a process worker, the retrain and promote deployments, and the
    shipped automations."""

    def __init__(self, tmp: Path):
        self.tmp, self.port = tmp, free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        self.env |= {"PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": self.api,
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TUNELOOP_PROJECT_DIR": str(ROOT),
                     "PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_WORKER_QUERY_SECONDS": "1",
                     "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
        self.server = self.worker = None

    def __enter__(self):
        config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
        deps = [d for d in config["deployments"] if d["name"] in ("retrain", "promote")]
        for d in deps:
            d.pop("schedules", None), d.pop("triggers", None)
        config["deployments"] = deps
        self.prefect_file = self.tmp / "prefect.yaml"
        self.prefect_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.server_log, self.worker_log = self.tmp / "server.log", self.tmp / "worker.log"
        self.start_server()
        run_cli(["work-pool", "create", "cpu-pool", "--type", "process"], self.env, ROOT)
        run_cli(["--no-prompt", "deploy", "--all", "--prefect-file", str(self.prefect_file)], self.env, ROOT)
        run_cli(["automation", "create", "--from-file", str(ROOT / "deployments" / "automations.yaml")],
                self.env, ROOT)
        self.worker = start([str(BIN / "prefect"), "worker", "start", "--pool", "cpu-pool", "--type", "process"],
                            self.worker_log, self.env, ROOT)
        return self

    def start_server(self):
        server_env = {k: v for k, v in self.env.items() if k != "PREFECT_API_URL"}
        self.server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                             str(self.port)], self.server_log, server_env, self.tmp)
        wait_healthy(self.api, self.server, self.server_log)

    def kill_server(self):
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait(timeout=30)

    def __exit__(self, *exc):
        if self.worker is not None:
            stop(self.worker)
        if self.server is not None:
            stop(self.server)

    def run(self, deployment: str, spec: dict, env: dict) -> str:
        dep = prefect_call("GET", f"{self.api}/deployments/name/{deployment}").json()
        # the idempotency key makes a retried create (a 503 whose transaction did commit) one run, not two
        r = prefect_call("POST", f"{self.api}/deployments/{dep['id']}/create_flow_run",
                         json={"parameters": {"spec": spec}, "job_variables": {"env": env},
                               "idempotency_key": f"{deployment}-{os.urandom(8).hex()}"})
        r.raise_for_status()
        return r.json()["id"]

    def wait_final(self, run_id: str, timeout: float = 420) -> dict:
        run = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                run = prefect_call("GET", f"{self.api}/flow_runs/{run_id}").json()
            except TimeoutError:  # the server is down (a test restarts it): keep waiting
                continue
            if run["state_type"] in ("COMPLETED", "FAILED", "CANCELLED"):
                return run
            time.sleep(1)
        pytest.fail(f"flow run {run_id} not final in {timeout:.0f} s: {run['state_type']}\n"
                    f"{self.worker_log.read_text()[-5000:]}")

    def states(self, run_id: str) -> list[str]:
        r = prefect_call("GET", f"{self.api}/flow_run_states/", params={"flow_run_id": run_id})
        return [s["type"] for s in sorted(r.json(), key=lambda s: s["timestamp"])]

    def logs(self, run_id: str) -> list[str]:
        r = prefect_call("POST", f"{self.api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                        "limit": 200})
        return [lg["message"] for lg in r.json()]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base):
    with Stack(tmp_path_factory.mktemp("crash")) as s:
        yield s


def assert_registry_consistent(state: Path, expected_versions: int, tenant: str = "demo") -> dict:
    """`tenant`'s registry (the demo preset's tenant, unless named)."""
    from tuneloop.registry import Registry
    from tuneloop.registry.store import LocalStore

    reg = Registry(LocalStore(state / "registry" / "tenants" / tenant if tenant != "default" else state / "registry"))
    versions = reg.list()
    assert len(versions) == expected_versions, [v.id for v in versions]  # no duplicate, none lost
    for v in versions:
        assert reg.verify(v.id) == [], f"{v.id} is not whole"  # every listed file present, sha256 equal
    keys = [v.manifest["idempotency_key"] for v in versions if v.manifest.get("idempotency_key")]
    assert len(set(keys)) == len(keys), "the same adapter was registered twice"
    ids = {v.id for v in versions}
    assert all(vid in ids for vid in reg.aliases().values()), reg.aliases()  # aliases at complete versions
    return reg.aliases()


def test_retrain_killed_at_each_stage_completes_on_retry(stack, demo_files, tmp_path):
    state = tmp_path / "state"
    matrix = []
    for i, point in enumerate(RETRAIN_POINTS):
        mark = tmp_path / f"crashed-{point}"
        spec = {"data": str(demo_files["feedback"]), "eval_data": str(demo_files["heldout"]), "tenant": "demo",
                "training": {"epochs": 1, "max_steps": 4, "save_every": 2, "batch_size": 8,
                             "gradient_accumulation": 1, "rank": 4, "alpha": 8, "seed": i},
                "evaluation": {"max_items": 8, "max_new_tokens": 4}}
        if point == "registry-written":  # the demo preset's training: good enough to be promoted
            preset = yaml.safe_load((ROOT / "src" / "tuneloop" / "assets" / "demo-preset.yaml").read_text())
            spec |= {"training": preset["training"] | {"max_steps": 60, "save_every": 30},
                     "evaluation": {"max_items": 40, "max_new_tokens": 8}}
        run_id = stack.run("retrain/retrain", spec, {"TUNELOOP_STATE_DIR": str(state), "TUNELOOP_CRASH_AT": point,
                                                      "TUNELOOP_CRASH_MARK": str(mark)})
        run = stack.wait_final(run_id)
        states = stack.states(run_id)
        assert mark.exists(), f"the crash point {point} was never reached: {states}"
        assert run["state_type"] == "COMPLETED", f"{point}: {states}\n{stack.worker_log.read_text()[-5000:]}"
        assert "CRASHED" in states and run["run_count"] >= 2, states  # killed, rescheduled, run again
        aliases = assert_registry_consistent(state, expected_versions=i + 1)
        if point == "registry-written":  # the retry reused the version the killed run wrote, then promoted it
            assert aliases.get("champion") == f"v{i + 1}", (aliases, stack.logs(run_id)[-5:])
        logs = stack.logs(run_id)
        if point == "mid-training":
            assert any(m.startswith("resuming from step-") for m in logs), logs  # from the checkpoint
        matrix.append((point, states, aliases))
    print("\ncrash matrix (retrain):")
    for point, states, aliases in matrix:
        print(f"  {point:18} {' -> '.join(states)}  aliases {aliases}")


def test_promote_killed_after_the_switch_finishes_on_retry_while_serving_answers(
        stack, make_server, registry, state_dir, demo_files, tmp_path):
    srv = make_server("v1")
    registry.set_alias("production", "v1")
    failures, answered = [], [0]
    stop_traffic = threading.Event()

    def traffic():
        while not stop_traffic.is_set():
            try:
                r = httpx.post(srv.url + "/v1/chat/completions", timeout=30, json={
                    "model": "tuneloop", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]})
                if r.status_code != 200:
                    failures.append(r.status_code)
                answered[0] += 1
            except httpx.HTTPError as e:
                failures.append(repr(e))
            time.sleep(0.05)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    mark = tmp_path / "crashed-promote"
    spec = {"server": srv.url, "version": "v2", "mode": "blue-green", "smoke": str(demo_files["heldout"]),
            "smoke_items": 12, "probe_items": 4, "watch_seconds": 1.0}
    try:
        run_id = stack.run("promote/promote", spec, {"TUNELOOP_STATE_DIR": str(state_dir),
                                                     "TUNELOOP_CRASH_AT": "promote-switched",
                                                     "TUNELOOP_CRASH_MARK": str(mark)})
        run = stack.wait_final(run_id)
    finally:
        stop_traffic.set()
        t.join(30)
    states = stack.states(run_id)
    assert mark.exists() and "CRASHED" in states and run["state_type"] == "COMPLETED", states
    status = httpx.get(srv.url + "/admin/status").json()
    assert status["slots"][status["live"]]["version"] == "v2"
    aliases = assert_registry_consistent(state_dir, expected_versions=3, tenant="default")
    assert aliases["production"] == "v2"  # the retry finished the alias move the killed run never made
    assert not failures and answered[0] > 10, failures  # serving kept answering through crash and retry
    actions = [(e["action"], e["version"]) for e in registry.audit_log() if e["action"] in ("switch", "alias")]
    assert ("switch", "v2") in actions and ("alias", "v2") in actions
    print(f"\ncrash matrix (promote): promote-switched {' -> '.join(states)}; {answered[0]} requests, 0 failed")


def flow_run_processes(run_id: str) -> list[int]:
    """PIDs of the processes executing a flow run (the runner gives each the run's id in its environment)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in (d / "environ").read_bytes().split(b"\0"):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def start_retrain_until_checkpointed(stack, spec: dict, state: Path) -> str:
    """Start a retrain deployment run and return its id once training has a checkpoint on disk."""
    run_id = stack.run("retrain/retrain", spec, {"TUNELOOP_STATE_DIR": str(state)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (state / "runs").exists() and list((state / "runs").glob("run-*/checkpoints/step-*")):
            return run_id
        time.sleep(0.5)
    pytest.fail(f"training never checkpointed\n{stack.worker_log.read_text()[-4000:]}")


def test_a_prefect_server_restart_mid_run_ends_crashed_and_the_automatic_retry_completes(
        stack, demo_files, tmp_path):
    """The Prefect server is killed while a retrain trains, and the worker's node with it (worker and flow-run
    process SIGKILLed: nobody is left to report the run). The server comes back on its database, then a
    worker. The run, still Running in the database, stops sending heartbeats: crash-zombie-runs marks it
    Crashed, retry-zombie-runs reschedules it, and the retry resumes from the
    checkpoint and completes, with one consistent registry version."""
    state = tmp_path / "state"
    spec = {"data": str(demo_files["feedback"]), "eval_data": str(demo_files["heldout"]), "tenant": "demo",
            "training": {"epochs": 1, "max_steps": 60, "save_every": 2, "batch_size": 8,
                         "gradient_accumulation": 1, "rank": 4, "alpha": 8, "seed": 99},
            "evaluation": {"max_items": 8, "max_new_tokens": 4}}
    run_id = start_retrain_until_checkpointed(stack, spec, state)
    victims = flow_run_processes(run_id)
    assert victims, "the flow run's process was not found"
    stack.kill_server()
    stop(stack.worker, grace=0)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(10)
    stack.start_server()
    time.sleep(5)
    stack.worker = start([str(BIN / "prefect"), "worker", "start", "--pool", "cpu-pool", "--type", "process"],
                         stack.worker_log, stack.env, ROOT)
    run = stack.wait_final(run_id, timeout=600)
    states = stack.states(run_id)
    assert run["state_type"] == "COMPLETED", f"{states}\n{stack.worker_log.read_text()[-5000:]}"
    assert "CRASHED" in states and run["run_count"] >= 2, states
    assert any(m.startswith("resuming from step-") for m in stack.logs(run_id))
    assert_registry_consistent(state, expected_versions=1)
    # After a restart the server holds back this run's state events for up to 15 min (causal ordering), so
    # the zombie automations do not see the retry's Completed either: 90-100 s after the retry's last
    # heartbeat they try to crash and reschedule it. Prefect must refuse both (a Completed run with a persisted
    # result). Wait until both have acted on this run (or 130 s after it ended), then look.
    ended = datetime.fromisoformat(run["state"]["timestamp"]).timestamp()  # no heartbeat after this
    zombie = {a["id"]: a["name"] for a in prefect_call("POST", f"{stack.api}/automations/filter", json={}).json()
              if a["name"] in ("crash-zombie-runs", "retry-zombie-runs")}
    acted: set[str] = set()
    while time.time() < ended + 130 and len(acted) < 2:
        time.sleep(3)
        events = prefect_call("POST", f"{stack.api}/events/filter", json={"filter": {
            "event": {"prefix": ["prefect.automation.action."]}, "occurred": {"since": run["state"]["timestamp"]}},
            "limit": 50}).json()["events"]
        for e in events:
            aid = e["resource"]["prefect.resource.id"].removeprefix("prefect.automation.")
            targets = [r["prefect.resource.id"] for r in e["related"] if r.get("prefect.resource.role") == "target"]
            if aid in zombie and e["event"] != "prefect.automation.action.triggered" and \
                    f"prefect.flow-run.{run_id}" in targets:
                acted.add(zombie[aid])
    after = prefect_call("GET", f"{stack.api}/flow_runs/{run_id}").json()
    assert (after["state_type"], after["run_count"]) == ("COMPLETED", run["run_count"]), stack.states(run_id)
    print(f"\nserver restart mid-run: {' -> '.join(states)}; still completed after {sorted(acted) or 'no'} automation actions")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except (OSError, IndexError):
        return False


def test_an_attempt_superseded_by_a_reschedule_stops_and_the_newer_one_finishes_the_run(stack, demo_files, tmp_path):
    """A retry automation acting on a stale view can reschedule a run whose process is in fact alive (a server
    outage longer than the zombie window). Here the run is rescheduled by hand while it trains: the worker
    starts a second attempt, the first sees it (tasks.start_attempt's watch) and stops its process without a
    crash report, the second waits for the run folder, resumes from the checkpoint and completes: one
    registry version, and never two processes training at once."""
    state = tmp_path / "state"
    spec = {"data": str(demo_files["feedback"]), "eval_data": str(demo_files["heldout"]), "tenant": "demo",
            "training": {"epochs": 20, "max_steps": 800, "save_every": 20, "batch_size": 8,
                         "gradient_accumulation": 1, "rank": 4, "alpha": 8, "seed": 7,
                         "early_stopping_patience": None},  # ~30 s: long enough to be superseded while it trains
            "evaluation": {"max_items": 8, "max_new_tokens": 4}}
    run_id = start_retrain_until_checkpointed(stack, spec, state)
    first = flow_run_processes(run_id)
    assert first, "the flow run's process was not found"
    r = prefect_call("POST", f"{stack.api}/flow_runs/{run_id}/set_state", json={
        "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "rescheduled by hand while it trains"},
        "force": True})
    assert r.status_code < 300, r.text
    run = stack.wait_final(run_id, timeout=420)
    states = stack.states(run_id)
    assert run["state_type"] == "COMPLETED" and run["run_count"] == 2, states
    assert "CRASHED" not in states, states  # the first attempt stopped itself; no crash was reported
    gone = time.monotonic() + 30  # it asks every 10 s
    while [pid for pid in first if alive(pid)] and time.monotonic() < gone:
        time.sleep(0.5)
    assert not [pid for pid in first if alive(pid)], "the first attempt's process is still running"
    logs = stack.logs(run_id)
    assert any("was superseded by attempt 2" in m for m in logs), logs[-10:]
    resumed = [m for m in logs if m.startswith("resuming from step-")]
    assert resumed and not resumed[0].endswith("(step 800/800)"), resumed  # it was stopped while it trained
    assert_registry_consistent(state, expected_versions=1)
    print(f"\nsuperseded attempt: {resumed[0]}; {' -> '.join(states)}")
