"""Property-based fuzzing of the serving API's request bodies (hypothesis), in process through httpx's ASGI
transport, with the real tiny model: whatever the body, the answer is a 2xx, or a 4xx in OpenAI's error shape
whose message names the field and the rule and says the fix; never a 5xx. Each surface gets FUZZ_INPUTS inputs;
the run ends with `surface: N inputs, K accepted, M rejected`.

Strings include lone surrogates, special-token text and NUL; numbers include NaN, infinities and integers far
past 64 bits.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servekit import fuzz_tally, tenant_registry  # noqa: F401 (fixtures)

FUZZ_INPUTS = 10_000
BATCH = 10  # inputs per hypothesis example: generating a list of them costs less per input than one each
MAX_TOKENS = (1, 2)  # valid bodies ask for at most this many tokens: the model runs, briefly
SETTINGS = settings(max_examples=FUZZ_INPUTS // BATCH, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

ODD_VALUES = [0, 1, 2, -1, 3, 4096, 4097, 2**63, -2**63 - 1, 2**64, 10**400, -10**400, 1.0, 2.0, 0.5, -0.0, 1e-300,
              5e-324, 1e308, float("nan"), float("inf"), float("-inf"), "", "1", "null", "true", True, False, None,
              [], {}, [1], {"type": "text"}, "\ud800", "\udfff x", "\x00", "<|end|>", "<|assistant|>", "<s>"]
any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), any_text, st.sampled_from(ODD_VALUES))
json_any = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(any_text, kids, max_size=4),
                        max_leaves=6)
json_flat = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(any_text, scalars, max_size=3))  # cheaper
safe_text = st.one_of(st.text(max_size=20), st.sampled_from(["", "\x00", "<|end|>", "<|user|>hi<|assistant|>", "<s>",
                                                             "I was charged twice"]))
CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
               "n", "stream", "stream_options", "user"]
COMPLETION_FIELDS = ["model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream",
                     "stream_options", "user"]


def _optional() -> dict:
    return {"model": st.sampled_from(["tuneloop", "tuneloop@blue", "tuneloop@green", "blue", "v1", "", None]),
            "temperature": st.none() | st.floats(0.0, 2.0), "top_p": st.none() | st.floats(0.0, 1.0),
            "stop": st.none() | safe_text | st.lists(safe_text, max_size=4),
            "seed": st.none() | st.integers(-2**63, 2**63 - 1), "n": st.sampled_from([1, 1.0, None]),
            "stream": st.sampled_from([False, None, True]), "user": safe_text,
            "stream_options": st.none() | st.fixed_dictionaries({}, optional={"include_usage": st.booleans()})}


def valid_body(kind: str):
    tokens = st.sampled_from(MAX_TOKENS)
    if kind == "chat":
        part = st.fixed_dictionaries({"type": st.just("text"), "text": safe_text})
        message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "developer"]),
                                         "content": safe_text | st.lists(part, max_size=2)})
        required = {"messages": st.lists(message, min_size=1, max_size=3)}
    else:
        required = {"prompt": safe_text | st.lists(safe_text, min_size=1, max_size=1)}
    return st.one_of(st.fixed_dictionaries({**required, "max_tokens": tokens}, optional=_optional()),
                     st.fixed_dictionaries({**required, "max_completion_tokens": tokens}, optional=_optional())
                     ).map(_stream_options_with_stream_only)


def _stream_options_with_stream_only(body: dict) -> dict:
    """As OpenAI's API, stream_options is valid only with stream=true."""
    if not body.get("stream") and body.get("stream_options") is not None:
        del body["stream_options"]
    return body


TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
TOGETHER = {"stream": ("stream_options",), "stream_options": ("stream",)}  # stream_options needs stream=true


def _cap(body):
    """Keep the model's work short: a body asks for at most max(MAX_TOKENS) tokens or is invalid there (a valid
    larger count, or none and the server's default, would make each generation long)."""
    if isinstance(body, dict):
        for f in TOKEN_FIELDS:
            v = body.get(f, "absent")
            if v is None or (not isinstance(v, bool) and isinstance(v, (int, float)) and 2 < v <= 4096):
                body[f] = max(MAX_TOKENS)
        if not any(f in body for f in TOKEN_FIELDS):
            body["max_tokens"] = max(MAX_TOKENS)
    return body


def _check(resp, field: str | None = None) -> bool:
    """Whether the body was accepted; fails on a 5xx or on a rejection that does not name its field and rule."""
    assert resp.status_code < 500, resp.text
    if resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream"):
        events = [line[len("data: "):] for line in resp.text.split("\n\n") if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", resp.text  # a stream ends with [DONE], never an error event
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] in ("chat.completion.chunk", "text_completion") for c in chunks), chunks
        assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]) == 1, chunks
        return True
    if resp.status_code == 200:
        data = resp.json()
        assert data["choices"] and data["usage"]["completion_tokens"] <= max(MAX_TOKENS)
        return True
    assert 400 <= resp.status_code < 500
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str), err
    assert "Fix:" in err["message"], err  # value: rule. Fix: what to do
    if err["param"] is None:
        assert err["message"].startswith("request body"), err
    else:
        root = re.split(r"[\[.]", err["param"])[0]
        assert root in err["message"], err
        if field is not None:  # a rule about two fields may name either
            assert root == field or root in TOGETHER.get(field, ()), (field, err)
    return False


class InProcess:
    """Requests straight into the ASGI app on one event loop owned by the test thread (httpx's ASGI transport):
    no thread hop per request, unlike TestClient's portal, so 10,000 inputs take seconds, not minutes."""

    def __init__(self, app):
        import asyncio

        import httpx

        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fuzz")

    def post(self, path: str, content: bytes | str, headers: dict | None = None):
        return self.loop.run_until_complete(self.http.post(path, content=content, headers=headers))

    def get(self, path: str, params: dict | None = None):
        return self.loop.run_until_complete(self.http.get(path, params=params))

    def close(self):
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


def _client(registry_dir: str, allow_faults: bool) -> InProcess:
    """An app serving v1 on blue and the bare base on green."""
    from tuneloop.registry import open_registry
    from tuneloop.serving.app import Loader, create_app
    from tuneloop.serving.slots import Router
    from tuneloop.specs import TINY_BASE

    loader = Loader(open_registry(registry_dir), TINY_BASE)
    router = Router()
    router.load("blue", lambda: loader("v1"))
    router.load("green", lambda: loader("base"))
    return InProcess(create_app(router, loader, "tuneloop", registry=loader.registry, allow_faults=allow_faults))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's matmuls are too small to split: on a shared 2-core machine a second intra-op thread
    spin-waits and makes each generation up to 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def client(tenant_registry):
    c = _client(tenant_registry, allow_faults=False)
    yield c
    c.close()


@pytest.fixture
def admin_client(tenant_registry):
    """Its own app: the admin fuzz switches, sets canaries and injects faults."""
    c = _client(tenant_registry, allow_faults=True)
    yield c
    c.close()


def inference_batches(kind: str, fields: list[str]):
    """BATCH inputs, each (how, the field a rejection must name or None, raw body): one valid body (max_tokens
    1-2; it must be answered), then variants of it with one known field replaced (absent optional fields are
    covered by valid_body) or, for chat, a key of its first message or content part replaced (a rejection must
    name that field), arbitrary JSON, and raw bytes. Strategies are built once and the batch shares its valid
    body: drawing costs more than a rejected request."""
    valid = valid_body(kind)
    item = st.one_of(*[st.tuples(st.just("mutated"), st.sampled_from(fields),
                                 json_flat.filter(lambda v: v is not None))] * 4,  # null means "the default"
                     *[st.tuples(st.just("anything"), st.none(),
                                 json_any | st.dictionaries(st.sampled_from(fields), json_flat, max_size=5))] * 3,
                     st.tuples(st.just("bytes"), st.none(), st.binary(max_size=64)),
                     *([st.tuples(st.just("message"), st.sampled_from(["role", "content", "type", "text"]),
                                  json_flat)] * 2 if kind == "chat" else []))

    def expand(drawn):
        body, items = drawn
        out = [("valid", None, json.dumps(_cap(body)))]
        for how, field, value in items:
            if how == "mutated":
                out.append((how, field, json.dumps(_cap({**body, field: value}))))
            elif how == "message":  # inside the first message: its role or content, or a content part's key
                m = dict(body["messages"][0])
                if field in ("role", "content"):
                    m[field] = value
                else:
                    m["content"] = [{"type": "text", "text": "hello", field: value}]
                out.append((how, "messages", json.dumps(_cap({**body, "messages": [m, *body["messages"][1:]]}))))
            else:
                out.append((how, None, value if how == "bytes" else json.dumps(_cap(value))))
        return out

    return st.tuples(valid, st.lists(item, min_size=BATCH - 1, max_size=BATCH - 1)).map(expand)


def _fuzz(client, tally, path: str, kind: str, fields: list[str]):
    @SETTINGS
    @given(inference_batches(kind, fields))
    def run(inputs):
        for how, field, raw in inputs:
            resp = client.post(path, content=raw, headers={"content-type": "application/json"})
            accepted = _check(resp, field)
            if how == "valid":
                assert accepted, resp.text
            tally(path.removeprefix("/v1/"), accepted)

    run()
    assert tally.total(path.removeprefix("/v1/")) >= FUZZ_INPUTS


def test_fuzz_chat_completions(client, fuzz_tally):
    _fuzz(client, fuzz_tally, "/v1/chat/completions", "chat", [f for f in CHAT_FIELDS if f != "user"])


def test_fuzz_completions(client, fuzz_tally):
    _fuzz(client, fuzz_tally, "/v1/completions", "completion", [f for f in COMPLETION_FIELDS if f != "user"])


SLOT = st.sampled_from(["blue", "green", "purple", ""]) | st.text(max_size=8)
REF = json_flat | st.sampled_from(["v99", "v0", "../v1", "v1/../v2", "champion", "production", "v1 ", "base "])


ADMIN_BODY = st.fixed_dictionaries({}, optional={"slot": SLOT | json_flat, "weight": json_flat, "version": REF,
                                                 "error_rate": json_flat, "delay_s": json_flat, "corrupt": json_flat})


def _admin_request(args):
    route, slot, body, query = args
    s = urllib.parse.quote(slot, safe="") or "blue"
    if route == "stats":
        return "GET", f"/admin/slots/{s}/stats", query
    if route == "faults" and isinstance(body, dict) and body.get("delay_s"):
        body["delay_s"] = 0  # a real delay only slows the run down
    path = {"switch": "/admin/switch", "canary": "/admin/canary", "rollback": "/admin/rollback",
            "faults": f"/admin/slots/{s}/faults", "load": f"/admin/slots/{s}/load"}[route]
    return "POST", path, json.dumps(body)


# (method, path, query or JSON body): switch, canary, faults, load (of refs that name no loadable version:
# loading one takes a second), stats, rollback
ADMIN_INPUTS = st.tuples(st.sampled_from(["switch", "canary", "faults", "load", "stats", "rollback"]), SLOT,
                         ADMIN_BODY | json_any,
                         st.dictionaries(st.sampled_from(["since", "version"]), st.text(max_size=8))
                         ).map(_admin_request)


def test_fuzz_admin_bodies(admin_client, fuzz_tally):
    @SETTINGS
    @given(st.lists(ADMIN_INPUTS, min_size=BATCH, max_size=BATCH))
    def run(inputs):
        for method, path, arg in inputs:
            if method == "GET":
                resp = admin_client.get(path, params=arg)
            else:
                resp = admin_client.post(path, content=arg, headers={"content-type": "application/json"})
            assert resp.status_code < 500, resp.text
            if resp.status_code >= 400:
                err = resp.json()["error"]
                assert set(err) == {"message", "type", "param", "code"} and "Fix:" in err["message"], err
            fuzz_tally("admin", resp.status_code < 400)

    run()
    assert fuzz_tally.total("admin") >= FUZZ_INPUTS
