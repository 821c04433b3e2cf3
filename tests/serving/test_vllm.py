"""vLLM as the serving engine: `tuneloop serve --engine vllm` keeps the slots as LoRA adapters on a vLLM server.

The vLLM server is tests/fakes/vllm_server.py: it speaks vLLM's documented routes (/v1/load_lora_adapter,
/v1/unload_lora_adapter, /v1/models, /health, /metrics, the OpenAI routes) and really generates with the tiny
base and the adapters it loads. The promote flow drives the tuneloop server exactly as it drives the
built-in engine; what is checked here is what reaches vLLM."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from fakes.vllm_server import FakeVllm
from servekit import fault_on_canary

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def promote(prefect_harness):
    sys.path.insert(0, str(ROOT))
    from tuneloop.flows.promote import promote

    return promote


@pytest.fixture
def vllm(tiny_base):
    with FakeVllm(tiny_base, served_model_name="tiny-base") as fake:
        yield fake


@pytest.fixture
def gateway(vllm, registry):
    """`tuneloop serve --engine vllm` (its app) in front of the fake vLLM, blue serving v1."""
    from conftest import Server, free_port
    from tuneloop.serving.server import build_app

    app = build_app(registry_url=str(registry.root), version="v1", allow_faults=True, engine="vllm",
                    vllm_url=vllm.url, log=lambda m: None)
    with Server(app, free_port()) as srv:
        yield srv


def _spec(srv, demo_files, **kw):
    from tuneloop.specs import PromoteSpec

    return PromoteSpec(**{"server": srv.url, "smoke": str(demo_files["heldout"]), "smoke_items": 24,
                          "probe_items": 12, "step_seconds": 0.5, "watch_seconds": 1.0, **kw})


def _wait(cond, seconds=30.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _streamer(url: str, results: list, stop: threading.Event) -> None:
    """The application: streamed chats through the served name with the `openai` SDK until `stop`."""
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    while not stop.is_set():
        try:
            with c.chat.completions.with_streaming_response.create(
                    model="tuneloop", max_tokens=4, stream=True,
                    messages=[{"role": "user", "content": "my card was declined"}]) as r:
                chunks = list(r.parse())
                results.append(r.headers.get("x-tuneloop-version") if chunks and chunks[-1].choices
                               and chunks[-1].choices[0].finish_reason else "no finish")
        except openai.OpenAIError as e:
            results.append(f"failed {type(e).__name__}: {e}")


def test_promotion_loads_validates_by_name_and_moves_traffic_on_vllm(promote, gateway, vllm, registry, demo_files):
    assert vllm.loaded() == {"tuneloop-blue-v1": str(registry.adapter_for("v1"))}
    health = httpx.get(gateway.url + "/health").json()
    assert health["status"] == "ok" and health["dependencies"]["engine"]["ok"] is True
    registry.set_alias("production", "v1")
    results, stop = [], threading.Event()
    clients = [threading.Thread(target=_streamer, args=(gateway.url, results, stop)) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        result = promote(_spec(gateway, demo_files, version="v2"))
    finally:
        stop.set()
        for t in clients:
            t.join(60)
    assert result["outcome"] == "promoted", result
    assert registry.aliases()["production"] == "v2" and result["checks"][0]["accuracy"] >= 0.7
    assert [r for r in results if r not in ("v1", "v2")] == [] and {"v1", "v2"} <= set(results)  # 0 failed
    assert set(vllm.loaded()) == {"tuneloop-blue-v1", "tuneloop-green-v2"}  # the old one kept warm
    asked = [r["body"]["model"] for r in vllm.requests if r["path"] == "/v1/chat/completions"]
    assert "tuneloop-green-v2" in asked and "tuneloop-blue-v1" in asked and "tuneloop" not in asked
    loads = [r["body"] for r in vllm.requests if r["path"] == "/v1/load_lora_adapter"]
    assert loads[-1] == {"lora_name": "tuneloop-green-v2", "lora_path": str(registry.adapter_for("v2"))}
    metrics = httpx.get(gateway.url + "/metrics").text
    assert "tuneloop_serving_requests_total" in metrics and "vllm:generation_tokens_total" in metrics


def test_a_canary_breach_rolls_back_and_unloads_the_candidate_from_vllm(promote, gateway, vllm, registry,
                                                                        demo_files):
    registry.set_alias("production", "v1")
    spec = _spec(gateway, demo_files, version="v2", mode="canary", step_seconds=1.5)

    t = fault_on_canary(gateway.url, {"corrupt": True})
    result = promote(spec)
    t.join(30)
    assert result["outcome"] == "rolled-back" and "smoke accuracy" in result["reason"], result
    assert registry.aliases()["production"] == "v1"
    assert _wait(lambda: set(vllm.loaded()) == {"tuneloop-blue-v1"}), vllm.loaded()  # unloaded from vLLM
    unloads = [r["body"] for r in vllm.requests if r["path"] == "/v1/unload_lora_adapter"]
    assert unloads == [{"lora_name": "tuneloop-green-v2"}]
    st = httpx.get(gateway.url + "/admin/status").json()
    assert st["live"] == "blue" and st["canary"] is None and st["slots"]["green"]["state"] == "empty"
    # a bad model never gets past validation, and unloading the idle slot unloads its adapter
    rejected = promote(_spec(gateway, demo_files, version="v3"))
    assert rejected["outcome"] == "rejected" and "smoke accuracy" in rejected["reason"], rejected
    assert "tuneloop-green-v3" in vllm.loaded()
    httpx.post(gateway.url + "/admin/slots/green/unload", timeout=60).raise_for_status()
    assert set(vllm.loaded()) == {"tuneloop-blue-v1"}


def test_vllm_errors_are_clear(tiny_base, registry, vllm, gateway):
    from tuneloop.errors import UserError
    from tuneloop.serving.server import build_app

    with pytest.raises(UserError, match="--vllm-url"):
        build_app(registry_url=str(registry.root), engine="vllm", log=lambda m: None)
    from tuneloop.serving.vllm import VllmClient

    with pytest.raises(UserError) as e:  # vLLM reads adapters on its own machine: a path it cannot see
        VllmClient(vllm.url).load_lora("x", "/nowhere/adapter", object())
    assert "/nowhere/adapter" in str(e.value) and "same path" in str(e.value)
    r = httpx.post(gateway.url + "/admin/slots/green/load", json={"version": "v9"}, timeout=60)
    assert r.status_code in (400, 404) and "v9" in r.json()["error"]["message"]
    vllm.fail_next(1, 503)  # vLLM fails a generation: the client gets a 5xx naming vLLM, the next one works
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.status_code >= 500 and "vLLM" in str(e.value)
    assert c.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "hi"}],
                                     max_tokens=2).choices[0].finish_reason in ("stop", "length")
