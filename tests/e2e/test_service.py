"""End to end through the `openai` SDK only, against a real `tuneloop up` (Prefect server, process worker,
deployments, the HTTP API): upload, fine-tune, follow, chat with the result; cancel; bad files; tenants;
a restart mid-job; the loop closed with no hand on it. Data: the demo task, and a second task this project never
trains on elsewhere."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import openai
import pytest

from e2e.procs import free_port, prefect_call
from e2e.servicekit import Up, colours_task, exact_match, wait_for, write_jsonl

pytestmark = pytest.mark.prefect  # a real Prefect server and worker (implies slow)
BASE = "tuneloop/tiny-llama"
THRESHOLD = 400  # TUNELOOP_NEGATIVES_THRESHOLD: all of the demo task's feedback rows, what the tiny base needs
COLLECT_EVERY = 30  # TUNELOOP_COLLECT_EVERY: how often the drop file is read
# TUNELOOP_NEGATIVES_WINDOW: a tenant's negatives start at most one retrain per window (Prefect's reactive
# trigger counts afresh from the window's end); a round's negatives all arrive within it, and the next round
# comes after it has ended
WINDOW = 120


def versions_of(home: Path, tenant: str, job_id: str) -> list[str]:
    root = home / "registries" / tenant / "versions"
    return sorted(p.parent.name for p in root.glob("*/manifest.json")
                  if json.loads(p.read_text()).get("job") == job_id) if root.exists() else []


@pytest.fixture(scope="module")
def demo(demo_files, tmp_path_factory) -> dict[str, Path]:
    """The demo task's files as a team would upload them: rows without tuneloop's `tenant` field (the key's
    tenant owns a file; a row naming another tenant is refused at upload)."""
    out = tmp_path_factory.mktemp("demo-upload")
    files = {}
    for name in ("feedback", "heldout"):
        rows = [json.loads(x) for x in demo_files[name].read_text().splitlines()]
        files[name] = write_jsonl(out / f"{name}.jsonl", [{k: v for k, v in r.items() if k != "tenant"} for r in rows])
    return files


@pytest.fixture(scope="module")
def up(tmp_path_factory, tiny_base):  # the tiny base built here, not by the first job
    home = tmp_path_factory.mktemp("service") / "home"
    service = Up(home, free_port(), env={"TUNELOOP_NEGATIVES_THRESHOLD": str(THRESHOLD),
                                              "TUNELOOP_COLLECT_EVERY": str(COLLECT_EVERY),
                                              "TUNELOOP_NEGATIVES_WINDOW": str(WINDOW)}).start()
    yield service
    if service.proc.poll() is None:
        service.stop()


@pytest.fixture(scope="module")
def trained(up, demo, tmp_path_factory):
    """train(task): upload the task's file and fine-tune on it through the SDK, once per task (tests share it)."""
    done: dict[str, dict] = {}

    def train(task: str) -> dict:
        if task in done:
            return done[task]
        if task == "demo":
            file = demo["feedback"]
            heldout = [json.loads(x) for x in demo["heldout"].read_text().splitlines()][:40]
        else:
            rows = colours_task(360, seed=7)
            file = write_jsonl(tmp_path_factory.mktemp("colours") / "colours.jsonl", rows[:320])
            heldout = rows[320:]
        client = openai.OpenAI(base_url=up.url, api_key=up.key(f"t-{task}"), max_retries=0)
        f = client.files.create(file=open(file, "rb"), purpose="fine-tune")
        t0 = time.monotonic()
        job = client.fine_tuning.jobs.create(model=BASE, training_file=f.id, suffix=task, seed=3,
                                             method={"type": "supervised",
                                                     "supervised": {"hyperparameters": {"n_epochs": 10}}})
        running = wait_for(client, job.id, {"running", "succeeded"}, 240, up)
        to_running = time.monotonic() - t0
        result = wait_for(client, job.id, {"succeeded"}, 600, up)
        print(f"\n[{task}] create -> running {to_running:.1f} s; create -> succeeded {time.monotonic() - t0:.1f} s; "
              f"trained_tokens {result.trained_tokens}")
        done[task] = {"client": client, "file": f, "path": file, "created": job, "running": running, "job": result,
                      "heldout": heldout}
        return done[task]

    return train


@pytest.mark.parametrize("task", ["demo", "colours"])
def test_fine_tune_and_chat_through_the_openai_sdk(up, trained, task):
    t = trained(task)
    client, f, job, done, heldout = t["client"], t["file"], t["created"], t["job"], t["heldout"]
    assert f.id.startswith("file-") and f.purpose == "fine-tune" and f.bytes == t["path"].stat().st_size
    assert client.files.retrieve(f.id).filename == t["path"].name
    assert client.files.content(f.id).content == t["path"].read_bytes()
    assert job.status in ("validating_files", "queued") and job.model == BASE and job.hyperparameters.n_epochs == 10
    assert t["running"].status in ("running", "succeeded")
    assert done.fine_tuned_model == f"ft:{BASE}:t-{task}:{task}:{job.id.removeprefix('ftjob-')}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at >= done.created_at
    gate = done.model_extra["tuneloop"]["gate"]
    assert gate["version"] == versions_of(up.home, f"t-{task}", job.id)[0] and isinstance(gate["promoted"], bool)

    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and all(e.data["train_loss"] > 0 for e in metrics)
    assert any("valid_loss" in e.data for e in metrics)
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    assert any("successfully completed" in e.message for e in events)
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and all(c.step_number > 0 and c.fine_tuning_job_id == job.id for c in ckpts)
    assert ckpts[0].metrics.train_loss > 0 and ckpts[0].metrics.step == ckpts[0].step_number

    ids = [m.id for m in client.models.list().data]
    assert done.fine_tuned_model in ids and BASE in ids
    assert client.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model
    tuned, base = exact_match(client, done.fine_tuned_model, heldout), exact_match(client, BASE, heldout)
    print(f"[{task}] held-out exact match: base {base:.3f} -> fine-tuned {tuned:.3f} ({len(heldout)} items)")
    assert tuned > base
    ck = client.chat.completions.create(model=ckpts[-1].fine_tuned_model_checkpoint,
                                        messages=heldout[0]["messages"][:-1], max_tokens=4)
    assert ck.choices[0].message.role == "assistant"
    if task == "demo":
        feedback_lands_once_and_a_negative_is_an_event(client, up, f"t-{task}", done.fine_tuned_model, heldout)
        operations_routes(client, up, f"t-{task}", done, heldout)
    else:  # a job may continue from a fine-tuned model: its adapter is where training starts
        more = client.fine_tuning.jobs.create(model=done.fine_tuned_model, training_file=f.id,
                                              hyperparameters={"n_epochs": 1})
        assert more.model == done.fine_tuned_model and more.model_extra["tuneloop"]["base_model"] == BASE
        again = wait_for(client, more.id, {"succeeded"}, 600, up)
        first_loss = min(e.data["train_loss"] for e in client.fine_tuning.jobs.list_events(more.id, limit=1000).data
                         if e.type == "metrics")
        assert first_loss < max(e.data["train_loss"] for e in metrics)  # it did not start from scratch
        assert exact_match(client, again.fine_tuned_model, heldout) >= tuned - 0.1
        deleting_a_model(client, again, heldout)


def deleting_a_model(client, job, heldout: list[dict]):
    """A deleted model is a 404 from then on; the champion cannot be deleted while it is the one served."""
    if not job.model_extra["tuneloop"]["gate"]["promoted"]:
        assert client.models.delete(job.fine_tuned_model).deleted
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=job.fine_tuned_model, messages=heldout[0]["messages"][:-1])
        assert job.fine_tuned_model not in [m.id for m in client.models.list().data]
    else:
        with pytest.raises(openai.BadRequestError):
            client.models.delete(job.fine_tuned_model)
        assert client.chat.completions.create(model="champion", messages=heldout[0]["messages"][:-1])


def feedback_lands_once_and_a_negative_is_an_event(client, up: Up, tenant: str, model: str, heldout: list[dict]):
    """POST /v1/feedback through the SDK's generic post: by completion id only, stored once, a negative sends
    the same event as the other sources, a correction makes an SFT row and a preference pair."""
    from tuneloop.feedback.build import build_feedback_dataset
    from tuneloop.feedback.store import FeedbackStore

    asked = heldout[1]["messages"][:-1]
    asked = asked[:-1] + [{"role": "user", "content": asked[-1]["content"] + " (mail me at ana@example.com)"}]
    answer = client.chat.completions.create(model=model, messages=asked, max_tokens=8)
    body = {"completion_id": answer.id, "thumbs": "down", "correction": heldout[1]["messages"][-1]["content"],
            "user": "u-1"}
    first = client.post("/feedback", body=body, cast_to=object)
    again = client.post("/feedback", body=body, cast_to=object)
    assert first["label"] == "negative" and not first["duplicate"] and again["duplicate"]
    liked = client.chat.completions.create(model=model, messages=heldout[2]["messages"][:-1], max_tokens=8)
    assert client.post("/feedback", body={"completion_id": liked.id, "rating": 5}, cast_to=object)["label"] == \
        "positive"
    with pytest.raises(openai.BadRequestError):
        client.post("/feedback", body={"completion_id": liked.id, "rating": 5, "thumbs": "up"}, cast_to=object)
    with pytest.raises(openai.NotFoundError):
        client.post("/feedback", body={"completion_id": "chatcmpl-" + "0" * 24, "rating": 1}, cast_to=object)
    items = [i for i in FeedbackStore(up.home / "feedback").items() if i.tenant == tenant]
    assert len(items) == 2 and "ana@example.com" not in json.dumps([i.to_json() for i in items])
    ds = build_feedback_dataset(items, up.home / "feedback" / "datasets", tenant=tenant, window_days=None)
    sft = [json.loads(x) for x in (ds.path / "sft.jsonl").read_text().splitlines()]
    pairs = [json.loads(x) for x in (ds.path / "preference.jsonl").read_text().splitlines()]
    assert len(pairs) == 1 and pairs[0]["chosen"] == body["correction"]
    assert any(r["messages"][-1]["content"] == body["correction"] for r in sft)
    api = up.prefect_api()
    deadline = time.monotonic() + 30
    while True:
        found = prefect_call("POST", f"{api}/events/filter", json={"filter": {"event": {"name": ["tuneloop.feedback.negative"]},
                                                                   "any_resource": {"id_prefix": [
                                                                       f"tuneloop.feedback.api:{tenant}:"]}},
                                                        "limit": 10}).json()
        if found["total"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert found["total"] == 1, found


def operations_routes(client, up: Up, tenant: str, job, heldout: list[dict]):
    """evaluate (JSON report), /stats, /metrics (admin only), /health, and deleting a model."""
    hf = client.files.create(file=("heldout.jsonl", "".join(json.dumps(r) + "\n" for r in heldout).encode()),
                             purpose="fine-tune")
    report = client.post(f"/fine_tuning/jobs/{job.id}/evaluate", body={"file": hf.id, "max_new_tokens": 8},
                         cast_to=object)
    assert report["items"] == len(heldout) and report["metrics"]["exact_match"] > report["base_metrics"]["exact_match"]
    stats = httpx.get(up.url.removesuffix("/v1") + "/stats", headers={"Authorization": f"Bearer {client.api_key}"}).json()
    assert stats["tenant"] == tenant and stats["jobs"]["succeeded"] == 1 and stats["trained_tokens"] == job.trained_tokens
    assert stats["feedback"]["negative"] == 1 and stats["files"] == 2
    root = up.url.removesuffix("/v1")
    assert httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {client.api_key}"}).status_code == 403
    admin = up.key(tenant, "admin")
    text = httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    assert 'tuneloop_service_jobs{status="succeeded"}' in text and "tuneloop_service_adapters_loaded" in text
    health = httpx.get(f"{root}/health").json()
    assert health["status"] == "ok" and {"prefect", "worker", "registry", "store"} <= set(health)


def test_a_defective_file_is_refused_with_its_lines_and_nothing_is_stored(up, demo):
    client = openai.OpenAI(base_url=up.url, api_key=up.key("t-bad"), max_retries=0)
    good = demo["feedback"].read_text().splitlines()
    lines = good[:12]
    lines[2] = '{"messages": [{"role": "user", "content": "hi"}'  # cut short
    lines[6] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    lines[9] = json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]})
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("bad.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
    message = e.value.body["message"]
    assert all(f"line {n}" in message for n in (3, 7, 10)), message
    assert not client.files.list().data
    stored = up.home / "files" / "t-bad"
    assert not stored.exists() or not any(p.is_file() and not p.name.startswith(".") for p in stored.rglob("*"))
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", b"\n".join(x.encode() for x in good[:5])), purpose="assistants")
    assert "purpose" in e.value.body["message"]


def test_a_dpo_job_through_the_openai_sdk(up, tmp_path):
    """OpenAI's DPO job shape: a preference file, method dpo with beta. The tuned model answers the held-out
    prompts better than the base; a chat file is refused for a dpo job, naming the file and the fix."""
    from tuneloop.demo.data import write_preference_data

    files = write_preference_data(tmp_path / "pref", seed=2)
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "tenant"} for x in p.read_text().splitlines()]  # noqa: E731
    pairs = write_jsonl(tmp_path / "pairs.jsonl", strip(files["pairs"]))
    heldout = strip(files["heldout"])[:40]
    client = openai.OpenAI(base_url=up.url, api_key=up.key("t-dpo"), max_retries=0)
    f = client.files.create(file=open(pairs, "rb"), purpose="fine-tune")
    chat = client.files.create(file=("chat.jsonl", "".join(json.dumps(r) + "\n" for r in heldout[:12]).encode()),
                               purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=BASE, training_file=chat.id, method={"type": "dpo"})
    assert chat.id in e.value.body["message"] and "preference" in e.value.body["message"]
    job = client.fine_tuning.jobs.create(model=BASE, training_file=f.id, suffix="prefs", seed=1, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 10}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    done = wait_for(client, job.id, {"succeeded"}, 600, up)
    version = versions_of(up.home, "t-dpo", job.id)[0]
    manifest = json.loads((up.home / "registries" / "t-dpo" / "versions" / version / "manifest.json").read_text())
    assert manifest["spec"]["training"]["method"] == "dpo" and manifest["spec"]["training"]["beta"] == 0.1
    tuned, base = exact_match(client, done.fine_tuned_model, heldout), exact_match(client, BASE, heldout)
    print(f"\n[dpo] held-out exact match: base {base:.3f} -> dpo {tuned:.3f} ({len(heldout)} items)")
    assert tuned > base


def test_tenants_see_only_their_own_and_keys_are_required(up, trained):
    t = trained("demo")
    a, f, job = t["client"], t["file"], t["job"]
    done = job
    b = openai.OpenAI(base_url=up.url, api_key=up.key("t-b"), max_retries=0)
    for call in (lambda: b.files.retrieve(f.id), lambda: b.files.content(f.id), lambda: b.files.delete(f.id),
                 lambda: b.fine_tuning.jobs.retrieve(job.id), lambda: b.fine_tuning.jobs.cancel(job.id),
                 lambda: b.fine_tuning.jobs.list_events(job.id), lambda: b.fine_tuning.jobs.checkpoints.list(job.id),
                 lambda: b.fine_tuning.jobs.create(model=BASE, training_file=f.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.id not in [j.id for j in b.fine_tuning.jobs.list().data]
    assert f.id not in [x.id for x in b.files.list().data] and a.files.retrieve(f.id).id == f.id
    for call in (lambda: b.models.retrieve(done.fine_tuned_model),
                 lambda: b.chat.completions.create(model=done.fine_tuned_model,
                                                   messages=[{"role": "user", "content": "hi"}])):
        with pytest.raises(openai.NotFoundError):
            call()
    assert done.fine_tuned_model not in [m.id for m in b.models.list().data]
    assert a.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model  # it exists: for its owner
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=up.url, api_key="tl-not-a-key", max_retries=0).files.list()
    for route in ("files", "models", f"fine_tuning/jobs/{job.id}"):  # no key at all
        r = httpx.get(f"{up.url}/{route}")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{up.url}/files", headers={"Authorization": "Bearer nope"}).status_code == 401


def wait_promotion(admin, job_id: str, promotion_id: str, up: Up, timeout: float = 300) -> dict:
    deadline, p = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        p = next(x for x in admin.get(f"/fine_tuning/jobs/{job_id}/promotions", cast_to=object)["data"]
                 if x["id"] == promotion_id)
        if p["status"] != "running":
            return p
        time.sleep(1)
    pytest.fail(f"promotion {promotion_id} still {p.get('status')} after {timeout} s\n"
                f"{(up.home / 'logs' / 'worker.log').read_text()[-5000:]}")


def live_version(client, heldout: list[dict]) -> str:
    r = client.chat.completions.with_raw_response.create(model="champion", messages=heldout[0]["messages"][:-1],
                                                         max_tokens=4)
    return r.headers["x-tuneloop-version"]


def test_promote_runs_the_promote_flow_on_the_tenants_slots_and_a_model_below_the_bar_is_rejected(up, trained):
    """POST /v1/fine_tuning/jobs/{id}/promote (an admin key) runs the promote deployment on the worker against
    the tenant's own blue-green slots: a canary that passes moves `champion` and the production alias; a
    model that fails validation is rejected and the live slot keeps serving."""
    t = trained("demo")
    client, first, heldout = t["client"], t["job"], t["heldout"]
    admin = openai.OpenAI(base_url=up.url, api_key=up.key("t-demo", "admin"), max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):  # a user key may not promote
        client.post(f"/fine_tuning/jobs/{first.id}/promote", body={}, cast_to=object)
    stranger = openai.OpenAI(base_url=up.url, api_key=up.key("t-stranger", "admin"), max_retries=0)
    with pytest.raises(openai.NotFoundError):  # nor another tenant's admin
        stranger.post(f"/fine_tuning/jobs/{first.id}/promote", body={}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="mode"):
        admin.post(f"/fine_tuning/jobs/{first.id}/promote", body={"mode": "sideways"}, cast_to=object)

    quick = client.fine_tuning.jobs.create(model=BASE, training_file=t["file"].id, suffix="quick", seed=5,
                                           hyperparameters={"n_epochs": 1})
    quick = wait_for(client, quick.id, {"succeeded"}, 600, up)
    live = live_version(client, heldout)  # before any promotion: the registry champion
    jobs = {j.model_extra["tuneloop"]["version"]: j for j in (first, quick)}
    candidate = next(j for v, j in jobs.items() if v != live)
    target = candidate.model_extra["tuneloop"]["version"]
    hf = admin.files.create(file=("smoke.jsonl", "".join(json.dumps(r) + "\n" for r in heldout).encode()),
                            purpose="fine-tune")
    t0 = time.monotonic()
    p = admin.post(f"/fine_tuning/jobs/{candidate.id}/promote", cast_to=object, body={
        "mode": "canary", "canary_steps": [0.5, 1.0], "step_seconds": 1, "watch_seconds": 1, "smoke_file": hf.id,
        "smoke_items": 8, "probe_items": 2, "min_accuracy": 0.0, "max_p95_seconds": 30})
    assert p["status"] == "running" and p["version"] == target and p["mode"] == "canary"
    with pytest.raises(openai.BadRequestError, match="promotion running"):
        admin.post(f"/fine_tuning/jobs/{candidate.id}/promote", body={}, cast_to=object)
    done = wait_promotion(admin, candidate.id, p["id"], up)
    print(f"\npromotion (canary 50% -> 100%): {done['status']} in {time.monotonic() - t0:.1f} s")
    assert done["status"] == "promoted", done
    assert [c["at"] for c in done["checks"]][0] == "validation" and all(c["ok"] for c in done["checks"])
    assert live_version(client, heldout) == target
    champion = client.models.retrieve("champion").model_extra["tuneloop"]
    assert champion["version"] == target and champion["production"] == target
    status = httpx.get(up.url.removesuffix("/v1") + "/admin/status",
                       headers={"Authorization": f"Bearer {admin.api_key}"}).json()
    assert status["tenant"] == "t-demo" and status["slots"][status["live"]]["version"] == target
    assert any(f"Promotion {p['id']} promoted" in e.message for e in client.fine_tuning.jobs.list_events(candidate.id).data)
    with pytest.raises(openai.BadRequestError):  # the live model cannot be deleted
        client.models.delete(candidate.fine_tuned_model)

    back = next(j for v, j in jobs.items() if v != target)  # the other model, held to a bar it cannot meet
    p = admin.post(f"/fine_tuning/jobs/{back.id}/promote", cast_to=object, body={
        "watch_seconds": 1, "smoke_file": hf.id, "smoke_items": 4, "max_p95_seconds": 0.0001})
    done = wait_promotion(admin, back.id, p["id"], up)
    assert done["status"] == "rejected" and "p95" in done["reason"], done
    assert live_version(client, heldout) == target  # serving never moved
    assert client.models.retrieve("champion").model_extra["tuneloop"]["production"] == target


def test_pause_resume_and_cancel_keep_the_checkpoints_and_register_nothing(up, demo):
    client = openai.OpenAI(base_url=up.url, api_key=up.key("t-cancel"), max_retries=0)
    f = client.files.create(file=open(demo["feedback"], "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=f.id, hyperparameters={"n_epochs": 40})

    def first_checkpoint(after: int = 0) -> int:
        deadline = time.monotonic() + 300
        while True:
            steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data]
            if steps and max(steps) > after:
                return max(steps)
            assert time.monotonic() < deadline, f"no checkpoint past step {after} within 300 s"
            assert client.fine_tuning.jobs.retrieve(job.id).status in ("validating_files", "queued", "running")
            time.sleep(1)

    step = first_checkpoint()
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_for(client, job.id, {"paused"}, 120, up)
    assert paused.finished_at is None and max(c.step_number for c in
                                              client.fine_tuning.jobs.checkpoints.list(job.id).data) >= step
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(job.id)
    client.fine_tuning.jobs.resume(job.id)
    resumed_past = first_checkpoint(step)
    assert resumed_past > step
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # at once, as OpenAI's
    deadline = time.monotonic() + 120
    while (done := client.fine_tuning.jobs.retrieve(job.id)).finished_at is None:  # set once the run has stopped
        assert done.status == "cancelled" and time.monotonic() < deadline
        time.sleep(1)
    assert done.fine_tuned_model is None and done.finished_at >= done.created_at
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data  # kept
    assert versions_of(up.home, "t-cancel", job.id) == []
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)  # already cancelled
    time.sleep(3)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert any(m.startswith("Job resumed: it continues from checkpoint step ") for m in messages), messages


def test_a_restart_mid_job_resumes_from_the_checkpoint_and_succeeds_once(up, demo):
    client = openai.OpenAI(base_url=up.url, api_key=up.key("t-restart"), max_retries=0)
    f = client.files.create(file=open(demo["feedback"], "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=f.id, hyperparameters={"n_epochs": 4})
    deadline = time.monotonic() + 300
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.5)
    step = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    assert up.stop() in (0, 143, -15)
    run = next((up.home / "runs" / job.id).glob("run-*"))
    seen = (run / "progress.json").read_text()
    time.sleep(4)
    assert (run / "progress.json").read_text() == seen and not (run / "result.json").exists(), \
        "the job went on training after tuneloop up stopped"
    up.start()
    done = wait_for(client, job.id, {"succeeded"}, 600, up)
    assert len(versions_of(up.home, "t-restart", job.id)) == 1
    result = json.loads(next((up.home / "runs" / job.id).glob("run-*/result.json")).read_text())
    assert result["resumed_from_step"] and result["resumed_from_step"] >= step
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert any("restarted" in m and "checkpoint step" in m for m in messages), messages
    assert done.model_extra["tuneloop"]["runs"][-1] != done.model_extra["tuneloop"]["runs"][0]


def flow_runs(api: str) -> list[dict]:
    """The 200 latest flow runs that are due, oldest first (not the future runs the collect schedule keeps)."""
    due = (datetime.now(timezone.utc) + timedelta(seconds=10)).isoformat()
    runs = prefect_call("POST", f"{api}/flow_runs/filter", json={
        "sort": "EXPECTED_START_TIME_DESC", "limit": 200,
        "flow_runs": {"expected_start_time": {"before_": due}}}).json()[::-1]
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


ENDED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def loop_runs(api: str, seen: set[str]) -> list[dict]:
    """The flow runs started since `seen`, scheduled collect-feedback runs left out (the schedule keeps a
    hundred of them ahead)."""
    return [r for r in flow_runs(api) if r["id"] not in seen
            and not (r["deployment"] == "collect-feedback" and r["state"] == "SCHEDULED")]


def seen_now(api: str) -> set[str]:
    return {r["id"] for r in flow_runs(api)}


OURS = ("loop-a", "t-colours")  # A and B: runs of other tenants are the earlier tests' (a late retry of theirs)


def of_ours(runs: list[dict]) -> list[dict]:
    """A's and B's retrain and promote runs."""
    return [r for r in runs if r["tenant"] in OURS and r["deployment"] != "collect-feedback"]


def ours(runs: list[dict]) -> list[tuple[str, str]]:
    """A's and B's retrain and promote runs, as (deployment, tenant)."""
    return [(r["deployment"], r["tenant"]) for r in of_ours(runs)]


def wait_until(api: str, seen: set[str], done, what: str, up: Up, timeout: float = 900) -> list[dict]:
    """Wait until `done(new runs)`; any retrain or promote that fails or crashes fails the test."""
    deadline, new = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        new = loop_runs(api, seen)
        bad = [r for r in new if r["state"] in ("FAILED", "CRASHED")
               and (r["tenant"] in OURS or r["deployment"] == "collect-feedback")]
        assert not bad, f"{bad}\n{(up.home / 'logs' / 'worker.log').read_text()[-6000:]}"
        if done(new):
            return new
        time.sleep(2)
    pytest.fail(f"{what} after {timeout:.0f} s: {[(r['deployment'], r['state']) for r in new]}\n"
                f"{(up.home / 'logs' / 'worker.log').read_text()[-6000:]}")


def ended(runs: list[dict], deployment: str, tenant: str) -> list[dict]:
    return [r for r in runs if r["deployment"] == deployment and r["tenant"] == tenant and r["state"] in ENDED]


def sequence(runs: list[dict]) -> list[str]:
    """Flow runs in order, with their states; consecutive collect-feedback runs on one line."""
    lines: list[str] = []
    for r in runs:
        line = f"{r['deployment']:16} tenant={r['tenant'] or '-':8} {r['state']:10} by {r['created_by']}"
        if lines and r["deployment"] == "collect-feedback" and lines[-1].startswith("collect-feedback"):
            n = int(lines[-1].rsplit(" x", 1)[1]) + 1 if " x" in lines[-1] else 2
            lines[-1] = line + f" x{n}"
        else:
            lines.append(line)
    return lines


def test_the_loop_closes_untouched_for_one_tenant_and_leaves_another_as_it_was(up, trained, demo_files):
    """The loop, with no hand on it (`up` applies the shipped triggers; THRESHOLD and COLLECT_EVERY from its
    environment). Tenant A has a fixed held-out set (`<home>/eval/<tenant>.jsonl`, put there before any
    feedback) its gate measures every candidate on. Round 1: A's users chat and send negative feedback with
    corrections, half over the feedback route and half appended to the drop file the collect-feedback
    schedule reads, until A's negatives reach the threshold; a retrain for A runs on A's feedback, the gate
    promotes it in A's registry, the champion.changed trigger starts the promote flow, which rolls it onto
    A's live slots by canary; A's `champion` now answers with the fine-tuned model. Round 2: corrupted
    corrections for A reach the threshold; the retrain they start is rejected and A's answers stay as they
    were. Round 3: a drift event for A (what detect-drift emits) starts a retrain for A. Tenant B (t-colours,
    with its own fine-tuned model) answers as it did throughout. Prints the flow runs it saw, in order."""
    from tuneloop.demo.data import corrupt_row

    api = up.prefect_api()
    a = openai.OpenAI(base_url=up.url, api_key=up.key("loop-a"), max_retries=0)
    t = trained("colours")  # tenant B: a fine-tuning job on a task A never sees
    b, job, b_heldout = t["client"], t["job"], t["heldout"][:20]
    deadline = time.monotonic() + 300  # runs the earlier tests started (a champion's promotion): let them end
    while time.monotonic() < deadline and any(r["state"] not in ENDED for r in loop_runs(up.prefect_api(), set())):
        time.sleep(2)
    b_reg = up.home / "registries" / "t-colours"
    b_state = (b_reg / "aliases.json").read_text(), sorted(p.name for p in (b_reg / "versions").iterdir())
    b_model = "champion" if "champion" in json.loads(b_state[0]) else job.fine_tuned_model  # what B's users ask
    b_before = answers(b, b_model, b_heldout)

    def b_reference() -> str | None:
        """B's drift reference: the dataset its champion was trained on (tasks.drift.load_reference_prompts)."""
        champion = json.loads((b_reg / "aliases.json").read_text()).get("champion")
        return champion and json.loads((b_reg / "versions" / champion / "manifest.json").read_text())["dataset_version"]

    b_ref = b_reference()

    rows = [json.loads(x) for x in demo_files["feedback"].read_text().splitlines()][:THRESHOLD]
    heldout = [json.loads(x) for x in demo_files["heldout"].read_text().splitlines()]
    (up.home / "eval").mkdir(exist_ok=True)
    write_jsonl(up.home / "eval" / "loop-a.jsonl", heldout)  # A's yardstick, set up before the loop runs
    heldout = heldout[:40]
    a_base = exact_match(a, BASE, heldout)
    with pytest.raises(openai.NotFoundError):  # A has no champion yet
        a.chat.completions.create(model="champion", messages=heldout[0]["messages"][:-1], max_tokens=4)
    first = seen_now(api)

    def feedback(rows: list[dict], user: str, drop: bool) -> None:
        """A's users: a question, the model's answer, a thumbs down with the right answer (as they see it); with
        `drop`, every other row arrives through the drop file instead of the route."""
        dropped = []
        for i, r in enumerate(rows):
            if drop and i % 2:
                dropped.append({"messages": r["messages"][:-1], "response": "no idea", "score": 0.0,
                                "correction": r["messages"][-1]["content"], "user": f"{user}{i}", "tenant": "loop-a"})
                continue
            out = a.chat.completions.create(model=BASE, messages=r["messages"][:-1], max_tokens=8, temperature=0)
            fb = a.post("/feedback", cast_to=object, body={"completion_id": out.id, "thumbs": "down",
                                                           "user": f"{user}{i}", "correction": r["messages"][-1]["content"]})
            assert fb["object"] == "feedback" and fb["label"] == "negative" and not fb["duplicate"], fb
        if dropped:  # appended as another tool would: whole lines at the end of the file
            incoming = up.home / "incoming" / "feedback.jsonl"  # tuneloop.service.home.Home.incoming
            incoming.parent.mkdir(parents=True, exist_ok=True)
            with incoming.open("a", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in dropped))

    # round 1: no hand on it from the first feedback on; wait for A's retrain and A's promotion to end
    t0 = time.monotonic()
    feedback(rows, "u", drop=True)
    posted = time.monotonic() - t0
    new = wait_until(api, first, lambda n: ended(n, "promote", "loop-a") and ended(n, "retrain", "loop-a"),
                     "no retrain and promotion for A", up)
    took = time.monotonic() - t0
    loop = of_ours(new)
    assert ours(loop) == [("retrain", "loop-a"), ("promote", "loop-a")], loop  # none for B
    assert all(r["created_by"] != "USER" for r in loop)  # started by their triggers, not by a call
    stored = [json.loads(x) for x in (up.home / "feedback" / "items.jsonl").read_text().splitlines()]
    by_source = {src: sum(1 for i in stored if i["source"] == src and i["tenant"] == "loop-a") for src in ("incoming",)}
    assert by_source["incoming"] == THRESHOLD // 2, by_source  # the drop file's half, collected on schedule

    reg = up.home / "registries" / "loop-a"
    aliases = json.loads((reg / "aliases.json").read_text())
    assert aliases["champion"] == aliases["production"] == "v1", aliases  # gated, then rolled out by the flow
    manifest = json.loads((reg / "versions" / "v1" / "manifest.json").read_text())
    assert manifest["tenant"] == "loop-a"
    assert manifest["spec"]["eval_data"] == str(up.home / "eval" / "loop-a.jsonl")  # gated on A's fixed set
    a_after = exact_match(a, "champion", heldout)
    assert a_after >= a_base + 0.3, (a_base, a_after)
    assert answers(b, b_model, b_heldout) == b_before  # B: the same model, the same answers
    a_live = answers(a, "champion", heldout)

    # round 2: corrupted corrections for A, as many; the retrain they start is rejected on A's held-out set
    second = seen_now(api)
    time.sleep(max(0.0, t0 + WINDOW + 5 - time.monotonic()))  # round 1's window over (it always is by now)
    t1 = time.monotonic()
    feedback([corrupt_row(r) for r in rows], "c", drop=False)
    new2 = wait_until(api, second, lambda n: ended(n, "retrain", "loop-a"), "no retrain for A's corrupted round", up)
    time.sleep(5)  # a promotion would start within a second or two of a champion change
    new2 = loop_runs(api, second)
    took2 = time.monotonic() - t1
    assert ours(new2) == [("retrain", "loop-a")], new2
    aliases2 = json.loads((reg / "aliases.json").read_text())
    assert aliases2["champion"] == aliases2["production"] == "v1", aliases2
    rejected = json.loads((reg / "versions" / "v2" / "manifest.json").read_text())
    assert rejected["tenant"] == "loop-a"
    assert answers(a, "champion", heldout) == a_live  # A's live answers unchanged
    assert answers(b, b_model, b_heldout) == b_before

    # round 3: drift for A, as detect-drift reports it, starts a retrain for A
    third = seen_now(api)
    r = prefect_call("POST", f"{api}/events", json=[{
        "id": str(uuid.uuid4()), "occurred": datetime.now(timezone.utc).isoformat(), "event": "tuneloop.drift.detected",
        "resource": {"prefect.resource.id": "tuneloop.drift.loop-a", "tuneloop.tenant": "loop-a"},
        "payload": {"prompts_drifted": True, "scores_dropped": False}}])
    assert r.status_code == 204, r.text
    new3 = wait_until(api, third, lambda n: ended(n, "retrain", "loop-a"), "no retrain for A's drift", up)
    drift_run = ended(new3, "retrain", "loop-a")[0]
    assert drift_run["state"] == "COMPLETED" and drift_run["created_by"] != "USER", drift_run
    assert answers(b, b_model, b_heldout) == b_before
    assert ((b_reg / "aliases.json").read_text(), sorted(p.name for p in (b_reg / "versions").iterdir())) == b_state
    assert b_reference() == b_ref  # B's champion, so its drift reference, never moved

    print(f"\nflow runs after A's feedback ({THRESHOLD} negatives, half over the route and half through the drop "
          f"file, in {posted:.1f} s; retrained and promoted {took:.1f} s after the first; the corrupted round "
          f"retrained and rejected in {took2:.1f} s):")
    for line in sequence(loop_runs(api, first)):
        print("  " + line)
    print(f"A's exact match on held-out items: base {a_base:.3f} -> live champion {a_after:.3f}; "
          f"the corrupted round's candidate {rejected['metrics'].get('exact_match')} (rejected)")
