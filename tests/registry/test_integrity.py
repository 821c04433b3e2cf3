"""Integrity: every load checks each adapter file's sha256, pickle weights are refused, S3 downloads
go to a verified cache under the state folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regtools import BACKENDS, make_adapter, new_version, open_backend, raw_delete, raw_put, sha256
from tuneloop.errors import ChecksumError, RegistryError, UnsafeFileError, UserError
from tuneloop.registry import LocalRegistry, Registry

WEIGHTS = "adapter/adapter_model.safetensors"


@pytest.fixture(params=BACKENDS)
def reg(request, tmp_path) -> Registry:
    return open_backend(request.param, request, tmp_path)


@pytest.fixture
def adapter(tmp_path) -> Path:
    return make_adapter(tmp_path / "adapter")


def test_adapter_for_gives_a_verified_local_folder(reg, adapter):
    new_version(reg, adapter)
    folder = reg.adapter_for("v1")
    assert folder.is_dir() and folder == reg.get("v1").adapter_dir
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (folder / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    assert reg.adapter_for("v1") == folder  # a second load checks again and reuses the same folder


def test_tampered_adapter_file_is_refused(reg, adapter):
    v = new_version(reg, adapter)
    expected = next(f["sha256"] for f in v.manifest["files"] if f["path"] == WEIGHTS)
    raw_put(reg, f"versions/v1/{WEIGHTS}", b"evil weights")
    with pytest.raises(ChecksumError) as err:
        reg.adapter_for("v1")
    e = err.value
    assert (e.version, e.file, e.expected, e.actual) == ("v1", WEIGHTS, expected, sha256(b"evil weights"))
    msg = str(e)
    assert WEIGHTS in msg and expected in msg and sha256(b"evil weights") in msg
    assert "Fix:" in msg and "tuneloop registry show v1" in msg
    assert isinstance(e, RegistryError)


def test_missing_adapter_file_is_refused(reg, adapter):
    new_version(reg, adapter)
    raw_delete(reg, "versions/v1/adapter/adapter_config.json")
    with pytest.raises(ChecksumError, match="adapter/adapter_config.json of version v1.*found no such file"):
        reg.adapter_for("v1")


def test_local_tampering_after_a_good_load_is_caught(tmp_path, adapter):
    reg = LocalRegistry(tmp_path / "registry")
    new_version(reg, adapter)
    folder = reg.adapter_for("v1")
    (folder / "adapter_model.safetensors").write_bytes(b"swapped")
    with pytest.raises(ChecksumError):
        reg.adapter_for("v1")
    (folder / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    (folder / "notes.safetensors").write_bytes(b"added")  # an unlisted file is refused as well
    with pytest.raises(ChecksumError, match="notes.safetensors.*not in the manifest"):
        reg.adapter_for("v1")
    (folder / "notes.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(UnsafeFileError, match="adapter_model.bin"):
        reg.adapter_for("v1")


def test_s3_downloads_into_the_state_cache_and_refetches_a_damaged_cache(s3_bucket, state_dir, adapter):
    from tuneloop.registry import open_registry

    reg = open_registry(f"s3://{s3_bucket}/reg")
    new_version(reg, adapter)
    folder = reg.adapter_for("v1")
    assert folder.is_relative_to(state_dir.resolve() / "cache" / "registry")
    (folder / "adapter_model.safetensors").write_bytes(b"damaged on this disk")
    assert reg.adapter_for("v1") == folder  # the cache is not trusted: checked, found wrong, fetched again
    assert (folder / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    # a tampered object in the bucket: a good cache still matches the manifest, but a fresh download is refused
    raw_put(reg, f"versions/v1/{WEIGHTS}", b"evil")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ChecksumError, match=f"{WEIGHTS} of version v1 in s3://{s3_bucket}/reg"):
        reg.adapter_for("v1")
    assert not folder.exists() and not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["adapter_model.bin", "model.pt", "w.pth", "state.pkl", "last.ckpt", "sub/x.BIN"])
def test_create_version_refuses_pickle_weights(reg, adapter, name):
    (adapter / name).parent.mkdir(parents=True, exist_ok=True)
    (adapter / name).write_bytes(b"pickle")
    with pytest.raises(UnsafeFileError) as err:
        new_version(reg, adapter)
    msg = str(err.value)
    assert name in msg and "safetensors" in msg and "Fix:" in msg and "safe_serialization=True" in msg
    assert isinstance(err.value, UserError)
    assert reg.ids() == []


def test_loading_refuses_a_manifest_that_lists_pickle_files(reg, adapter):
    v = new_version(reg, adapter)
    manifest = v.manifest | {"files": v.manifest["files"] + [{"path": "adapter/extra.pt", "sha256": "0" * 64,
                                                                "bytes": 1}]}
    raw_put(reg, "versions/v1/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(UnsafeFileError, match="adapter/extra.pt"):
        reg.adapter_for("v1")


def test_loading_refuses_paths_outside_the_adapter(reg, adapter, tmp_path):
    v = new_version(reg, adapter)
    manifest = v.manifest | {"files": [{"path": "adapter/../../../escape.json", "sha256": "0" * 64, "bytes": 1}]}
    raw_put(reg, "versions/v1/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(RegistryError, match="outside its adapter/ folder"):
        reg.adapter_for("v1")
    assert not list(tmp_path.rglob("escape.json"))


def test_trust_remote_code_is_off_unless_turned_on(monkeypatch):
    import inspect

    from tuneloop.models import base as basemodel

    monkeypatch.delenv("TUNELOOP_TRUST_REMOTE_CODE", raising=False)
    assert basemodel.trust_remote_code() is False
    monkeypatch.setenv("TUNELOOP_TRUST_REMOTE_CODE", "1")
    assert basemodel.trust_remote_code() is True
    # every from_pretrained in basemodel passes it explicitly, so no library default decides
    assert "from_pretrained(path, trust_remote_code=trust_remote_code())" in inspect.getsource(basemodel.load_tokenizer)
    assert '"trust_remote_code": trust_remote_code()' in inspect.getsource(basemodel.load_model)
