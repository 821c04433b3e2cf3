"""Each tenant has its own registry (versions, champion, production): where it is, and a spec run for a tenant."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.errors import SpecError, UserError
from tuneloop.registry import open_registry, registry_location
from tuneloop.specs import DriftSpec, PromoteSpec, RetrainSpec, for_tenant


@pytest.fixture
def env(tmp_path, monkeypatch):
    for name in ("TUNELOOP_REGISTRY", "TUNELOOP_REGISTRY_DIR", "TUNELOOP_TENANT_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNELOOP_STATE_DIR", str(tmp_path / "state"))
    return monkeypatch


def test_default_keeps_the_configured_registry_and_others_get_their_own_folder(env, tmp_path):
    root = tmp_path / "state" / "registry"
    assert Path(registry_location()) == root
    assert Path(registry_location("acme")) == root / "tenants" / "acme"
    env.setenv("TUNELOOP_REGISTRY", "s3://models/reg/")
    assert registry_location("acme") == "s3://models/reg/tenants/acme"
    assert registry_location("default") == "s3://models/reg/"


def test_a_template_places_every_tenant_default_included(env, tmp_path):
    env.setenv("TUNELOOP_TENANT_REGISTRY", str(tmp_path / "regs" / "{tenant}"))
    assert Path(registry_location("default")) == tmp_path / "regs" / "default"
    assert Path(registry_location("b")) == tmp_path / "regs" / "b"
    env.setenv("TUNELOOP_TENANT_REGISTRY", str(tmp_path / "regs"))
    with pytest.raises(UserError, match=r"\{tenant\}.*Fix:"):
        registry_location("b")


@pytest.mark.parametrize("bad", ["../b", "a/b", "", ".."])
def test_a_tenant_name_cannot_leave_the_registry(env, bad):
    with pytest.raises(UserError, match="tenant name"):
        registry_location(bad)


def test_tenants_aliases_are_apart(env, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    a = open_registry(tenant="a")
    v = a.create_version(adapter, base_model="tiny", dataset_version="d1", parent_version=None, spec={}, metrics={})
    a.set_alias("champion", v.id)
    assert open_registry(tenant="a").champion().id == v.id
    assert open_registry(tenant="b").champion() is None and open_registry().champion() is None
    assert open_registry(tenant="b").ids() == [] and open_registry().ids() == []


def test_a_run_for_a_tenant_takes_its_name_or_refuses_another_tenants_data():
    spec = RetrainSpec()  # no data: the tenant's feedback dataset
    assert for_tenant(spec, "acme").tenant == "acme" and for_tenant(spec, None) is spec
    assert for_tenant(spec, "") is spec  # a trigger whose event named no tenant
    fixed = RetrainSpec(data=Path("default-feedback.jsonl"))
    assert for_tenant(fixed, "default") is fixed
    with pytest.raises(SpecError, match=r"tenant='acme'.*default-feedback.jsonl.*Fix: leave spec.data unset"):
        for_tenant(fixed, "acme")
    with pytest.raises(SpecError, match="tenant name"):
        for_tenant(spec, "a/../b")
    assert for_tenant(PromoteSpec(), "b").tenant == "b" and for_tenant(DriftSpec(), "b").tenant == "b"


def test_the_registry_command_reads_a_tenants_registry(env, tmp_path, capsys):
    from tuneloop.cli.main import main

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    open_registry(tenant="acme").create_version(adapter, base_model="tiny", dataset_version="d1",
                                                parent_version=None, spec={}, metrics={})
    assert main(["registry", "--tenant", "acme", "list"]) == 0
    assert "v1" in capsys.readouterr().out
    assert main(["registry", "list", "--tenant", "default"]) == 0
    assert "v1" not in capsys.readouterr().out
