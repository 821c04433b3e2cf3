"""Helpers for the serving tests (not a conftest.py: a second conftest module would shadow the root one for
the tests that do `from conftest import ROOT`): a registry of untrained adapters owned by tenants, and the
fuzz tally printed at the end of the run."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

_REGISTRIES: dict[str, str] = {}


@pytest.fixture(scope="session")
def tenant_registry(tiny_base, tmp_path_factory) -> str:
    """The folder of a registry of three untrained LoRA adapters on the tiny base (made in seconds, no
    training), once per session: v1 names no tenant (so "default"), v2 is tenant acme's, v3 tenant globex's."""
    if tiny_base not in _REGISTRIES:
        from peft import LoraConfig, get_peft_model

        from tuneloop.models.base import load_model
        from tuneloop.registry import open_registry
        from tuneloop.specs import TINY_BASE

        root = tmp_path_factory.mktemp("tenant-registry")
        reg = open_registry(str(root / "registry"))
        for k, tenant in enumerate((None, "acme", "globex")):
            model = get_peft_model(load_model(tiny_base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
            model.save_pretrained(root / f"a{k}")
            reg.create_version(root / f"a{k}", base_model=TINY_BASE, dataset_version="test", parent_version=None,
                               spec={}, metrics={}, extra={"tenant": tenant} if tenant else None)
        _REGISTRIES[tiny_base] = str(root / "registry")
    return _REGISTRIES[tiny_base]


class FuzzTally:
    """tally(surface, accepted) counts one input tried; registered as a plugin, it prints at the end of the run
    `surface: N inputs, K accepted, M rejected`."""

    def __init__(self):
        self.counts: dict[str, Counter] = {}

    def __call__(self, surface: str, accepted: bool) -> None:
        self.counts.setdefault(surface, Counter())["accepted" if accepted else "rejected"] += 1

    def total(self, surface: str) -> int:
        return sum(self.counts.get(surface, Counter()).values())

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.counts:
            terminalreporter.section("serving fuzz")
        for surface, c in self.counts.items():
            terminalreporter.write_line(f"{surface}: {c['accepted'] + c['rejected']} inputs, {c['accepted']} "
                                        f"accepted, {c['rejected']} rejected")


@pytest.fixture(scope="session")
def fuzz_tally(request) -> FuzzTally:
    tally = FuzzTally()
    request.config.pluginmanager.register(tally, "tuneloop-serving-fuzz-tally")
    return tally


def fault_on_canary(url: str, faults: dict) -> threading.Thread:
    """A started thread that injects `faults` into the canary slot of the server at `url` as soon as a canary
    begins (the candidate turns bad once it takes traffic); join it after the promotion."""
    import httpx

    def inject():
        with httpx.Client(base_url=url) as c:
            for _ in range(600):
                st = c.get("/admin/status").json()
                if st["canary"]:
                    c.post(f"/admin/slots/{st['canary']['slot']}/faults", json=faults).raise_for_status()
                    return
                time.sleep(0.02)

    t = threading.Thread(target=inject)
    t.start()
    return t
