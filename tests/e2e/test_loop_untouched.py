"""The loop closed, untouched, through the service (`tuneloop up` with the shipped prefect.yaml and automations,
its triggers kept): tenant A's users chat and send negative feedback with corrections over the feedback route
until A's negatives reach the threshold; then, with no hand on it, a retrain for A runs on A's feedback, the gate
promotes it in A's registry, the champion.changed trigger starts the promote flow, which rolls it onto A's live
slots by canary; A's `champion` now answers with the fine-tuned model, and tenant B's answers are what they were.
The test prints the flow runs it saw, in order, with their states."""

from __future__ import annotations

import json
import time

import openai
import pytest

from e2e.procs import free_port, prefect_call
from e2e.servicekit import Up, colours_task, exact_match, wait_for, write_jsonl

pytestmark = pytest.mark.prefect
BASE = "tuneloop/tiny-llama"
THRESHOLD = 400  # all of the demo task's feedback rows: what the tiny base needs to learn it


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    home = tmp_path_factory.mktemp("loop") / "home"
    service = Up(home, free_port(), env={"TUNELOOP_NEGATIVES_THRESHOLD": str(THRESHOLD)}).start()
    yield service
    if service.proc.poll() is None:
        service.stop()


def flow_runs(api: str) -> list[dict]:
    runs = prefect_call("POST", f"{api}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_ASC", "limit": 200}).json()
    names = {}
    for r in runs:
        if r["deployment_id"] and r["deployment_id"] not in names:
            names[r["deployment_id"]] = prefect_call("GET", f"{api}/deployments/{r['deployment_id']}").json()["name"]
    return [{"deployment": names.get(r["deployment_id"], "?"), "tenant": (r["parameters"] or {}).get("tenant")
             or ((r["parameters"] or {}).get("spec") or {}).get("tenant"), "state": r["state_type"],
             "id": r["id"], "created_by": (r.get("created_by") or {}).get("type"),
             "result": r} for r in runs]


def answers(client, model: str, rows: list[dict]) -> list[str]:
    return [client.chat.completions.create(model=model, messages=r["messages"][:-1], max_tokens=8, temperature=0)
            .choices[0].message.content for r in rows]


def test_feedback_over_the_route_retrains_promotes_and_serves_tenant_a_only(up, demo_files, tmp_path):
    api = up.prefect_api()
    a = openai.OpenAI(base_url=up.url, api_key=up.key("loop-a"), max_retries=0)
    b = openai.OpenAI(base_url=up.url, api_key=up.key("loop-b"), max_retries=0)

    # tenant B has a champion of its own (a fine-tuning job on a task A never sees)
    colours = colours_task(260, seed=11)
    f = b.files.create(file=open(write_jsonl(tmp_path / "colours.jsonl", colours[:220]), "rb"), purpose="fine-tune")
    job = b.fine_tuning.jobs.create(model=BASE, training_file=f.id, suffix="colours", seed=1)
    job = wait_for(b, job.id, {"succeeded"}, 600, up)
    b_heldout = colours[220:240]
    deadline = time.monotonic() + 300  # its champion.changed starts a promotion of B's own: let it end
    while time.monotonic() < deadline and any(r["state"] not in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
                                              for r in flow_runs(api)):
        time.sleep(2)
    b_reg = up.home / "registries" / "loop-b"
    b_state = (b_reg / "aliases.json").read_text(), sorted(p.name for p in (b_reg / "versions").iterdir())
    b_model = "champion" if "champion" in json.loads(b_state[0]) else job.fine_tuned_model  # what B's users ask
    b_before = answers(b, b_model, b_heldout)

    rows = [json.loads(x) for x in demo_files["feedback"].read_text().splitlines()]
    heldout = [json.loads(x) for x in demo_files["heldout"].read_text().splitlines()][:40]
    a_base = exact_match(a, BASE, heldout)
    with pytest.raises(openai.NotFoundError):  # A has no champion yet
        a.chat.completions.create(model="champion", messages=heldout[0]["messages"][:-1], max_tokens=4)
    seen = {r["id"] for r in flow_runs(api)}

    # A's users: a question, the model's answer, a thumbs down with the right answer; THRESHOLD times
    t0 = time.monotonic()
    for i, r in enumerate(rows[:THRESHOLD]):
        out = a.chat.completions.create(model=BASE, messages=r["messages"][:-1], max_tokens=8, temperature=0)
        fb = a.post("/feedback", cast_to=object, body={"completion_id": out.id, "thumbs": "down", "user": f"u{i}",
                                                       "correction": r["messages"][-1]["content"]})
        assert fb["object"] == "feedback" and fb["label"] == "negative" and not fb["duplicate"], fb
    posted = time.monotonic() - t0

    # no hand on it from here: wait for A's retrain and A's promotion to end
    deadline, new = time.monotonic() + 900, []
    while time.monotonic() < deadline:
        new = [r for r in flow_runs(api) if r["id"] not in seen]
        ended = {r["deployment"]: r for r in new if r["state"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")}
        bad = [r for r in new if r["state"] in ("FAILED", "CRASHED")]
        assert not bad, f"{bad}\n{(up.home / 'logs' / 'worker.log').read_text()[-6000:]}"
        if "promote" in ended and "retrain" in ended:
            break
        time.sleep(2)
    else:
        pytest.fail(f"no retrain and promotion for A after 900 s: {[(r['deployment'], r['state']) for r in new]}\n"
                    f"{(up.home / 'logs' / 'worker.log').read_text()[-6000:]}")
    took = time.monotonic() - t0
    print(f"\nflow runs after A's feedback ({THRESHOLD} negatives posted in {posted:.1f} s; "
          f"retrained and promoted {took:.1f} s after the first):")
    for r in new:
        print(f"  {r['deployment']:10} tenant={r['tenant']:8} {r['state']:10} created by {r['created_by']}")
    assert [(r["deployment"], r["tenant"]) for r in new] == [("retrain", "loop-a"), ("promote", "loop-a")]
    assert all(r["created_by"] != "USER" for r in new)  # started by their triggers, not by a call

    reg = up.home / "registries" / "loop-a"
    aliases = json.loads((reg / "aliases.json").read_text())
    assert aliases["champion"] == aliases["production"] == "v1", aliases  # gated, then rolled out by the flow
    assert json.loads((reg / "versions" / "v1" / "manifest.json").read_text())["tenant"] == "loop-a"
    a_after = exact_match(a, "champion", heldout)
    assert a_after >= a_base + 0.3, (a_base, a_after)
    assert answers(b, b_model, b_heldout) == b_before  # B: the same model, the same answers
    assert ((b_reg / "aliases.json").read_text(), sorted(p.name for p in (b_reg / "versions").iterdir())) == b_state
    print(f"A's exact match on held-out items: base {a_base:.3f} -> live champion {a_after:.3f}")
