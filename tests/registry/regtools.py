"""Helpers shared by the registry tests: fake adapters, backends, raw access that bypasses the registry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tuneloop.registry import Registry, Version, open_registry

SPEC = {"training": {"rank": 4, "epochs": 1}, "gate": {"metric": "exact_match", "margin": 0.02}}
BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.server)]  # S3 is a moto server: the slow tier


def make_adapter(folder: Path, payload: bytes = b"\x00\x01fake-lora-weights" * 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(payload)
    return folder


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_version(reg: Registry, adapter: Path, *, em: float = 0.5, parent: str | None = None,
                data: str = "d" * 64, **kw) -> Version:
    return reg.create_version(adapter, base_model="tuneloop/tiny-llama", dataset_version=data,
                              parent_version=parent, spec=SPEC, metrics={"exact_match": em, "token_f1": em + 0.1},
                              **kw)


def location(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh registry location of that kind: a folder, or s3://<fresh bucket>/registry on moto."""
    if kind == "local":
        return str(tmp_path / "registry")
    return f"s3://{request.getfixturevalue('s3_bucket')}/registry"


def open_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    request.getfixturevalue("state_dir")  # the S3 download cache lives under a per-test state folder
    return open_registry(location(kind, request, tmp_path))


def raw_put(reg: Registry, key: str, data: bytes) -> None:
    """Write bytes where the registry keeps `key`, bypassing the registry (tampering, crash leftovers)."""
    if reg.store.local_path(key) is not None:
        path = reg.store.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        import boto3

        boto3.client("s3").put_object(Bucket=reg.store.bucket, Key=f"{reg.store.prefix}/{key}", Body=data)


def raw_delete(reg: Registry, key: str) -> None:
    if reg.store.local_path(key) is not None:
        reg.store.local_path(key).unlink()
    else:
        import boto3

        boto3.client("s3").delete_object(Bucket=reg.store.bucket, Key=f"{reg.store.prefix}/{key}")


def raw_keys(reg: Registry) -> list[str]:
    """Every object key, hidden files included for a folder (staging leftovers would show here)."""
    root = reg.store.local_path("x").parent if reg.store.local_path("x") is not None else None
    if root is not None:
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                      and p.name != ".lock")
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=reg.store.bucket)
    return sorted(o["Key"].split("/", 1)[1] for page in pages for o in page.get("Contents", []))
