"""Streaming and batching across requests, driven by the `openai` SDK's stream iterator over real HTTP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tuneloop.demo.data import read_jsonl


def _client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _questions(demo_files, n=12):
    rows = read_jsonl(demo_files["heldout"])[:n]
    return [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]


def _streamed_chat(c, msgs, **kw):
    """(text, finish_reason, usage, chunks) of one streamed chat answer."""
    chunks = list(c.chat.completions.create(model="tuneloop", messages=msgs, stream=True, **kw))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    usage = [ch.usage for ch in chunks if ch.usage is not None]
    return text, finish, usage, chunks


def test_streamed_chat_and_completion_equal_the_plain_answers(make_server, demo_files):
    srv = make_server("v1")
    c = _client(srv)
    for msgs in _questions(demo_files):
        plain = c.chat.completions.create(model="tuneloop", messages=msgs, max_tokens=12, temperature=0)
        text, finish, usage, chunks = _streamed_chat(c, msgs, max_tokens=12, temperature=0,
                                                     stream_options={"include_usage": True})
        assert text == plain.choices[0].message.content and finish == [plain.choices[0].finish_reason]
        assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert len(usage) == 1 and chunks[-1].choices == [] and chunks[-1].usage == usage[0]
        assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (plain.usage.prompt_tokens,
                                                                        plain.usage.completion_tokens)
    # no include_usage: no usage chunk; a stop string cuts the stream as it cuts the plain answer
    for stop in ([" "], ["e"], None):
        plain = c.completions.create(model="tuneloop", prompt="Question: where is my parcel?\nAnswer:",
                                     max_tokens=10, temperature=0, stop=stop)
        chunks = list(c.completions.create(model="tuneloop", prompt="Question: where is my parcel?\nAnswer:",
                                           max_tokens=10, temperature=0, stop=stop, stream=True))
        assert all(ch.object == "text_completion" and ch.usage is None for ch in chunks)
        assert "".join(ch.choices[0].text for ch in chunks) == plain.choices[0].text
        assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    raw = httpx.post(srv.url + "/v1/chat/completions", json={"messages": _questions(demo_files)[0], "stream": True,
                                                            "max_tokens": 4}, timeout=60)
    assert raw.headers["content-type"].startswith("text/event-stream") and raw.headers["x-tuneloop-slot"] == "blue"
    assert raw.text.rstrip().endswith("data: [DONE]")
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tuneloop", messages=_questions(demo_files)[0], stream=False,
                                  stream_options={"include_usage": True})
    assert "stream_options" in str(e.value) and "stream=true" in str(e.value)


def test_concurrent_requests_decode_in_one_batch_with_one_at_a_time_answers(make_server, demo_files):
    srv = make_server("v1")
    c = _client(srv)
    qs = _questions(demo_files, 16)
    alone = [c.chat.completions.create(model="tuneloop", messages=m, max_tokens=16, temperature=0)
             .choices[0].message.content for m in qs]
    loop = srv.server.config.app.state.router.slots["blue"].engine._decoder()
    before = dict(loop.counts)

    def ask(i):
        if i % 2:
            return _streamed_chat(c, qs[i], max_tokens=16, temperature=0)[0]
        return c.chat.completions.create(model="tuneloop", messages=qs[i], max_tokens=16,
                                         temperature=0).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(len(qs))))
    assert together == alone
    counts = loop.counts
    assert counts["max_rows"] >= 2, counts  # some requests shared a forward
    assert counts["steps"] - before["steps"] < counts["tokens"] - before["tokens"]


@pytest.fixture
def endless_server(tiny_base):
    """A server whose model never ends an answer by itself: a random Llama whose end-of-sequence logit is
    always 0 while the others are spread around it, so only max_tokens (or the client) stops it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import Server, free_port
    from tuneloop.models.base import load_tokenizer
    from tuneloop.serving.app import create_app
    from tuneloop.serving.engine import Engine
    from tuneloop.serving.slots import Router

    tok = load_tokenizer(tiny_base)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=4096))
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = 0
    router = Router()
    router.load("blue", lambda: Engine("endless", model.eval(), tok))
    srv = Server(create_app(router, max_concurrency=2, max_queue=0), free_port())
    with srv:
        yield srv


def test_a_client_that_goes_away_mid_stream_stops_its_generation_and_frees_its_slot(endless_server):
    srv = endless_server
    c = _client(srv)
    app = srv.server.config.app
    engine = app.state.router.slots["blue"].engine
    stream = c.completions.create(model="tuneloop", prompt="once upon a time", max_tokens=3000, stream=True)
    got = []
    for ch in stream:
        got.append(ch.choices[0].text)
        if len(got) == 5:
            break
    assert app.state.admission.running == 1
    stream.close()  # the client goes away
    deadline = time.time() + 30
    while time.time() < deadline and (engine._loop.active or app.state.admission.running):
        time.sleep(0.05)
    counts = engine._loop.counts
    assert engine._loop.active == 0 and app.state.admission.running == 0
    assert counts["cancelled"] == 1 and counts["tokens"] < 3000, counts
    tokens = counts["tokens"]
    time.sleep(0.5)
    assert engine._loop.counts["tokens"] == tokens  # nothing is decoded for it any more
    # both places are free: two more requests run at once with no queue (max_queue 0 would refuse a third)
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda _: c.completions.create(model="tuneloop", prompt="hi", max_tokens=20), range(2)))
    assert all(o.usage.completion_tokens == 20 and o.choices[0].finish_reason == "length" for o in outs)
    assert 'tuneloop_serving_requests_total{outcome="cancelled",slot="blue",version="endless"} 1.0' in \
        httpx.get(srv.url + "/metrics").text


def test_a_stream_that_fails_mid_way_ends_with_an_error_event(endless_server):
    """An error after the first bytes (here the model itself fails on the 4th step) reaches the SDK as an
    APIError from the stream, and the slot is free again."""
    srv = endless_server
    engine = srv.server.config.app.state.router.slots["blue"].engine
    real, calls = engine.model.forward, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("the accelerator fell over")
        return real(*a, **k)

    engine.model.forward = failing
    try:
        with pytest.raises(openai.APIError) as e:
            for _ in _client(srv).completions.create(model="tuneloop", prompt="hi", max_tokens=50, stream=True):
                pass
    finally:
        del engine.model.forward
    assert "RuntimeError" in str(e.value)
    assert srv.server.config.app.state.admission.running == 0
    out = _client(srv).completions.create(model="tuneloop", prompt="hi", max_tokens=5)
    assert out.usage.completion_tokens == 5
