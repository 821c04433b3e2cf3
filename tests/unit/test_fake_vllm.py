"""FakeVllm through the openai SDK and httpx: LoRA adapters loaded and unloaded at runtime change what a real
tiny model answers, and its streams, errors and metrics have vLLM's shapes."""

from __future__ import annotations

import shutil

import httpx
import openai
import pytest
import torch
from fakes.vllm_server import FakeVllm
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.server

KEY = "sk-vllm"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = ["What is the capital of France?", "How do I reset my password?", "Name a color.", "Say hello."]


@pytest.fixture(scope="module")
def adapter(tiny_base, tmp_path_factory) -> str:
    """A LoRA with large random weights: it answers differently from the base."""
    from peft import LoraConfig, get_peft_model

    from tuneloop.models.base import load_model

    model = get_peft_model(load_model(tiny_base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                torch.nn.init.normal_(p, 0, 0.3, generator=gen)
    folder = tmp_path_factory.mktemp("lora")
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def vllm(tiny_base):
    with FakeVllm(tiny_base, api_key=KEY) as fake:
        yield fake


def sdk(fake: FakeVllm) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key=KEY, max_retries=0)


def post(fake: FakeVllm, path: str, body: dict, headers: dict | None = AUTH) -> httpx.Response:
    return httpx.post(fake.url + path, json=body, headers=headers)


def load(fake: FakeVllm, name: str, path: str) -> httpx.Response:
    return post(fake, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})


def unload(fake: FakeVllm, name: str) -> httpx.Response:
    return post(fake, "/v1/unload_lora_adapter", {"lora_name": name})


def answers(ai: openai.OpenAI, model: str) -> list[str]:
    return [ai.chat.completions.create(model=model, messages=[{"role": "user", "content": p}], temperature=0,
                                       max_tokens=12).choices[0].message.content for p in PROMPTS]


def models(fake: FakeVllm) -> list[dict]:
    r = httpx.get(fake.url + "/v1/models", headers=AUTH)
    assert r.status_code == 200 and r.json()["object"] == "list"
    return r.json()["data"]


def error(code: int, message: str, kind: str, param: str | None = None) -> dict:
    return {"object": "error", "message": message, "type": kind, "param": param, "code": code}


def test_adapters_load_answer_and_unload(vllm, adapter, tiny_base):
    ai = sdk(vllm)
    (card,) = models(vllm)
    assert card["id"] == "base-model" and [m.id for m in ai.models.list()] == ["base-model"]
    assert (card["owned_by"], card["root"], card["parent"], card["max_model_len"]) == ("vllm", tiny_base, None, 512)
    base = answers(ai, "base-model")

    r = load(vllm, "cand", adapter)
    assert (r.status_code, r.text) == (200, "Success: LoRA adapter 'cand' added successfully.")
    assert r.headers["content-type"].startswith("text/plain")
    assert [m.id for m in ai.models.list()] == ["base-model", "cand"]
    lora = models(vllm)[1]
    assert (lora["root"], lora["parent"], lora["max_model_len"]) == (adapter, "base-model", None)
    assert vllm.loaded() == {"cand": adapter}

    tuned = answers(ai, "cand")
    assert tuned != base, "the LoRA must change at least one greedy answer"
    assert answers(ai, "base-model") == base  # the base answers with the adapter switched off
    assert answers(ai, "cand") == tuned  # greedy is reproducible

    assert load(vllm, "twin", adapter).status_code == 200  # a second adapter: peft's load_adapter
    assert unload(vllm, "cand").text == "Success: LoRA adapter 'cand' removed successfully."
    assert answers(ai, "twin") == tuned
    assert unload(vllm, "twin").status_code == 200  # the last one: back to the plain base
    assert answers(ai, "base-model") == base and vllm.loaded() == {}
    assert [m["id"] for m in models(vllm)] == ["base-model"]

    with pytest.raises(openai.NotFoundError):
        answers(ai, "cand")
    r = post(vllm, "/v1/chat/completions", {"model": "cand", "messages": [{"role": "user", "content": "hi"}]})
    assert (r.status_code, r.json()) == (404, error(404, "The model `cand` does not exist.", "NotFoundError", "model"))


def test_stream_matches_the_plain_answer(vllm, adapter):
    ai = sdk(vllm)
    assert load(vllm, "cand", adapter).status_code == 200
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    plain = ai.chat.completions.create(model="cand", messages=msgs, temperature=0, max_tokens=16)
    assert plain.object == "chat.completion" and plain.id.startswith("chatcmpl-") and plain.model == "cand"
    assert plain.choices[0].message.content and plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    chunks = list(ai.chat.completions.create(model="cand", messages=msgs, temperature=0, max_tokens=16, stream=True,
                                             stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [plain.choices[0].finish_reason]
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()

    text = ai.completions.create(model="cand", prompt="The", max_tokens=8, temperature=0)
    assert text.object == "text_completion" and text.choices[0].text
    parts = list(ai.completions.create(model="cand", prompt="The", max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in parts) == text.choices[0].text
    assert parts[-1].choices[0].finish_reason == text.choices[0].finish_reason

    r = post(vllm, "/v1/completions", {"model": "cand", "prompt": "The", "max_tokens": 4, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream") and r.text.endswith("data: [DONE]\n\n")


def test_sampling_seed_and_stop(vllm):
    ai = sdk(vllm)

    def complete(**kw):
        kw.setdefault("max_tokens", 10)
        return ai.completions.create(model="base-model", prompt="The", **kw).choices[0]

    assert complete(temperature=1.5, seed=7).text == complete(temperature=1.5, seed=7).text
    assert len({complete(temperature=1.5, seed=s).text for s in range(6)}) > 1, "temperature > 0 samples"
    greedy = complete(temperature=0)
    assert len({complete(temperature=0).text for _ in range(2)} | {greedy.text}) == 1
    stop = greedy.text.strip()[-2:]
    cut = complete(temperature=0, stop=[stop])
    assert (cut.text, cut.finish_reason) == (greedy.text[:greedy.text.index(stop)], "stop")
    assert complete(temperature=0, max_tokens=1).finish_reason in ("length", "stop")


def test_errors_have_vllm_shapes(vllm, adapter, tmp_path):
    ai = sdk(vllm)
    base = answers(ai, "base-model")
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    r = load(vllm, "bad", str(broken))
    assert r.status_code == 400 and r.json()["type"] == "BadRequestError" and str(broken) in r.json()["message"]
    assert answers(ai, "base-model") == base and vllm.loaded() == {}  # a failed load leaves the base clean
    r = load(vllm, "gone", str(tmp_path / "missing"))
    assert (r.status_code, r.json()["type"]) == (404, "NotFoundError") and "missing" in r.json()["message"]

    assert load(vllm, "cand", adapter).status_code == 200
    r = load(vllm, "cand", adapter)
    assert (r.status_code, r.json()) == (400, error(400, "The lora adapter 'cand' has already been loaded.",
                                                    "BadRequestError"))
    r = post(vllm, "/v1/load_lora_adapter", {"lora_name": "x"})
    assert r.json() == error(400, "Both 'lora_name' and 'lora_path' must be provided.", "BadRequestError")
    r = unload(vllm, "nope")
    assert (r.status_code, r.json()) == (404, error(404, "The lora adapter 'nope' cannot be found.", "NotFoundError"))
    with pytest.raises(openai.NotFoundError):
        ai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])

    assert httpx.get(vllm.url + "/v1/models").status_code == 401
    r = httpx.get(vllm.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=vllm.url + "/v1", api_key="wrong", max_retries=0).models.list()
    r = httpx.get(vllm.url + "/health")
    assert (r.status_code, r.content) == (200, b"")
    assert httpx.get(vllm.url + "/metrics").status_code == 200
    assert httpx.get(vllm.url + "/v2/nothing", headers=AUTH).status_code == 404
    assert httpx.get(vllm.url + "/v1/chat/completions", headers=AUTH).status_code == 405

    vllm.fail_next(1, 503)
    with pytest.raises(openai.APIStatusError) as e:
        answers(ai, "cand")
    assert e.value.status_code == 503 and e.value.body["type"] == "ServiceUnavailableError"
    assert len(answers(ai, "cand")) == len(PROMPTS)
    assert vllm.requests[-1]["path"] == "/v1/chat/completions" and vllm.requests[-1]["body"]["model"] == "cand"


def metrics(fake: FakeVllm) -> dict[str, float]:
    r = httpx.get(fake.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            assert s.labels["model_name"] == "base-model"
            extra = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
            out[f"{s.name}{{{extra}}}" if extra else s.name] = s.value
    return out


def test_metrics_count_what_was_served(vllm):
    ai = sdk(vllm)
    before = metrics(vllm)
    assert before["vllm:num_requests_running"] == before["vllm:num_requests_waiting"] == 0
    done = ai.chat.completions.create(model="base-model", messages=[{"role": "user", "content": PROMPTS[0]}],
                                      temperature=0, max_tokens=5)
    more = ai.completions.create(model="base-model", prompt="The", max_tokens=3, temperature=0)
    after = metrics(vllm)

    def grew(name: str) -> float:
        return after[name] - before[name]

    assert grew("vllm:request_success_total{finished_reason=stop}") + \
        grew("vllm:request_success_total{finished_reason=length}") == 2
    assert grew("vllm:prompt_tokens_total") == done.usage.prompt_tokens + more.usage.prompt_tokens
    assert grew("vllm:generation_tokens_total") == done.usage.completion_tokens + more.usage.completion_tokens
    assert grew("vllm:e2e_request_latency_seconds_count") == 2
    assert grew("vllm:e2e_request_latency_seconds_bucket{le=+Inf}") == 2
    assert after["vllm:e2e_request_latency_seconds_sum"] > before["vllm:e2e_request_latency_seconds_sum"]
