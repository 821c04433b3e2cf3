"""End to end on a real Prefect server and process worker: negative feedback collected from a JSONL file emits
events naming their tenant; the retrain deployment's trigger (threshold lowered) counts each tenant's negatives
apart and starts a retrain for the tenant that reached it, which trains on that tenant's feedback only and
registers in that tenant's registry."""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from e2e.procs import BIN, free_port, prefect_call, run_cli, start, stop, wait_healthy

pytestmark = pytest.mark.slow
NEGATIVES = 5


# An API key planted in the worker's environment and pasted by users into feedback: it must not appear in any
# log line, artifact, event or file the run writes (the test greps them all, the Prefect database included).
PLANTED = "sk-proj-" + secrets.token_hex(16)
PLANTED_ENV_ONLY = "lsv2_sk_" + secrets.token_hex(16)


def feedback_rows(demo_rows: list[dict], tenant: str, negatives: range, positives: int = 40) -> list[dict]:
    rows = []
    for i, r in enumerate(demo_rows[:positives]):
        prompt = r["messages"][1]["content"] + (f" (my key is {PLANTED})" if i % 10 == 0 else "")
        rows.append({"prompt": prompt, "response": r["messages"][2]["content"], "tenant": tenant,
                     "score": 0.9, "user": f"{tenant}-u{i}", "timestamp": "2026-11-20T10:00:00Z"})
    for i in negatives:
        r = demo_rows[40 + i]
        rows.append({"prompt": r["messages"][1]["content"], "response": f"no idea, try {PLANTED}", "score": 0.2,
                     "correction": r["messages"][2]["content"], "user": f"{tenant}-n{i}", "tenant": tenant,
                     "timestamp": "2026-11-21T10:00:00Z"})
    return rows


def append(path: Path, rows: list[dict]) -> None:
    with path.open("a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))


def files_holding(root: Path, needles: list[str], skip: set[Path]) -> list[str]:
    """Every file under root (binary included: the Prefect database, its WAL) that holds one of the needles."""
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and p not in skip:
            data = p.read_bytes()
            found += [f"{p.relative_to(root)}: {n[:12]}..." for n in needles if n.encode() in data]
    return found


def test_each_tenants_negatives_trigger_a_retrain_for_that_tenant(tiny_base, demo_files, tmp_path):
    state = tmp_path / "state"
    incoming = tmp_path / "incoming.jsonl"
    demo_rows = [json.loads(line) for line in demo_files["feedback"].read_text().splitlines()]
    # first round: tenant b one negative short of the threshold, tenant a one negative: NEGATIVES events in
    # all, and no tenant at its threshold, so nothing may start (a shared count would start a retrain here)
    append(incoming, feedback_rows(demo_rows, "b", range(NEGATIVES - 1), positives=20)
           + feedback_rows(demo_rows, "a", range(1)))

    # prefect.yaml as shipped, with the trigger threshold lowered and paths pointed at this test
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    collect, retrain = deployments["collect-feedback"], deployments["retrain"]
    negative_trigger = next(t for t in retrain["triggers"] if "tuneloop.feedback.negative" in t["expect"])
    assert negative_trigger["threshold"] == 100  # the shipped default
    negative_trigger["threshold"] = NEGATIVES
    for d in (collect, retrain):
        d.pop("schedules", None)
    assert negative_trigger["for_each"] == ["tuneloop.tenant"] and "data" not in retrain["parameters"]["spec"]
    collect["parameters"]["spec"]["sources"] = [{"kind": "file", "path": str(incoming), "tenant": "default"}]
    collect["parameters"]["spec"]["window_days"] = 3650
    retrain["parameters"]["spec"] = {  # as shipped, no data: a run builds its tenant's dataset from the store
        "tenant": "default", "feedback": {"window_days": 3650},
        "dataset": {"test_split": 0.2, "validation_split": 0.1},
        "training": {"epochs": 1, "max_steps": 4, "batch_size": 8, "gradient_accumulation": 1, "save_every": 2},
        "evaluation": {"max_new_tokens": 4},
    }
    config["deployments"] = [collect, retrain]
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(config, sort_keys=False))

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TUNELOOP_STATE_DIR": str(state),
            "TUNELOOP_PROJECT_DIR": str(ROOT), "PREFECT_LOGGING_LEVEL": "INFO",
            "OPENAI_API_KEY": PLANTED, "LANGSMITH_API_KEY": PLANTED_ENV_ONLY}
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   server_log, server_env, tmp_path)
    worker = None
    try:
        wait_healthy(api, server, server_log)
        run_cli(["work-pool", "create", "cpu-pool", "--type", "process"], env, ROOT)
        run_cli(["--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)], env, ROOT)
        worker = start([str(BIN / "prefect"), "worker", "start", "--pool", "cpu-pool", "--type", "process"],
                       worker_log, env, ROOT)
        def runs_of(name: str) -> list[dict]:
            return prefect_call("POST", f"{api}/flow_runs/filter", json={
                "deployments": {"name": {"any_": [name]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 10}).json()

        def collect_once() -> None:
            done = len(runs_of("collect-feedback"))
            run_cli(["deployment", "run", "collect-feedback/collect-feedback"], env, ROOT)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                states = [r["state_type"] for r in runs_of("collect-feedback")]
                if len(states) > done and states[0] in ("COMPLETED", "FAILED", "CRASHED"):
                    assert states[0] == "COMPLETED", f"collect-feedback ended {states[0]}\n{worker_log.read_text()[-4000:]}"
                    return
                time.sleep(1)
            pytest.fail("collect-feedback did not finish")

        def negative_events() -> list[dict]:
            return prefect_call("POST", f"{api}/events/filter", json={
                "filter": {"event": {"name": ["tuneloop.feedback.negative"]}}, "limit": 50}).json()["events"]

        collect_once()
        deadline = time.monotonic() + 60  # events are stored a moment after the run that emitted them ends
        while len(round_one := negative_events()) < NEGATIVES and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(round_one) == NEGATIVES, round_one
        assert runs_of("retrain") == [], "a retrain started though no tenant reached the threshold"
        # second round: tenant a's other negatives arrive; a reaches the threshold, b is still one short
        append(incoming, feedback_rows(demo_rows, "a", range(1, NEGATIVES), positives=0))
        collect_once()

        deadline, runs = time.monotonic() + 420, {}
        while time.monotonic() < deadline:
            runs = {}
            for name in ("collect-feedback", "retrain"):
                r = prefect_call("POST", f"{api}/flow_runs/filter", json={
                    "deployments": {"name": {"any_": [name]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 10})
                runs[name] = [(run["state_type"], run["id"]) for run in r.json()]
            bad = [s for rs in runs.values() for s, _ in rs if s in ("FAILED", "CRASHED")]
            assert not bad, f"a flow run failed: {runs}\n{worker_log.read_text()[-6000:]}"
            if any(s == "COMPLETED" for s, _ in runs["retrain"]):
                break
            time.sleep(2)
        else:
            pytest.fail(f"no completed retrain within the deadline: {runs}\n{worker_log.read_text()[-6000:]}")

        assert runs["collect-feedback"][0][0] == "COMPLETED"
        events = prefect_call("POST", f"{api}/events/filter", json={
            "filter": {"event": {"name": ["tuneloop.feedback.negative"]}}, "limit": 50}).json()
        assert events["total"] == 2 * NEGATIVES - 1
        datasets = state / "feedback" / "datasets"
        for ev in events["events"]:  # each event names a dataset already built with its item in it
            tenant = ev["resource"]["tuneloop.tenant"]
            assert (datasets / tenant / ev["payload"]["dataset"][:16] / "datasheet.json").exists(), ev
        # No retrain was started by the first round's events, however late the trigger acted on them (instead of
        # looking 15 s after that round): the event that triggered each run-deployment action is in the second
        # round. Its action events are stored a moment after the run they created.
        first_round = {e["id"] for e in round_one}
        deadline, started_by = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            actions = prefect_call("POST", f"{api}/events/filter", json={"filter": {
                "event": {"name": ["prefect.automation.action.executed"]}}, "limit": 50}).json()["events"]
            started_by = {r["prefect.resource.id"].removeprefix("prefect.flow-run."):
                          [t["prefect.resource.id"].removeprefix("prefect.event.") for t in a["related"]
                           if t.get("prefect.resource.role") == "triggering-event"]
                          for a in actions for r in a["related"] if r.get("prefect.resource.role") == "flow-run"}
            if runs["retrain"][0][1] in started_by:
                break
            time.sleep(0.5)
        assert set(started_by) == {run_id for _, run_id in runs["retrain"]}, (started_by, runs)
        assert all(ids and not set(ids) & first_round for ids in started_by.values()), (started_by, first_round)
        # ...and none for b or a second one for a: look at least 20 s after the last negative event (the trigger
        # acts within a second or two of an event; the retrain ran meanwhile, so this rarely waits)
        last = max(datetime.fromisoformat(e["occurred"]).timestamp() for e in events["events"])
        time.sleep(max(0.0, last + 20 - time.time()))
        assert len(runs["retrain"]) == 1 and len(runs_of("retrain")) == 1, runs  # for a only
        retrain_run = prefect_call("GET", f"{api}/flow_runs/{runs['retrain'][0][1]}").json()
        assert retrain_run["created_by"] is None or retrain_run["created_by"].get("type") != "USER"
        assert retrain_run["parameters"]["tenant"] == "a"
        manifest = json.loads((state / "registry" / "tenants" / "a" / "versions" / "v1" / "manifest.json").read_text())
        assert manifest["tenant"] == "a"
        trained_on = next(p for p in (datasets / "a").glob("*/datasheet.json")
                          if p.parent.name == Path(manifest["spec"]["data"]).name)
        sheet = json.loads(trained_on.read_text())
        assert sheet["counts"]["negatives"] == NEGATIVES and sheet["tenant"] == "a"
        assert sheet["counts"]["items_in_window"] == 40 + NEGATIVES  # none of b's feedback
        assert not (state / "registry" / "tenants" / "b").exists()  # b: no run, nothing registered
        assert not (state / "registry" / "versions").exists()  # the default tenant: untouched
        logs = prefect_call("POST", f"{api}/logs/filter", json={"limit": 200}).json()
        assert len(logs) > 20 and not [lg["message"] for lg in logs if PLANTED in lg["message"]]
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
    leaked = files_holding(tmp_path, [PLANTED, PLANTED_ENV_ONLY], skip={incoming, prefect_file})
    assert not leaked, f"planted secrets found in: {leaked}"
    assert (state / "registry" / "tenants" / "a" / "versions" / "v1" / "report").exists()  # the greps covered it
