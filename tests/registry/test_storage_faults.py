"""Storage faults: the registry on S3 behind a fault-injecting proxy (a real moto server behind it), and on a
full local disk. Transient errors are retried a bounded number of times with backoff, then fail clearly;
readers never see a partial version, and a write whose answer was lost counts once.

Writers go through the proxy (`tests/fakes/fault_proxy.py`); readers talk to moto directly, so they see
what is stored, not what the faults make the writer believe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from regtools import SPEC, new_version
from tuneloop.errors import ConflictError, RegistryError, TransientError, UserError
from tuneloop.registry import Registry
from tuneloop.registry.s3 import S3Store
from tuneloop.registry.store import LocalStore

ATTEMPTS = 3  # TUNELOOP_S3_MAX_ATTEMPTS for these tests
READ_TIMEOUT = 5.0  # generous: moto on 2 busy cores can take a while; tests of timeouts set their own
TINY_TIMEOUT = 0.5  # "slow" tests: the proxy waits SLOW seconds, beyond this read timeout
SLOW = 2.0
# botocore "standard" retries wait rand(0, 1) * min(scale * 2**i, 20) s before retry i+1, scale 1 s at most
MAX_BACKOFF = sum(min(2 ** i, 20) for i in range(ATTEMPTS - 1))
SLACK = 5.0  # for each test's requests themselves on a loaded machine


def safetensors_bytes(n: int, seed: int = 0) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    return save({"base_model.model.layers.0.lora_A.weight": rng.standard_normal(n // 4).astype(np.float32)})


def make_adapter(folder: Path, size: int = 4096, seed: int = 0, extra: dict | None = None) -> Path:
    """A small fake adapter: adapter_config.json and a few-KB real safetensors file (plus `extra` files)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA",
                                                            "seed": seed}))
    (folder / "adapter_model.safetensors").write_bytes(safetensors_bytes(size, seed))
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(autouse=True)
def s3_limits(monkeypatch):
    monkeypatch.setenv("TUNELOOP_S3_MAX_ATTEMPTS", str(ATTEMPTS))
    monkeypatch.setenv("TUNELOOP_S3_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("TUNELOOP_S3_READ_TIMEOUT", str(READ_TIMEOUT))


@pytest.fixture
def proxy(s3_endpoint):
    from fakes.fault_proxy import FaultProxy

    with FaultProxy(s3_endpoint) as p:
        yield p


@pytest.fixture
def regs(proxy, s3_bucket, tmp_path, state_dir):
    """(writer through the proxy, reader straight to moto), on the same fresh bucket."""
    writer = Registry(S3Store(s3_bucket, "registry", endpoint_url=proxy.url), cache_dir=tmp_path / "cache-w")
    reader = Registry(S3Store(s3_bucket, "registry"), cache_dir=tmp_path / "cache-r")
    return writer, reader


def snapshot(reg: Registry):
    """What a reader can see: ids, every version's documents, the aliases."""
    return reg.ids(), {v.id: (v.manifest, v.status, v.tags) for v in reg.list()}, reg.aliases()


def stored(reg: Registry, prefix: str = "") -> list[str]:
    return reg.store.list(prefix)


def gaps(seen) -> list[float]:
    return [b.at - a.at for a, b in zip(seen, seen[1:])]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- client configuration ---------------------------------------------------------
def test_limits_come_from_the_environment_and_the_constructor(s3_bucket, monkeypatch):
    conf = S3Store(s3_bucket).client.meta.config
    assert conf.retries == {"mode": "standard", "total_max_attempts": ATTEMPTS}
    assert (conf.connect_timeout, conf.read_timeout) == (2.0, READ_TIMEOUT)
    conf = S3Store(s3_bucket, max_attempts=7, read_timeout=1.5).client.meta.config
    assert conf.retries["total_max_attempts"] == 7 and conf.read_timeout == 1.5
    for name in ("TUNELOOP_S3_MAX_ATTEMPTS", "TUNELOOP_S3_CONNECT_TIMEOUT", "TUNELOOP_S3_READ_TIMEOUT"):
        monkeypatch.delenv(name)
    store = S3Store(s3_bucket)
    assert store.settings == {"max_attempts": 5, "connect_timeout": 10.0, "read_timeout": 60.0}


@pytest.mark.parametrize("name,value", [("TUNELOOP_S3_MAX_ATTEMPTS", "0"), ("TUNELOOP_S3_MAX_ATTEMPTS", "three"),
                                        ("TUNELOOP_S3_READ_TIMEOUT", "-1"), ("TUNELOOP_S3_CONNECT_TIMEOUT", "nan")])
def test_bad_limits_are_refused_by_name(s3_bucket, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as err:
        S3Store(s3_bucket)
    assert f"{name}={value!r}" in str(err.value) and "Fix: set " + name in str(err.value)


# -- transient errors -------------------------------------------------------------
def test_a_few_503s_are_retried_with_backoff_and_the_version_verifies(regs, proxy, tmp_path):
    writer, reader = regs
    proxy.add("error", method="PUT", path="/adapter/", times=ATTEMPTS - 1)  # the first upload fails twice
    proxy.add("error", method="PUT", path="/manifest.json", times=ATTEMPTS - 1)  # and so does the commit
    started = time.monotonic()
    v = new_version(writer, make_adapter(tmp_path / "a"))
    took = time.monotonic() - started

    assert v.id == "v1" and reader.ids() == ["v1"] and reader.verify("v1") == []
    assert reader.adapter_for("v1").is_dir()
    for path in ("/adapter/adapter_config.json", "/manifest.json"):
        seen = proxy.seen("PUT", path)
        assert [s.outcome for s in seen] == ["error"] * (ATTEMPTS - 1) + ["pass"], seen
        assert [s.status for s in seen] == [503] * (ATTEMPTS - 1) + [200]
        assert all(g > 0 for g in gaps(seen)), gaps(seen)  # backoff: never back-to-back
        assert sum(gaps(seen)) < MAX_BACKOFF + SLACK
    assert len(proxy.seen("PUT", "/adapter/adapter_model.safetensors")) == 1  # the rule was spent: no retry
    assert took < 2 * MAX_BACKOFF + SLACK


@pytest.mark.parametrize("fault", ["manifest", "everything"])
def test_persistent_5xx_fails_clearly_in_bounded_time_and_shows_nothing(regs, proxy, tmp_path, s3_endpoint, fault):
    writer, reader = regs
    new_version(reader, make_adapter(tmp_path / "a0"))
    reader.set_alias("champion", "v1")
    before = snapshot(reader)
    if fault == "manifest":
        proxy.add("error", method="PUT", path="/manifest.json", status=500, code="InternalError")
    else:
        proxy.add("error")

    started = time.monotonic()
    with pytest.raises(TransientError) as err:
        new_version(writer, make_adapter(tmp_path / "a1", seed=1))
    took = time.monotonic() - started

    msg = str(err.value)
    assert took < MAX_BACKOFF + SLACK, took
    assert f"failed after {ATTEMPTS} attempts" in msg and proxy.url in msg
    assert f"TUNELOOP_S3_MAX_ATTEMPTS={ATTEMPTS}" in msg and "aws s3 ls" in msg
    if fault == "manifest":
        assert "versions/v2/manifest.json" in msg and "InternalError (HTTP 500)" in msg
        assert len(proxy.seen("PUT", "/manifest.json")) == ATTEMPTS  # bounded: exactly the budget
    else:  # the first request (listing ids) is what fails: nothing was written at all
        assert "ServiceUnavailable (HTTP 503)" in msg and len(proxy.seen()) == ATTEMPTS
    assert snapshot(reader) == before  # a reader sees the registry exactly as before
    assert reader.store.get("versions/v2/manifest.json") is None

    proxy.clear()  # the store is back: the registry works, through the same writer
    v = new_version(writer, make_adapter(tmp_path / "a2", seed=2))
    # a failed commit write keeps its id taken (it might still land late); a failure before the claim frees it
    assert v.id == ("v3" if fault == "manifest" else "v2")
    assert reader.ids() == ["v1", v.id] and reader.verify(v.id) == []


# -- slow answers -----------------------------------------------------------------
def test_slow_answers_under_the_read_timeout_succeed_without_retries(regs, proxy, tmp_path, s3_bucket):
    _, reader = regs
    writer = Registry(S3Store(s3_bucket, "registry", endpoint_url=proxy.url, read_timeout=SLOW * 2),
                      cache_dir=tmp_path / "cache-slow")
    proxy.add("pass", method="PUT", delay=SLOW / 4)
    v = new_version(writer, make_adapter(tmp_path / "a"))
    assert reader.ids() == [v.id] and reader.verify(v.id) == []
    puts = proxy.seen("PUT")
    assert puts and all(s.outcome == "pass" and s.status == 200 for s in puts)
    assert len({s.path for s in puts}) == len(puts)  # each write went once: no timeout, no retry


def test_slow_commit_beyond_the_read_timeout_fails_clearly_and_never_shows_half(regs, proxy, tmp_path, monkeypatch):
    """Every manifest PUT is applied SLOW seconds late, after the writer gave up on it. The writer reports a
    clear failure; when the late write lands, the version it makes visible is whole (its files were kept)."""
    _, reader = regs
    monkeypatch.setenv("TUNELOOP_S3_READ_TIMEOUT", str(TINY_TIMEOUT))
    writer = Registry(S3Store(reader.store.bucket, "registry", endpoint_url=proxy.url), cache_dir=tmp_path / "c")
    proxy.add("pass", method="PUT", path="/manifest.json", delay=SLOW)
    with pytest.raises(TransientError) as err:
        new_version(writer, make_adapter(tmp_path / "a"))
    assert f"no answer within the read timeout ({TINY_TIMEOUT} s)" in str(err.value)
    assert f"failed after {ATTEMPTS} attempts" in str(err.value)
    assert "may still have landed" in str(err.value)
    assert len(proxy.seen("PUT", "/manifest.json")) == ATTEMPTS

    wait_for(lambda: all(s.landed or s.status for s in proxy.seen("PUT", "/manifest.json")), SLOW * ATTEMPTS + SLACK,
             "the late manifest writes")
    # the first late write created the manifest, the others were refused by If-None-Match: one whole version
    assert reader.ids() == ["v1"] and reader.verify("v1") == []
    assert reader.adapter_for("v1").is_dir()


def test_slow_upload_beyond_the_read_timeout_leaves_nothing_in_a_later_version(regs, proxy, tmp_path):
    """An upload applied after the writer gave up must not land inside the next writer's version."""
    writer, reader = regs
    writer.store = S3Store(reader.store.bucket, "registry", endpoint_url=proxy.url, read_timeout=TINY_TIMEOUT)
    proxy.add("pass", method="PUT", path="/adapter/README.md", delay=SLOW)
    with pytest.raises(TransientError, match="no answer within the read timeout"):
        new_version(writer, make_adapter(tmp_path / "a", extra={"README.md": b"# notes\n"}))
    wait_for(lambda: all(s.landed for s in proxy.seen("PUT", "README.md")), SLOW * ATTEMPTS + SLACK,
             "the late uploads")
    assert reader.ids() == []

    v = new_version(reader, make_adapter(tmp_path / "b", seed=1))  # a second writer, the store healthy again
    assert reader.verify(v.id) == []  # no stray README.md from the first writer in its folder
    assert stored(reader, f"versions/{v.id}/adapter/") == [f"versions/{v.id}/adapter/adapter_config.json",
                                                             f"versions/{v.id}/adapter/adapter_model.safetensors"]


# -- lost answers -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["error", "drop", "reset"])
@pytest.mark.parametrize("path", ["/manifest.json", "/claims/", "/audit/"])
def test_a_write_whose_answer_was_lost_counts_once(regs, proxy, tmp_path, kind, path):
    """The PUT lands, its answer does not (a 503 after the write, or the connection closed): botocore retries,
    the retry's If-None-Match is refused by the first attempt's own write, and the store knows it is its own."""
    writer, reader = regs
    proxy.add(kind, method="PUT", path=path, times=1, landed=True)
    v = new_version(writer, make_adapter(tmp_path / "a"))
    seen = proxy.seen("PUT", path)
    assert [s.landed for s in seen] == [True, True] and seen[1].status == 412  # it happened as intended
    assert v.id == "v1" and reader.ids() == ["v1"] and reader.verify("v1") == []
    assert stored(reader, "claims/") == ["claims/v1"]  # no id burned
    assert len(stored(reader, "audit/")) == 1 and reader.audit_log()[0]["action"] == "register"
    assert new_version(writer, make_adapter(tmp_path / "b", seed=1)).id == "v2"


def test_alias_compare_and_swap_whose_answer_was_lost_lands_once(regs, proxy, tmp_path):
    writer, reader = regs
    for i in range(3):
        new_version(reader, make_adapter(tmp_path / f"a{i}", seed=i))
    rule = proxy.add("drop", method="PUT", path="/aliases.json", times=1, landed=True)
    writer.set_alias("production", "v1", expected=None)  # first write: If-None-Match
    assert reader.aliases() == {"production": "v1"} and rule.used == 1

    rule = proxy.add("error", method="PUT", path="/aliases.json", times=1, landed=True)
    writer.set_alias("production", "v2", expected="v1")  # If-Match: no ConflictError for its own write
    assert reader.aliases() == {"production": "v2"} and rule.used == 1

    rule = proxy.add("reset", method="PUT", path="/aliases.json", times=1, landed=True)
    writer.record_decision("v3", {"promote": True, "reason": "better"}, expected_champion=None)
    assert reader.aliases() == {"production": "v2", "champion": "v3"} and rule.used == 1
    assert reader.get("v3").status["status"] == "champion"
    assert [s.status for s in proxy.seen("PUT", "/aliases.json")] == [None, 412, 503, 412, None, 412]

    with pytest.raises(ConflictError, match="production points to v2, not v1"):  # a real conflict still is one
        writer.set_alias("production", "v3", expected="v1")


def test_a_retried_write_refused_by_another_writer_is_a_conflict(regs, proxy, s3_bucket):
    """Only the store's own earlier attempt may excuse a refused retry: another writer's change still wins."""
    writer, reader = regs
    etag = writer.store.put("doc.json", b"first")
    # the writer's first attempt is answered 503 (not applied) after a pause in which another writer writes
    proxy.add("error", method="PUT", path="/doc.json", times=1, delay=1.0)
    other = threading.Timer(0.2, lambda: reader.store.put("doc.json", b"theirs"))
    other.start()
    try:
        with pytest.raises(ConflictError):
            writer.store.put("doc.json", b"mine", if_match=etag)
    finally:
        other.join()
    assert reader.store.get("doc.json")[0] == b"theirs"
    assert [s.status for s in proxy.seen("PUT", "/doc.json")] == [200, 503, 412]


# -- a full local disk --------------------------------------------------------------
FILL = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    from tuneloop.errors import RegistryError
    from tuneloop.registry import LocalRegistry

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
    try:
        LocalRegistry(sys.argv[1]).create_version(sys.argv[2], base_model="b", dataset_version="d",
                                                  parent_version=None, spec={}, metrics={})
        print(json.dumps({"error": None}))
    except RegistryError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
""")


def small_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system holding folder, then give back `leave` bytes."""
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def every_file(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
@pytest.mark.server
def test_a_full_disk_fails_clearly_and_leaves_no_half_file(tmp_path, how):
    """ENOSPC on a small tmpfs (when this process may mount one), or EFBIG under a file size limit: the
    weights file fails mid-write. Nothing appears, no temp file stays, and with room again it works."""
    disk = tmp_path / "disk"
    if how == "tmpfs" and not small_tmpfs(disk, "1m"):
        pytest.skip("mounting a tmpfs is not permitted here (needs root with CAP_SYS_ADMIN); the rlimit variant "
                    "covers the same write path")
    root = disk / "registry"
    try:
        reg = Registry(LocalStore(root))
        new_version(reg, make_adapter(tmp_path / "a0"))
        before = (every_file(root), snapshot(reg))
        big = make_adapter(tmp_path / "big", size=256 * 1024, seed=1)  # the weights outgrow what is left
        if how == "tmpfs":
            filler = fill(disk, leave=64 * 1024)
            with pytest.raises(RegistryError) as err:
                new_version(reg, big)
            msg = str(err.value)
            assert "No space left on device (ENOSPC)" in msg
        else:
            proc = subprocess.run([sys.executable, "-c", FILL, str(root), str(big), str(64 * 1024)],
                                  capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            assert proc.returncode == 0, proc.stderr[-2000:]
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            assert out["error"] == "RegistryError", out
            msg = out["message"]
            assert "File too large (EFBIG)" in msg and "ulimit -f" in msg
        assert "adapter_model.safetensors" in msg and "Fix: free space" in msg and "df -h" in msg
        assert (every_file(root), snapshot(reg)) == before  # no version, no claim, no half or temp file
        assert not [p for p in root.rglob(".*") if p.name != ".lock"]

        if how == "tmpfs":
            filler.unlink()  # room again
        v = new_version(reg, big)
        assert v.id == "v2" and reg.ids() == ["v1", "v2"] and reg.verify("v2") == []
        assert v.manifest["spec"] == SPEC
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)
