"""API keys and tenants: with a keys file every route but /health needs a key, and a tenant's key reaches only
that tenant's models, slots, metrics and registry versions. In process (TestClient and the `openai` SDK over it),
against the app `tuneloop serve --keys` builds."""

from __future__ import annotations

import secrets

import openai
import pytest
import yaml

from tuneloop.errors import UserError

from servekit import tenant_registry  # noqa: F401 (fixtures)

TENANTS = {"acme": {"served_name": "acme-bot", "version": "v2"}}  # globex: the default name, v3 via --version


@pytest.fixture
def keys(tmp_path):
    """Plain keys by (tenant, role), and the keys file that stores their sha256."""
    from tuneloop.serving.keys import hash_key

    plain = {(t, r): f"tl-{t}-{r}-{secrets.token_hex(8)}" for t in ("acme", "globex") for r in ("user", "admin")}
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({
        "keys": [{"sha256": hash_key(k), "tenant": t, "role": r, "name": f"{t}-{r}"} for (t, r), k in plain.items()],
        "tenants": TENANTS}))
    return plain, path


@pytest.fixture
def served(keys, tenant_registry):
    """(TestClient factory by key, the plain keys, the start-up log lines) of a keyed server."""
    from fastapi.testclient import TestClient

    from tuneloop.serving.server import build_app

    plain, path = keys
    logs: list[str] = []
    app = build_app(tenant_registry, version="v3", keys_file=str(path), log=logs.append)

    def client(key: str | None = None) -> TestClient:
        return TestClient(app, headers={"Authorization": f"Bearer {key}"} if key else {})

    return client, plain, logs


def _sdk(client, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0, http_client=client(key))


def test_every_route_but_health_needs_a_key(served):
    client, plain, logs = served
    anon = client()
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for method, path, body in [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat),
                               ("POST", "/v1/completions", {"prompt": "hi"}), ("GET", "/metrics", None),
                               ("GET", "/admin/status", None), ("POST", "/admin/rollback", None),
                               ("POST", "/admin/slots/green/load", {"version": "v2"})]:
        for c in (anon, client("not-a-key")):
            r = c.request(method, path, json=body)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
            err = r.json()["error"]
            assert err["type"] == "authentication_error" and "Fix:" in err["message"]
    r = anon.get("/v1/models", headers={"Authorization": f"Basic {plain['acme', 'admin']}"})
    assert r.status_code == 401  # only bearer keys
    health = anon.get("/health")
    assert health.status_code == 200 and health.json()["dependencies"]["live_slots"] == {
        "ok": True, "ready": 2, "tenants": 2}
    assert "acme" not in health.text and "v2" not in health.text  # nothing about who is served, to anyone
    assert not any(k in line for line in logs for k in plain.values())  # keys are never logged
    assert any("tenants acme, globex" in line for line in logs)


def test_a_tenant_sees_and_calls_only_its_own_models(served):
    client, plain, _ = served
    acme, globex = _sdk(client, plain["acme", "user"]), _sdk(client, plain["globex", "user"])
    assert [m.id for m in acme.models.list().data] == ["acme-bot", "v2"]
    assert [m.id for m in globex.models.list().data] == ["tuneloop", "v3"]
    msgs = [{"role": "user", "content": "where is my refund"}]
    raw = acme.chat.completions.with_raw_response.create(model="acme-bot", messages=msgs, max_tokens=2)
    assert raw.headers["x-tuneloop-version"] == "v2"
    assert globex.completions.with_raw_response.create(model="v3", prompt="hi", max_tokens=1
                                                       ).headers["x-tuneloop-version"] == "v3"
    for sdk, other in ((acme, "v3"), (acme, "tuneloop"), (globex, "v2"), (globex, "acme-bot")):
        with pytest.raises(openai.NotFoundError) as e:  # another tenant's model is, to this key, no model
            sdk.chat.completions.create(model=other, messages=msgs, max_tokens=1)
        assert e.value.code == "model_not_found" and other in str(e.value)
    assert plain["acme", "user"] not in str(e.value)


def test_admin_keys_manage_only_their_tenant(served, tenant_registry):
    from tuneloop.registry import open_registry

    client, plain, _ = served
    user, admin, other = (client(plain["acme", "user"]), client(plain["acme", "admin"]),
                          client(plain["globex", "admin"]))
    for r in (user.get("/admin/status"), user.get("/metrics"), user.post("/admin/switch", json={"slot": "green"})):
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert "admin key" in r.json()["error"]["message"]
    st = admin.get("/admin/status").json()
    assert st["tenant"] == "acme" and st["slots"]["blue"]["version"] == "v2"
    # another tenant's version, or one that names no tenant ("default"), is refused before the slot is touched
    for ref in ("v3", "v1"):
        r = admin.post("/admin/slots/green/load", json={"version": ref})
        assert r.status_code == 403 and "another tenant" in r.json()["error"]["message"]
    reg = open_registry(tenant_registry)
    reg.set_alias("champion", "v3")
    try:  # an alias is resolved before the check: champion is globex's v3 here
        r = admin.post("/admin/slots/green/load", json={"version": "champion"})
        assert r.status_code == 403 and "v3" in r.json()["error"]["message"]
    finally:
        reg.set_alias("champion", None)
    assert admin.get("/admin/status").json()["slots"]["green"]["state"] == "empty"
    # its own version loads and goes live in its own slots; globex's slots do not move
    assert admin.post("/admin/slots/green/load", json={"version": "v2"}).json()["slots"]["green"]["version"] == "v2"
    assert admin.post("/admin/switch", json={"slot": "green"}).json()["live"] == "green"
    theirs = other.get("/admin/status").json()
    assert theirs["tenant"] == "globex" and theirs["live"] == "blue" and theirs["slots"]["green"]["state"] == "empty"
    assert admin.get("/admin/slots/green/stats").status_code == 200
    # an admin key also calls its tenant's models; metrics are the tenant's own
    assert admin.post("/v1/completions", json={"model": "acme-bot", "prompt": "hi", "max_tokens": 1}
                      ).headers["x-tuneloop-version"] == "v2"
    mine, theirs = admin.get("/metrics").text, other.get("/metrics").text
    assert 'tuneloop_serving_live{slot="green",version="v2"} 1.0' in mine and 'version="v3"' not in mine
    assert 'tuneloop_serving_requests_total{outcome="ok",slot="green",version="v2"} 1.0' in mine
    assert 'version="v2"' not in theirs and "tuneloop_serving_max_queue" in theirs


def test_the_keys_file_comes_from_the_environment(keys, tenant_registry, monkeypatch):
    from fastapi.testclient import TestClient

    from tuneloop.serving.keys import KEYS_ENV
    from tuneloop.serving.server import build_app

    plain, path = keys
    monkeypatch.setenv(KEYS_ENV, str(path))
    c = TestClient(build_app(tenant_registry, version="v3", log=lambda m: None))
    assert c.get("/v1/models").status_code == 401
    ok = c.get("/v1/models", headers={"Authorization": f"Bearer {plain['globex', 'user']}"})
    assert [m["id"] for m in ok.json()["data"]] == ["tuneloop", "v3"]


def test_a_tenant_version_that_is_not_its_own_is_refused_at_start(keys, tenant_registry):
    from tuneloop.serving.server import build_app

    _, path = keys
    data = yaml.safe_load(path.read_text())
    data["tenants"]["acme"]["version"] = "v3"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="tenants.acme.version='v3'"):
        build_app(tenant_registry, keys_file=str(path), log=lambda m: None)


@pytest.mark.parametrize("entry, says", [
    ({"key": "sk-plain", "tenant": "acme", "role": "user"}, "never the key itself"),
    ({"sha256": "abc", "tenant": "acme", "role": "user"}, "64 hexadecimal digits"),
    ({"sha256": "0" * 64, "tenant": "acme", "role": "root"}, "a role is one of user, admin"),
    ({"sha256": "0" * 64, "tenant": "../etc", "role": "user"}, "a tenant is 1-64 letters"),
    ({"sha256": "0" * 64, "tenant": "acme", "role": "user", "scopes": ["all"]}, "a key entry has sha256"),
])
def test_keys_file_rules(entry, says):
    from tuneloop.serving.keys import KeyRing

    with pytest.raises(UserError, match=says) as e:
        KeyRing.parse({"keys": [entry]}, "keys.yaml")
    assert "keys.yaml: keys[0]" in str(e.value) and "Fix:" in str(e.value) and "sk-plain" not in str(e.value)
    with pytest.raises(UserError, match="the same key appears twice"):
        KeyRing.parse({"keys": [{"sha256": "1" * 64, "tenant": "a", "role": "user"}] * 2})
    with pytest.raises(UserError, match="needs at least one key"):
        KeyRing.parse({"keys": [{"sha256": "1" * 64, "tenant": "a", "role": "user"}], "tenants": {"b": {}}})


def test_a_new_key_from_the_helper_is_found_and_others_are_not(capsys):
    from tuneloop.serving.keys import KeyRing, main

    assert main(["acme", "admin"]) == 0
    out = capsys.readouterr().out
    key = out.split("key (give it to the client; it is not stored anywhere): ")[1].split()[0]
    ring = KeyRing.parse(yaml.safe_load("keys:\n" + out.split("keys-file entry:\n")[1]))
    found = ring.find(key)
    assert found is not None and (found.tenant, found.role) == ("acme", "admin") and found.can("user")
    assert ring.find(key + "x") is None and ring.find("") is None
