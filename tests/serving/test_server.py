"""The OpenAI-compatible server, driven by the `openai` SDK over real HTTP."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tuneloop.demo.data import read_jsonl


def _client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)


def _questions(demo_files, n=20):
    rows = read_jsonl(demo_files["heldout"])[:n]
    return [([m for m in r["messages"] if m["role"] != "assistant"], r["messages"][-1]["content"]) for r in rows]


def test_chat_completions_models_health_metrics(make_server, demo_files):
    srv = make_server("v1")
    c = _client(srv)
    ids = [m.id for m in c.models.list().data]
    assert ids == ["tuneloop", "v1"]
    right = 0
    qs = _questions(demo_files)
    for msgs, answer in qs:
        raw = c.chat.completions.with_raw_response.create(model="tuneloop", messages=msgs, temperature=0,
                                                           max_tokens=8)
        r = raw.parse()
        assert raw.headers["x-tuneloop-version"] == "v1" and raw.headers["x-tuneloop-slot"] == "blue"
        assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
        right += r.choices[0].message.content == answer
    assert right / len(qs) >= 0.7  # the trained adapter answers the held-out intents
    comp = c.completions.create(model="v1", prompt="Question: hello", max_tokens=3, temperature=0)
    assert comp.object == "text_completion" and comp.choices[0].finish_reason in ("stop", "length")
    assert comp.usage.completion_tokens <= 3
    health = httpx.get(srv.url + "/health").json()
    assert health["status"] == "ok" and health["dependencies"]["live_slot"]["version"] == "v1"
    assert health["dependencies"]["registry"]["ok"] is True
    text = httpx.get(srv.url + "/metrics").text
    line = [x for x in text.splitlines() if x.startswith('tuneloop_serving_requests_total{outcome="ok",slot="blue"')]
    assert line and float(line[0].split()[-1]) == len(qs) + 1
    assert 'tuneloop_serving_live{slot="blue",version="v1"} 1.0' in text


def test_bad_requests_get_clear_openai_errors(make_server):
    c = _client(make_server("v1"))
    with pytest.raises(openai.NotFoundError) as e:  # OpenAI's 404 model_not_found
        c.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-nope" in str(e.value) and "/v1/models" in str(e.value) and e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert "max_tokens" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tuneloop", messages=[])
    assert "messages" in str(e.value)
    r = httpx.post(make_server("v1").url + "/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_switch_canary_rollback_and_pinning(make_server):
    srv = make_server("v1")
    admin = httpx.Client(base_url=srv.url, timeout=60)
    st = admin.post("/admin/slots/green/load", json={"version": "v2"}).json()
    assert st["slots"]["green"]["version"] == "v2" and st["live"] == "blue"
    c = _client(srv)
    msg = [{"role": "user", "content": "I was charged twice"}]

    def served(model="tuneloop"):
        return c.chat.completions.with_raw_response.create(model=model, messages=msg, max_tokens=4,
                                                           temperature=0).headers["x-tuneloop-version"]

    assert served("green") == "v2" and served("v2") == "v2" and served() == "v1"
    # a canary at 25% sends exactly every fourth routed request to green
    admin.post("/admin/canary", json={"slot": "green", "weight": 0.25}).raise_for_status()
    got = [served() for _ in range(40)]
    assert got.count("v2") == 10 and got.count("v1") == 30
    assert admin.post("/admin/rollback").json()["canary"] is None
    assert {served() for _ in range(8)} == {"v1"}
    # switch: green live, blue stays warm; rollback switches back
    st = admin.post("/admin/switch", json={"slot": "green"}).json()
    assert st["live"] == "green" and st["slots"]["blue"]["state"] == "ready"
    assert served() == "v2"
    # the live slot can't be replaced or unloaded
    r = admin.post("/admin/slots/green/load", json={"version": "v1"})
    assert r.status_code == 400 and "idle slot" in r.json()["error"]["message"]
    assert admin.post("/admin/slots/green/unload").status_code == 400
    assert admin.post("/admin/rollback").json()["live"] == "blue"
    assert served() == "v1"
    # a canary on the live slot is refused with the reason
    r = admin.post("/admin/canary", json={"slot": "blue", "weight": 0.5})
    assert r.status_code == 400 and "idle" in r.json()["error"]["message"]


def test_admin_routes_need_the_token_when_set(make_server):
    srv = make_server("v1", admin_token="s3cret")
    assert httpx.get(srv.url + "/admin/status").status_code == 401
    assert httpx.post(srv.url + "/admin/rollback", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.get(srv.url + "/admin/status", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["live"] == "blue"
    # the OpenAI routes stay open
    assert httpx.get(srv.url + "/v1/models").status_code == 200


def test_unknown_version_load_fails_and_leaves_slot_empty(make_server):
    srv = make_server("v1")
    r = httpx.post(srv.url + "/admin/slots/green/load", json={"version": "v99"}, timeout=60)
    assert r.status_code >= 400 and "v99" in r.json()["error"]["message"]
    st = httpx.get(srv.url + "/admin/status").json()
    assert st["slots"]["green"]["state"] == "empty" and "v99" in st["slots"]["green"]["error"]
    assert st["live"] == "blue"


def test_unload_waits_for_requests_in_flight(registry, tiny_base):
    from tuneloop.serving.app import Loader
    from tuneloop.serving.slots import Router

    router = Router()
    loader = Loader(registry, "tuneloop/tiny-llama")
    for slot, ref in (("blue", "v1"), ("green", "v2")):
        router.load(slot, lambda ref=ref: loader(ref))
    released = threading.Event()
    holding = threading.Event()

    def request():
        with router.serving("green"):
            holding.set()
            released.wait(10)

    t = threading.Thread(target=request)
    t.start()
    holding.wait(5)
    done = []
    u = threading.Thread(target=lambda: done.append(router.unload("green", timeout=10)))
    u.start()
    time.sleep(0.3)
    assert not done and router.slots["green"].state == "draining"  # still waiting for the request
    released.set()
    u.join(10)
    t.join(10)
    assert done == [True] and router.slots["green"].engine is None


def test_load_across_a_blue_green_switch_loses_no_request(make_server):
    srv = make_server("v1")
    admin = httpx.Client(base_url=srv.url, timeout=60)
    admin.post("/admin/slots/green/load", json={"version": "v2"}).raise_for_status()
    c = _client(srv)
    results, lock = [], threading.Lock()
    n_per_worker, workers = 40, 6

    def worker():
        for _ in range(n_per_worker):
            try:
                raw = c.chat.completions.with_raw_response.create(
                    model="tuneloop", messages=[{"role": "user", "content": "where is my refund"}], max_tokens=4,
                    temperature=0)
                v = raw.headers["x-tuneloop-version"]
            except Exception as e:  # counted, not raised: the assertion below reports them
                v = f"failed: {e}"
            with lock:
                results.append(v)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    while len(results) < 80:
        time.sleep(0.01)
    admin.post("/admin/switch", json={"slot": "green"}).raise_for_status()
    for t in threads:
        t.join(120)
    failed = [r for r in results if r.startswith("failed")]
    assert len(results) == n_per_worker * workers and failed == []
    assert results.count("v1") >= 80 and results.count("v2") > 0


def test_a_tampered_adapter_is_refused_at_load_with_a_checksum_error(make_server, registry):
    srv = make_server("v1")
    weights = registry.get("v2").path / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    weights.write_bytes(bytes(data))
    r = httpx.post(srv.url + "/admin/slots/green/load", json={"version": "v2"}, timeout=60)
    assert r.status_code == 500
    msg = r.json()["error"]["message"]
    assert "adapter_model.safetensors" in msg and "checksum" in msg and "v2" in msg
    st = httpx.get(srv.url + "/admin/status").json()
    assert st["slots"]["green"]["state"] == "empty" and st["live"] == "blue"
    assert httpx.get(srv.url + "/health").status_code == 200  # the live slot serves on
