"""Security posture: user names and paths sanitized, pickle-bearing model files refused, secrets kept out
of log lines."""

from __future__ import annotations

import io
import logging
import pickle

import pytest

from tuneloop.errors import RegistryError, UnsafeFileError, UserError
from tuneloop.registry.store import LocalStore
from tuneloop.runtime.safety import RedactingFilter, inside, refuse_pickles, safe_name, scrub
from tuneloop.specs import CollectSpec, SpecError, validate_spec


@pytest.mark.parametrize("bad", ["../other", "..", "/etc", "a/b", "a\\b", ".hidden", "", "x" * 65, "tenant\x00"])
def test_path_traversal_names_are_refused_with_the_rule_and_a_fix(bad):
    with pytest.raises(UserError) as e:
        safe_name(bad, "tenant name")
    assert "no '/', no '..'" in str(e.value) and "Fix: rename it" in str(e.value)
    with pytest.raises(SpecError, match="tenant"):
        validate_spec({"data": "x.jsonl", "tenant": bad})
    with pytest.raises(SpecError, match="source name"):
        validate_spec({"sources": [{"kind": "file", "path": "f.jsonl", "name": bad or "/"}]}, CollectSpec)


@pytest.mark.parametrize("good", ["default", "acme", "team-a_1", "v1.2"])
def test_ordinary_names_pass(good):
    assert safe_name(good) == good and validate_spec({"data": "x.jsonl", "tenant": good}).tenant == good


def test_a_symlink_out_of_the_registry_is_refused(tmp_path):
    root, outside = tmp_path / "registry", tmp_path / "secret"
    (root / "versions").mkdir(parents=True)
    outside.mkdir()
    (outside / "manifest.json").write_text('{"id": "v1"}')
    (root / "versions" / "v1").symlink_to(outside)
    store = LocalStore(root)
    with pytest.raises(RegistryError, match="symlink"):
        store.get("versions/v1/manifest.json")
    with pytest.raises(RegistryError, match="symlink"):
        store.put("versions/v1/evil.json", b"{}")
    assert not (outside / "evil.json").exists()
    with pytest.raises(RegistryError, match=r"\.\."):
        store.get("versions/../../secret/manifest.json")
    with pytest.raises(UserError, match="outside"):
        inside(root, root / "versions" / "v1")


class Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_bearing_model_folders_are_refused_before_loading(tmp_path, capsys):
    from tuneloop.models.base import load_model
    from tuneloop.evals.run import load_for_eval

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(UnsafeFileError, match="pytorch_model.bin"):
        load_model(str(base))
    adapter = tmp_path / "adapter"
    (adapter / "sub").mkdir(parents=True)
    (adapter / "sub" / "adapter_model.PT").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(UnsafeFileError, match="adapter_model.PT"):
        refuse_pickles(adapter)
    assert "pwned" not in capsys.readouterr().out  # refused by name: nothing was unpickled


def test_checkpoint_files_load_with_weights_only(tmp_path):
    import torch

    from tuneloop.training.checkpoint import _load

    ok = tmp_path / "ok.pt"
    torch.save({"step": 3, "t": torch.ones(2), "betas": (0.9, 0.99)}, ok)
    assert _load(ok)["step"] == 3
    evil = tmp_path / "optimizer.pt"
    torch.save({"x": Boom()}, evil)
    with pytest.raises(UserError, match="weights_only=True"):
        _load(evil)


def test_secrets_are_scrubbed_from_log_records(monkeypatch):
    planted = "planted-Secret-9f8e7d6c5b4a"
    monkeypatch.setenv("ACME_API_KEY", planted)
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to be a secret: left alone
    assert scrub(f"calling with {planted}") == "calling with [REDACTED]"
    assert scrub("key sk-proj-abcdefghijklmnop1234 used") == "key [REDACTED] used"
    assert scrub("abc stays") == "abc stays"

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tuneloop.test_safety")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("header Authorization: Bearer %s", planted)
        try:
            raise RuntimeError(f"upstream said: bad key {planted}")
        except RuntimeError:
            logger.exception("request failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert planted not in out and out.count("[REDACTED]") == 2 and "request failed" in out


def test_keys_pasted_into_feedback_are_never_stored(tmp_path, monkeypatch):
    from tuneloop.feedback.items import FeedbackItem
    from tuneloop.feedback.store import FeedbackStore

    env_secret = "team-internal-token-4b3c2d1e"
    monkeypatch.setenv("SUPPORT_BOT_TOKEN", env_secret)
    shaped = "sk-proj-" + "a1" * 12
    item = FeedbackItem(id="file:x:1", source="file:x", response=f"use {shaped}",
                        messages=({"role": "user", "content": f"my token is {env_secret}"},),
                        timestamp="2026-11-20T10:00:00Z", score=0.1, correction="ask support", comment=shaped,
                        metadata={"headers": {"authorization": f"Bearer {shaped}"}})
    store = FeedbackStore(tmp_path / "fb")
    (new,) = store.add([item])
    raw = b"".join(p.read_bytes() for p in (tmp_path / "fb").rglob("*") if p.is_file())
    assert shaped.encode() not in raw and env_secret.encode() not in raw
    assert new.response == "use [API_KEY]" and new.messages[0]["content"] == "my token is [API_KEY]"
    assert store.items()[0].metadata == {"headers": {"authorization": "Bearer [API_KEY]"}}
