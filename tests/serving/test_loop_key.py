"""The loop key: what the promote runs started by the champion.changed trigger (no request, so no promotion's own
key) present to the service. It reaches the slots of the tenant named in x-tuneloop-tenant, and nothing else."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tuneloop.registry import open_registry
from tuneloop.service.api import create_service_app
from tuneloop.service.home import Home
from tuneloop.service.promotions import Tokens
from tuneloop.service.service import Service
from tuneloop.serving.adapters import AdapterPool
from tuneloop.serving.keys import add_key
from tuneloop.serving.rollout import TENANT_HEADER
from tuneloop.specs import TINY_BASE


def test_the_loop_key_acts_on_the_named_tenants_slots_only(tmp_path, good_adapter):
    home = Home.at(tmp_path / "home")
    home.root.mkdir()
    for tenant in ("acme", "beta"):
        reg = open_registry(str(home.registry(tenant)))
        v = reg.create_version(good_adapter, base_model=TINY_BASE, dataset_version="d", parent_version=None,
                               spec={}, metrics={})
        reg.set_alias("champion", v.id)
    acme_admin = add_key(home.keys_file, "acme", role="admin")
    tokens = Tokens()
    loop = tokens.make_loop()
    client = TestClient(create_service_app(Service(home, None, tokens=tokens), AdapterPool()))

    def get(path: str, key: str, tenant: str | None = None):
        headers = {"Authorization": f"Bearer {key}"} | ({TENANT_HEADER: tenant} if tenant is not None else {})
        return client.get(path, headers=headers)

    for tenant in ("acme", "beta"):
        r = get("/admin/status", loop, tenant)
        assert r.status_code == 200 and r.json()["tenant"] == tenant, r.text
    assert get("/admin/status", loop).status_code == 401  # no tenant named
    assert get("/admin/status", loop, "../acme").status_code == 401
    assert get("/v1/models", loop, "acme").status_code == 401  # the slots' routes only: no tenant's data
    assert get("/v1/fine_tuning/jobs", loop, "acme").status_code == 401
    def chat(model: str, key: str, tenant: str):
        return client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}", TENANT_HEADER: tenant},
                           json={"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})

    r = chat("champion", loop, "beta")  # the promote flow's probes of the slots
    assert r.status_code == 200 and r.headers["x-tuneloop-slot"] in ("blue", "green"), r.text
    r = chat(TINY_BASE, loop, "beta")  # any other model: not the loop key's business
    assert r.status_code == 401 and "slots only" in r.json()["error"]["message"]
    r = get("/admin/status", acme_admin, "beta")  # a tenant's own admin key: its own tenant, whatever it names
    assert r.status_code == 200 and r.json()["tenant"] == "acme"
    assert get("/admin/status", "tll-" + "x" * 43, "acme").status_code == 401  # a made-up loop key


def test_the_service_streams_and_reports_a_cold_adapter_load(tmp_path, good_adapter):
    """Through the `openai` SDK: the first answer from a slot's adapter says how long loading it took (and a
    second, warm one does not); a streamed answer equals the plain one, and feedback can name it by its id."""
    import openai

    home = Home.at(tmp_path / "home")
    home.root.mkdir()
    reg = open_registry(str(home.registry("acme")))
    reg.set_alias("champion", reg.create_version(good_adapter, base_model=TINY_BASE, dataset_version="d",
                                                 parent_version=None, spec={}, metrics={}).id)
    key = add_key(home.keys_file, "acme")
    client = TestClient(create_service_app(Service(home, None), AdapterPool()))
    oa = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)
    msgs = [{"role": "user", "content": "I was charged twice"}]
    cold = oa.chat.completions.with_raw_response.create(model="champion", messages=msgs, max_tokens=8, temperature=0)
    assert float(cold.headers["x-tuneloop-adapter-load-ms"]) > 0
    warm = oa.chat.completions.with_raw_response.create(model="champion", messages=msgs, max_tokens=8, temperature=0)
    assert "x-tuneloop-adapter-load-ms" not in warm.headers
    plain = warm.parse()
    chunks = list(oa.chat.completions.create(model="champion", messages=msgs, max_tokens=8, temperature=0,
                                             stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    r = client.post("/v1/feedback", headers={"Authorization": f"Bearer {key}"},
                    json={"completion_id": chunks[0].id, "thumbs": "up"})
    assert r.status_code == 200, r.text
