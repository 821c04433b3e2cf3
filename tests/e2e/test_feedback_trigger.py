"""End to end on a real Prefect server and process worker: negative feedback collected from a JSONL
file emits events; the retrain deployment's trigger (threshold lowered) starts a retrain that completes."""

from __future__ import annotations

import json
import os
import secrets
import time
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


def feedback_file(path: Path, demo_rows: list[dict]) -> None:
    rows = []
    for i, r in enumerate(demo_rows[:40]):
        prompt = r["messages"][1]["content"] + (f" (my key is {PLANTED})" if i % 10 == 0 else "")
        rows.append({"prompt": prompt, "response": r["messages"][2]["content"],
                     "score": 0.9, "user": f"u{i}", "timestamp": "2026-11-20T10:00:00Z"})
    for i, r in enumerate(demo_rows[40:40 + NEGATIVES]):
        rows.append({"prompt": r["messages"][1]["content"], "response": f"no idea, try {PLANTED}", "score": 0.2,
                     "correction": r["messages"][2]["content"], "user": f"n{i}", "timestamp": "2026-11-21T10:00:00Z"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def files_holding(root: Path, needles: list[str], skip: set[Path]) -> list[str]:
    """Every file under root (binary included: the Prefect database, its WAL) that holds one of the needles."""
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and p not in skip:
            data = p.read_bytes()
            found += [f"{p.relative_to(root)}: {n[:12]}..." for n in needles if n.encode() in data]
    return found


def test_negative_feedback_triggers_a_retrain_that_completes(tiny_base, demo_files, tmp_path):
    state = tmp_path / "state"
    incoming = tmp_path / "incoming.jsonl"
    demo_rows = [json.loads(line) for line in demo_files["feedback"].read_text().splitlines()]
    feedback_file(incoming, demo_rows)

    # prefect.yaml as shipped, with the trigger threshold lowered and paths pointed at this test
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    collect, retrain = deployments["collect-feedback"], deployments["retrain"]
    negative_trigger = next(t for t in retrain["triggers"] if "tuneloop.feedback.negative" in t["expect"])
    assert negative_trigger["threshold"] == 100  # the shipped default
    negative_trigger["threshold"] = NEGATIVES
    for d in (collect, retrain):
        d.pop("schedules", None)
    collect["parameters"]["spec"]["sources"] = [{"kind": "file", "path": str(incoming), "tenant": "default"}]
    collect["parameters"]["spec"]["window_days"] = 3650
    retrain["parameters"]["spec"] = {
        "data": str(state / "feedback" / "datasets" / "default"), "tenant": "default",
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
        run_cli(["deployment", "run", "collect-feedback/collect-feedback"], env, ROOT)

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
        assert events["total"] == NEGATIVES
        retrain_run = prefect_call("GET", f"{api}/flow_runs/{runs['retrain'][0][1]}").json()
        assert retrain_run["created_by"] is None or retrain_run["created_by"].get("type") != "USER"
        sheet = json.loads(next((state / "feedback" / "datasets" / "default").glob("*/datasheet.json")).read_text())
        assert sheet["counts"]["negatives"] == NEGATIVES and sheet["tenant"] == "default"
        assert (state / "registry" / "versions" / "v1" / "manifest.json").exists()
        logs = prefect_call("POST", f"{api}/logs/filter", json={"limit": 200}).json()
        assert len(logs) > 20 and not [lg["message"] for lg in logs if PLANTED in lg["message"]]
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
    leaked = files_holding(tmp_path, [PLANTED, PLANTED_ENV_ONLY], skip={incoming, prefect_file})
    assert not leaked, f"planted secrets found in: {leaked}"
    assert (state / "registry" / "versions" / "v1" / "report").exists()  # the greps covered the reports too
