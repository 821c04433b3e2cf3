"""The audit log: every registry change and serving switch/rollback leaves one create-only entry."""

from __future__ import annotations

import pytest

from tuneloop.errors import ConflictError
from tuneloop.registry import Registry
from tuneloop.registry.store import LocalStore


def decision(promote: bool, reason: str = "gate") -> dict:
    return {"promote": promote, "reason": reason}


def test_who_did_what_and_when_in_order(tmp_path, good_adapter, monkeypatch):
    monkeypatch.setenv("TUNELOOP_ACTOR", "ci-bot")
    monkeypatch.setenv("ACME_API_KEY", "planted-secret-0123456789")
    reg = Registry(LocalStore(tmp_path / "reg"))
    meta = dict(base_model="b", dataset_version="d1", parent_version=None, spec={}, metrics={},
                extra={"tenant": "acme"})
    v1 = reg.create_version(good_adapter, **meta)
    reg.record_decision(v1.id, decision(True), expected_champion=None)
    v2 = reg.create_version(good_adapter, **meta)
    reg.record_decision(v2.id, decision(False, "worse than v1; key planted-secret-0123456789"))
    reg.record_event("rollback", v1.id, reason="p95 too high")
    reg.set_alias("production", v1.id)
    reg.delete(v2.id)

    log = reg.audit_log()
    assert [(e["action"], e["version"]) for e in log if e["action"] != "alias" or e["details"]["alias"] != "challenger"] == [
        ("register", "v1"), ("promote", "v1"), ("register", "v2"), ("reject", "v2"), ("rollback", "v1"),
        ("alias", "v1"), ("delete", "v2")]
    assert all(e["actor"] == "ci-bot" and e["tenant"] == "acme" for e in log)
    assert [e["at"] for e in log] == sorted(e["at"] for e in log)
    assert "planted-secret" not in str(log) and "[REDACTED]" in log[3]["details"]["reason"]
    assert reg.audit_log(version="v2", action="delete")[0]["details"] == {}
    assert len(reg.audit_log(limit=2)) == 2

    # entries are create-only: the store refuses to overwrite one
    key = sorted(reg.store.list("audit/"))[0]
    with pytest.raises(ConflictError):
        reg.store.put(key, b"{}", if_none_match=True)
