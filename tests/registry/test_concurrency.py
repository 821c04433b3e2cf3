"""Concurrent writers and crashes, on a folder and on S3 (a moto server).

Where a race must happen for the test to mean anything, a barrier in the store holds each writer
just before its first conditional write, so both have read before either writes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from regtools import BACKENDS, location, make_adapter, new_version, open_backend, raw_keys
from tuneloop.errors import ConflictError, NotFoundError
from tuneloop.registry import Registry, open_registry

PROMOTE = {"promote": True, "reason": "promoted: better than v1"}


def gated(store, prefix: str, parties: int):
    """The same store, but each thread waits at a barrier before its first put under `prefix`;
    `refused` records the conditional writes the store refused."""
    barrier, seen = threading.Barrier(parties, timeout=30), threading.local()

    class Gated(type(store)):
        def put(self, key, data, **kw):
            if key.startswith(prefix) and not getattr(seen, "waited", False):
                seen.waited = True
                barrier.wait()
            try:
                return super().put(key, data, **kw)
            except ConflictError:
                self.refused.append(key)
                raise

    g = Gated.__new__(Gated)
    g.__dict__.update(store.__dict__)
    g.refused = []
    return g


def run_threads(target, args_list) -> list:
    """Run target(*args) in one thread each; returns each result or the exception it raised."""
    out: list = [None] * len(args_list)

    def work(i, args):
        try:
            out[i] = target(*args)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out[i] = e

    threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return out


@pytest.fixture(params=BACKENDS)
def loc(request, tmp_path) -> str:
    request.getfixturevalue("state_dir")
    return location(request.param, request, tmp_path)


# -- creating versions ------------------------------------------------------------
@pytest.mark.server
def test_concurrent_create_version_gives_distinct_ids(loc, tmp_path):
    n = 6
    adapters = [make_adapter(tmp_path / f"a{i}", payload=f"weights-{i}".encode() * 100) for i in range(n)]
    barrier = threading.Barrier(n, timeout=30)

    def create(i):
        reg = open_registry(loc)  # each writer has its own registry, as separate processes would
        barrier.wait()
        return new_version(reg, adapters[i], em=i / 10)

    results = run_threads(create, [(i,) for i in range(n)])
    assert not [r for r in results if isinstance(r, BaseException)], results
    reg = open_registry(loc)
    assert sorted(v.id for v in results) == sorted(reg.ids()) == sorted(f"v{i}" for i in range(1, n + 1))
    for v in results:  # each version holds exactly the bytes its own caller passed in
        assert reg.verify(v.id) == []
        i = round(v.metrics["exact_match"] * 10)
        assert (reg.adapter_for(v.id) / "adapter_model.safetensors").read_bytes() == (
            adapters[i] / "adapter_model.safetensors").read_bytes()
    assert [k for k in raw_keys(reg) if k.startswith("claims/")] == sorted(f"claims/{v}" for v in reg.ids())
    assert not [k for k in raw_keys(reg) if any(p.startswith(".") for p in k.split("/"))]


def test_two_writers_that_pick_the_same_id_both_land_intact(loc, tmp_path):
    """Both list the registry and pick v1 before either claims it: one claim is refused, that writer
    takes v2, and neither ever writes into the other's folder."""
    base = open_registry(loc)
    store = gated(base.store, "claims/", 2)
    adapters = [make_adapter(tmp_path / f"a{i}", payload=f"w{i}".encode() * 50) for i in range(2)]

    def create(i):
        return new_version(Registry(store, cache_dir=base.cache_dir), adapters[i], em=i / 10)

    results = run_threads(create, [(0,), (1,)])
    assert store.refused == ["claims/v1"]  # the race happened and the store refused the second claim
    assert sorted(v.id for v in results) == ["v1", "v2"]
    for v in results:
        assert base.verify(v.id) == []
        i = round(v.metrics["exact_match"] * 10)
        assert (base.adapter_for(v.id) / "adapter_model.safetensors").read_bytes() == (
            adapters[i] / "adapter_model.safetensors").read_bytes()


# -- promotions -----------------------------------------------------------------
def setup_champion_and_two_challengers(reg: Registry, tmp_path: Path) -> None:
    for i in range(3):
        new_version(reg, make_adapter(tmp_path / f"c{i}", payload=f"c{i}".encode() * 10), em=0.5 + i / 10,
                    parent=None if i == 0 else "v1")
    reg.record_decision("v1", {"promote": True, "reason": "first"})


def assert_one_winner(reg: Registry, results: dict) -> None:
    winners = [v for v, r in results.items() if r is None]
    losers = [v for v, r in results.items() if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1, results
    (win,), (lose,) = winners, losers
    err = results[lose]
    assert isinstance(err, ConflictError), err
    assert f"champion changed from v1 to {win} while promoting {lose}" in str(err)
    assert "re-run" in str(err).lower()
    # aliases and statuses agree: one champion, the old one retired, the loser untouched
    assert reg.aliases() == {"champion": win}
    statuses = {v.id: v.status for v in reg.list()}
    assert statuses[win]["status"] == "champion" and statuses[win]["replaced"] == "v1"
    assert statuses["v1"]["status"] == "retired" and win in statuses["v1"]["reason"]
    assert statuses[lose] == {"status": "candidate"}
    assert [v.id for v in reg.search(status="champion")] == [win]


@pytest.mark.parametrize("kind", BACKENDS)
def test_two_concurrent_promotions_exactly_one_wins(kind, request, tmp_path):
    """Two retrain runs both compared their candidate with champion v1 and both want to promote."""
    reg = open_backend(kind, request, tmp_path)
    setup_champion_and_two_challengers(reg, tmp_path)
    barrier = threading.Barrier(2, timeout=30)

    def promote(vid):
        mine = open_registry(reg.location)
        incumbent = mine.champion().id  # both read v1 before either writes
        barrier.wait()
        mine.record_decision(vid, PROMOTE, expected_champion=incumbent)

    out = run_threads(promote, [("v2",), ("v3",)])
    assert_one_winner(reg, dict(zip(("v2", "v3"), out)))


@pytest.mark.parametrize("kind", BACKENDS)
def test_promotions_racing_inside_record_decision(kind, request, tmp_path):
    """Without an expected champion: both read the aliases document inside record_decision before either
    writes it; the compare-and-swap (If-Match on S3) lets one through and refuses the other."""
    reg = open_backend(kind, request, tmp_path)
    setup_champion_and_two_challengers(reg, tmp_path)
    store = gated(reg.store, "aliases.json", 2)

    def promote(vid):
        Registry(store, cache_dir=reg.cache_dir).record_decision(vid, PROMOTE)

    out = run_threads(promote, [("v2",), ("v3",)])
    assert store.refused == ["aliases.json"]  # the loser's If-Match write was refused by the store
    assert_one_winner(reg, dict(zip(("v2", "v3"), out)))


@pytest.mark.parametrize("kind", BACKENDS)
def test_alias_changes_to_different_aliases_both_land(kind, request, tmp_path):
    """Compare-and-swap retries a lost race when what it relies on did not change."""
    reg = open_backend(kind, request, tmp_path)
    setup_champion_and_two_challengers(reg, tmp_path)
    store = gated(reg.store, "aliases.json", 2)
    out = run_threads(lambda alias, vid: Registry(store, cache_dir=reg.cache_dir).set_alias(alias, vid),
                      [("production", "v1"), ("challenger", "v3")])
    assert out == [None, None] and store.refused == ["aliases.json"]  # one lost the race, then retried
    assert reg.aliases() == {"champion": "v1", "production": "v1", "challenger": "v3"}


# -- crashes --------------------------------------------------------------------
CRASH = textwrap.dedent("""
    import os, signal, sys
    from tuneloop.registry import Registry, open_registry

    reg = open_registry(sys.argv[1])
    store = reg.store

    class Dies(type(store)):
        def put(self, key, data, **kw):
            if key.endswith("manifest.json"):
                os.kill(os.getpid(), signal.SIGKILL)  # the machine dies just before the commit point
            return super().put(key, data, **kw)

    dying = Dies.__new__(Dies)
    dying.__dict__.update(store.__dict__)
    Registry(dying, cache_dir=reg.cache_dir).create_version(
        sys.argv[2], base_model="b", dataset_version="d", parent_version=None, spec={}, metrics={})
""")


@pytest.mark.server
def test_a_killed_writer_leaves_no_visible_version(loc, tmp_path):
    reg = open_registry(loc)
    adapter = make_adapter(tmp_path / "adapter")
    new_version(reg, adapter)
    proc = subprocess.run([sys.executable, "-c", CRASH, loc, str(adapter)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    assert "versions/v2/adapter/adapter_model.safetensors" in raw_keys(reg)  # its files were written...
    assert reg.ids() == ["v1"] and [v.id for v in reg.list()] == ["v1"]  # ...but no version appeared
    with pytest.raises(NotFoundError):
        reg.get("v2")
    v3 = new_version(reg, adapter)
    assert v3.id == "v3"  # the dead writer's id stays taken; nothing is written into its folder
    assert reg.verify("v1") == [] and reg.verify("v3") == []


@pytest.mark.parametrize("failure", [OSError("disk full (simulated)"), KeyboardInterrupt()])
def test_a_failed_create_cleans_up_and_frees_its_id(loc, tmp_path, failure):
    reg = open_registry(loc)
    adapter = make_adapter(tmp_path / "adapter")
    new_version(reg, adapter)
    before = raw_keys(reg)

    class Fails(type(reg.store)):
        def put(self, key, data, **kw):
            if key.endswith("manifest.json"):
                raise failure
            return super().put(key, data, **kw)

    failing = Fails.__new__(Fails)
    failing.__dict__.update(reg.store.__dict__)
    with pytest.raises(type(failure)):
        new_version(Registry(failing, cache_dir=reg.cache_dir), adapter)
    assert raw_keys(reg) == before and reg.ids() == ["v1"]
    assert new_version(reg, adapter).id == "v2"


def test_a_commit_whose_answer_was_lost_is_kept(loc, tmp_path):
    """The manifest PUT lands but its answer never arrives (a timeout, or botocore's retry refused with 412
    because the first attempt succeeded): the version is complete, so it is kept, not cleaned away."""
    reg = open_registry(loc)
    adapter = make_adapter(tmp_path / "adapter")

    class LosesAnswer(type(reg.store)):
        def put(self, key, data, **kw):
            etag = super().put(key, data, **kw)
            if key.endswith("manifest.json"):
                raise ConflictError("412 on a retried PUT (simulated)")
            return etag

    flaky = LosesAnswer.__new__(LosesAnswer)
    flaky.__dict__.update(reg.store.__dict__)
    v = new_version(Registry(flaky, cache_dir=reg.cache_dir), adapter)
    assert v.id == "v1" and reg.ids() == ["v1"] and reg.verify("v1") == []
    assert reg.adapter_for("v1").is_dir()
