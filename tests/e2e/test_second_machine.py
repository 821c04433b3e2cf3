"""A second machine, simulated: machines that share only the Prefect API and an S3 bucket (moto server).

Machine A (this test process) collects a tenant's feedback into its feedback store, shared through
TUNELOOP_STATE_STORE. Worker B (its own state folder) runs the shipped `retrain` deployment for that tenant:
it builds the dataset from the shared feedback, trains, and is SIGKILLed mid-training. The run is put back to
Scheduled (what the retry-crashed-runs automation does; its firing is tested in test_crash_matrix.py) and
worker C (another empty state folder) takes it: it finds the run's pinned dataset and its checkpoint in the
bucket, resumes, and registers the adapter in the tenant's S3 registry. A worker on machine A, which never saw
the dataset or the adapter, then runs the shipped `promote` deployment: it finds the version in the registry
and its smoke set in the bucket, and the live server switches to it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, Server
from e2e.procs import BIN, free_port, prefect_call, run_cli, start, stop, wait_healthy

pytestmark = pytest.mark.slow
TENANT = "acme"


class Machines:
    """A Prefect server with the retrain and promote deployments, and workers started as "machines"."""

    def __init__(self, tmp: Path, bucket: str):
        self.tmp, self.port = tmp, free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "TUNELOOP_STATE"))}
        self.env |= {"PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": self.api,
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TUNELOOP_PROJECT_DIR": str(ROOT),
                     "PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_WORKER_QUERY_SECONDS": "1",
                     "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                     "TUNELOOP_STATE_STORE": f"s3://{bucket}/state",
                     "TUNELOOP_TENANT_REGISTRY": f"s3://{bucket}/registries/{{tenant}}"}
        self.server, self.workers = None, {}

    def __enter__(self):
        config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
        config["deployments"] = [d for d in config["deployments"] if d["name"] in ("retrain", "promote")]
        for d in config["deployments"]:
            d.pop("schedules", None), d.pop("triggers", None)
        prefect_file = self.tmp / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(config, sort_keys=False))
        log = self.tmp / "server.log"
        self.server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                             str(self.port)], log, {k: v for k, v in self.env.items() if k != "PREFECT_API_URL"},
                            self.tmp)
        wait_healthy(self.api, self.server, log)
        run_cli(["work-pool", "create", "cpu-pool", "--type", "process"], self.env, ROOT)
        run_cli(["--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)], self.env, ROOT)
        return self

    def __exit__(self, *exc):
        for w in self.workers.values():
            stop(w)
        if self.server is not None:
            stop(self.server)

    def state(self, machine: str) -> Path:
        return self.tmp / f"machine-{machine}"

    def start_worker(self, machine: str, **env) -> None:
        self.workers[machine] = start(
            [str(BIN / "prefect"), "worker", "start", "--pool", "cpu-pool", "--type", "process"],
            self.tmp / f"worker-{machine}.log", self.env | {"TUNELOOP_STATE_DIR": str(self.state(machine))} | env,
            ROOT)

    def stop_worker(self, machine: str) -> None:
        stop(self.workers.pop(machine))

    def run(self, deployment: str, parameters: dict) -> str:
        dep = prefect_call("GET", f"{self.api}/deployments/name/{deployment}").json()
        r = prefect_call("POST", f"{self.api}/deployments/{dep['id']}/create_flow_run",
                         json={"parameters": parameters, "idempotency_key": os.urandom(8).hex()})
        r.raise_for_status()
        return r.json()["id"]

    def wait(self, run_id: str, states: tuple[str, ...], timeout: float = 300) -> dict:
        deadline, run = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            run = prefect_call("GET", f"{self.api}/flow_runs/{run_id}").json()
            if run["state_type"] in states:
                return run
            time.sleep(1)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.tmp.glob("worker-*.log"))
        pytest.fail(f"flow run {run_id} not in {states} after {timeout:.0f} s: {run.get('state_type')}\n{logs}")

    def history(self, run_id: str) -> list[str]:
        r = prefect_call("GET", f"{self.api}/flow_run_states/", params={"flow_run_id": run_id})
        return [s["name"] for s in sorted(r.json(), key=lambda s: s["timestamp"])]

    def logs(self, run_id: str) -> list[str]:
        r = prefect_call("POST", f"{self.api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                                   "limit": 200})
        return [lg["message"] for lg in r.json()]


def test_a_retrain_moves_between_machines_through_the_bucket_and_the_promote_finds_its_adapter(
        tmp_path, s3_bucket, tiny_base, demo_files):
    import httpx

    from tuneloop.feedback.collect import collect
    from tuneloop.feedback.sources import make_source
    from tuneloop.feedback.store import FeedbackStore
    from tuneloop.registry import open_registry
    from tuneloop.runtime.shared import shared_state
    from tuneloop.serving.app import Loader, create_app
    from tuneloop.serving.slots import Router
    from tuneloop.settings import Settings
    from tuneloop.specs import SourceSpec

    with Machines(tmp_path, s3_bucket) as m:
        # machine A: the tenant's feedback arrives (the file source here; the service's route writes the same)
        a = shared_state(Settings(state_dir=m.state("A"), state_store=m.env["TUNELOOP_STATE_STORE"]))
        rows = [json.loads(x) | {"tenant": TENANT} for x in demo_files["feedback"].read_text().splitlines()]
        incoming = tmp_path / "incoming.jsonl"
        incoming.write_text("".join(json.dumps(r) + "\n" for r in rows))
        got = collect(make_source(SourceSpec(kind="file", path=incoming)), FeedbackStore(m.state("A") / "feedback", a))
        assert len(got.new) >= 100, got.errors[:3]

        preset = yaml.safe_load((ROOT / "src" / "tuneloop" / "assets" / "demo-preset.yaml").read_text())
        spec = {"tenant": TENANT, "training": preset["training"] | {"max_steps": 60, "save_every": 15},
                "evaluation": {"max_items": 24, "max_new_tokens": 8}}
        run_id = m.run("retrain/retrain", {"spec": spec, "tenant": TENANT})

        # worker B: builds the dataset from the shared feedback, dies past half way with checkpoints
        m.start_worker("B", TUNELOOP_CRASH_AT="mid-training")
        m.wait(run_id, ("CRASHED", "COMPLETED", "FAILED"))
        m.stop_worker("B")
        assert m.history(run_id)[-1] == "Crashed", m.history(run_id)
        keys = a.store.list("")
        assert any(k.startswith(f"feedback/datasets/{TENANT}/runs/") for k in keys), keys[:20]
        assert any("/checkpoints/step-" in k and k.endswith("state.json") for k in keys), keys[:20]

        # worker C, another machine: the same flow run again (what retry-crashed-runs does)
        r = prefect_call("POST", f"{m.api}/flow_runs/{run_id}/set_state",
                         json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True})
        assert r.status_code in (200, 201), r.text
        m.start_worker("C")
        run = m.wait(run_id, ("COMPLETED", "FAILED", "CRASHED"))
        logs = m.logs(run_id)
        assert run["state_type"] == "COMPLETED", (m.history(run_id), logs[-15:])
        m.stop_worker("C")
        assert any("fetched from the shared state" in x for x in logs), logs
        assert any(x.startswith("resuming from step-") for x in logs), logs
        c = m.state("C")
        assert not (c / "feedback" / "items.jsonl").exists()  # C stored no feedback: it took B's pinned dataset
        assert list((c / "feedback" / "datasets" / TENANT / "runs").glob("*.txt"))

        registry = open_registry(f"s3://{s3_bucket}/registries/{TENANT}")
        versions = registry.list()
        assert [v.id for v in versions] == ["v1"], versions  # registered once, whatever the gate decided
        assert versions[0].manifest["tenant"] == TENANT and registry.verify("v1") == []

        # machine A again: its own worker promotes, never having seen the dataset or the adapter
        assert not (m.state("A") / "datasets").exists() and not (m.state("A") / "runs").exists()
        router, loader = Router(), Loader(registry, "tuneloop/tiny-llama")
        router.load("blue", lambda: loader("base"))
        with Server(create_app(router, loader, "tuneloop", None, registry, False), free_port()) as srv:
            promote = m.run("promote/promote", {"spec": {
                "server": srv.url, "version": "v1", "tenant": TENANT, "mode": "blue-green", "smoke_items": 16,
                "probe_items": 4, "watch_seconds": 1.0, "min_accuracy": 0.0, "max_p95_seconds": 10.0}})
            m.start_worker("A")
            done = m.wait(promote, ("COMPLETED", "FAILED", "CRASHED"))
            assert done["state_type"] == "COMPLETED", (m.history(promote), m.logs(promote)[-15:])
            status = httpx.get(srv.url + "/admin/status").json()
            assert status["slots"][status["live"]]["version"] == "v1", status
        assert (m.state("A") / "datasets").is_dir()  # the smoke set came from the bucket
        assert registry.aliases().get("production") == "v1"
        print(f"\nsecond machine: retrain {' -> '.join(m.history(run_id))}; promote {' -> '.join(m.history(promote))}")
