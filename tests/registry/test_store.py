"""The object-store contract, on a folder and on S3 (a moto server): conditional writes, listing, files."""

from __future__ import annotations

import hashlib

import pytest

from tuneloop.errors import ConflictError, RegistryError, TransientError
from tuneloop.registry.s3 import S3Store
from tuneloop.registry.store import LocalStore


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.server)])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return S3Store(request.getfixturevalue("s3_bucket"), "some/prefix")


def test_moto_server_honours_conditional_puts(s3_bucket):
    """What the S3 backend relies on, checked against the server itself with plain boto3."""
    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client("s3")
    etag = s3.put_object(Bucket=s3_bucket, Key="k", Body=b"one", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"two", IfNoneMatch="*")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"three", IfMatch=etag)
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"four", IfMatch=etag)  # etag is stale now
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"three"


def test_get_put_roundtrip_and_missing(store):
    assert store.get("a/b.json") is None
    etag = store.put("a/b.json", b"hello")
    data, got = store.get("a/b.json")
    assert data == b"hello" and got == etag
    store.put("a/b.json", b"again")  # unconditional replace
    assert store.get("a/b.json")[0] == b"again"


def test_if_none_match_creates_only_once(store):
    store.put("doc", b"first", if_none_match=True)
    with pytest.raises(ConflictError):
        store.put("doc", b"second", if_none_match=True)
    assert store.get("doc")[0] == b"first"


def test_if_match_is_compare_and_swap(store):
    etag = store.put("doc", b"v1")
    new = store.put("doc", b"v2", if_match=etag)
    with pytest.raises(ConflictError):
        store.put("doc", b"v3", if_match=etag)  # stale
    assert store.get("doc") == (b"v2", new)
    with pytest.raises(ConflictError):
        store.put("gone", b"x", if_match=etag)  # no such object: the precondition fails too
    assert store.get("gone") is None


def test_list_by_prefix_and_delete(store):
    for key in ("versions/v1/manifest.json", "versions/v1/adapter/w.safetensors", "versions/v10/manifest.json",
                "claims/v1", "aliases.json"):
        store.put(key, b"x")
    assert store.list("versions/") == ["versions/v1/adapter/w.safetensors", "versions/v1/manifest.json",
                                       "versions/v10/manifest.json"]
    assert store.list("versions/v1/") == ["versions/v1/adapter/w.safetensors", "versions/v1/manifest.json"]
    assert store.list("nothing/") == []
    assert len(store.list()) == 5
    store.delete("versions/v1/adapter/w.safetensors")
    store.delete("versions/v1/adapter/w.safetensors")  # absent is fine
    assert store.list("versions/v1/") == ["versions/v1/manifest.json"]


def test_files_stream_with_their_digest(store, tmp_path):
    src = tmp_path / "weights.safetensors"
    src.write_bytes(b"\x00" * 3_000_000 + b"end")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert store.put_file("versions/v1/adapter/weights.safetensors", src) == digest
    assert store.sha256("versions/v1/adapter/weights.safetensors") == digest
    dest = tmp_path / "out" / "w.safetensors"
    assert store.get_file("versions/v1/adapter/weights.safetensors", dest) == digest
    assert dest.read_bytes() == src.read_bytes()
    assert store.get_file("missing", tmp_path / "m") is None and not (tmp_path / "m").exists()
    assert store.sha256("missing") is None


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", "a//b", "a\\b", ""])
def test_keys_cannot_escape(store, key):
    with pytest.raises(RegistryError, match="refusing the object key"):
        store.put(key, b"x")


def test_local_store_leaves_no_temp_files(tmp_path):
    store = LocalStore(tmp_path / "s")
    store.put("a/b", b"1", if_none_match=True)
    store.put_file("a/c", tmp_path / "s" / "a" / "b")
    store.delete("a/b")
    store.delete("a/c")
    assert sorted(p.name for p in (tmp_path / "s").rglob("*")) == [".lock"]  # empty folders pruned


def test_s3_missing_bucket_is_a_clear_error(s3_endpoint):
    store = S3Store("no-such-bucket-here")
    with pytest.raises(RegistryError) as err:
        store.get("aliases.json")
    assert "bucket 'no-such-bucket-here' does not exist" in str(err.value)
    assert "aws s3 mb s3://no-such-bucket-here" in str(err.value)


def test_s3_unreachable_endpoint_is_transient(s3_endpoint):
    import boto3
    from botocore.config import Config

    from fakes.s3_server import free_port

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(TransientError, match="cannot reach S3"):
        S3Store("bucket", client=client).get("aliases.json")
