"""The service's per-tenant blue-green slots (service.slots): registry versions as adapters on one shared base,
`champion` on the live slot, the gate's champion followed until an admin acts or a production alias exists."""

from __future__ import annotations

import pytest

from tuneloop.service.errors import NotFound
from tuneloop.service.slots import TenantSlots
from tuneloop.serving.adapters import AdapterPool
from tuneloop.specs import TINY_BASE


def live(slots: TenantSlots, tenant: str = "acme") -> tuple[str, str]:
    router, slot = slots.route(tenant, "champion")
    with router.serving(slot) as engine:
        return slot, engine.version


def test_champion_follows_the_gate_until_an_admin_acts_and_versions_share_one_base(registry):
    pool = AdapterPool()
    slots = TenantSlots(lambda tenant: registry, pool, TINY_BASE)
    with pytest.raises(NotFound):  # no champion yet: nothing answers as `champion`
        slots.route("acme", "champion")
    registry.set_alias("champion", "v1")
    assert live(slots) == ("blue", "v1")
    registry.set_alias("champion", "v2", expected="v1")  # the gate picks another: the idle slot takes it
    assert live(slots) == ("green", "v2")
    assert slots.live("acme") == "v2"
    router, slot = slots.route("acme", "champion@blue")  # the previous one stays warm and pinnable
    assert slot == "blue" and router.slots["blue"].engine.version == "v1"
    assert pool.stats()["bases"] == [TINY_BASE] and len(pool.stats()["adapters"]) <= 2  # one base, adapters on it

    slots.tenant("acme", manage=True)  # an admin changed the slots: the gate is no longer followed
    registry.set_alias("champion", "v1", expected="v2")
    assert live(slots) == ("green", "v2")
    with pytest.raises(NotFound):
        slots.route("acme", "some-other-model")


def test_a_production_alias_is_what_the_slots_start_with_and_it_is_not_overridden(registry):
    registry.set_alias("champion", "v1")
    registry.set_alias("production", "v2")
    slots = TenantSlots(lambda tenant: registry, AdapterPool(), TINY_BASE)
    assert slots.live("acme") == "v2"  # before first use: what the slots would load
    assert live(slots) == ("blue", "v2")
    loader = slots.loader("acme")
    assert loader.owner("production") == ("v2", "acme")
    assert loader("base").version == "base"
