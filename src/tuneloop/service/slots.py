"""Each tenant's blue and green slots in the service: what the model `champion` answers from.

A slot holds a registry version of the tenant as an adapter on the pool's shared base (no merged copy), so a
slot costs an adapter's memory, not a model's. The slots are the serving Router of `tuneloop serve`: the
promote flow drives them through the same admin routes (serving.app.add_admin_routes), loading a candidate
into the idle slot, validating it, switching or shifting canary weight, and rolling back on a breach.

What the live slot holds: at first use, the tenant's `production` version (the alias a promotion moves),
else its registry champion. Until the tenant's first promotion sets `production`, the live slot follows the
champion that the retrain gate picks (as `champion` did before there were slots), unless an admin key (a
promotion's included) has changed the slots since the service started; from then on only a promotion, or
an admin call, changes it.
"""

from __future__ import annotations

import threading

from tuneloop.errors import UserError
from tuneloop.serving.app import Metrics, Tenant
from tuneloop.serving.slots import SLOTS, Router, other
from tuneloop.service.errors import NotFound

CHAMPION = "champion"  # the model name the slots answer to; "champion@blue" / "blue" pin a slot
PINS = {*SLOTS, *(f"{CHAMPION}@{s}" for s in SLOTS)}


class VersionLoader:
    """A tenant's registry version as an engine on the shared pool (the `Loader` the admin routes call)."""

    def __init__(self, registry, pool, tenant: str, base: str):
        self.registry, self.pool, self.tenant, self.base = registry, pool, tenant, base

    def owner(self, ref: str) -> tuple[str, str]:
        """(version id, tenant): the tenant's own registry holds only its versions."""
        return self.registry.get(ref).id, self.tenant

    def __call__(self, ref: str):
        if ref == "base":
            return self.pool.engine(self.base)
        return self.pool.version_engine(self.registry, ref, self.tenant)


class TenantSlots:
    """The tenants' Routers, made on first use (`tenant(name)`); `registry(name)` opens a tenant's registry."""

    def __init__(self, registry, pool, base: str):
        self._registry, self.pool, self.base = registry, pool, base
        self._tenants: dict[str, Tenant] = {}
        self._managed: set[str] = set()  # tenants whose slots an admin call changed: the gate is not followed
        self._mu = threading.Lock()

    def loader(self, tenant: str) -> VersionLoader:
        return VersionLoader(self._registry(tenant), self.pool, tenant, self.base)

    def tenant(self, name: str, manage: bool = False) -> Tenant:
        """The tenant's slots; `manage`: an admin call that changes them (from then on they follow no gate)."""
        with self._mu:
            if manage:
                self._managed.add(name)
            t = self._tenants.get(name)
            if t is None:
                t = self._tenants[name] = Tenant(name, Router(), CHAMPION, Metrics())
                ref = self._wanted(name)
                if ref is not None:
                    t.router.load("blue", lambda: self.loader(name)(ref))
        return t

    def _wanted(self, tenant: str) -> str | None:
        aliases = self._registry(tenant).aliases()
        return aliases.get("production") or aliases.get("champion")

    def route(self, tenant: str, model: str) -> tuple[Router, str]:
        """The Router and slot that answer `model` (champion, champion@blue, blue, ...) for this tenant."""
        t = self.tenant(tenant)
        if model == CHAMPION:
            self._follow(tenant, t.router)
        with_slots = t.router.status()["slots"]
        if model == CHAMPION and not any(s["version"] for s in with_slots.values()):
            raise NotFound(model, "model", "GET /v1/models", "model")  # no version yet: nothing is champion
        try:
            return t.router, t.router.route(model, CHAMPION)
        except UserError:
            raise NotFound(model, "model", "GET /v1/models", "model") from None

    def _follow(self, tenant: str, router: Router) -> None:
        """Before the first promotion: the live slot takes the gate's new champion (idle slot, then switch)."""
        if tenant in self._managed:
            return
        aliases = self._registry(tenant).aliases()
        champion = aliases.get("champion")
        if aliases.get("production") or not champion or router.live_version() == champion:
            return
        st = router.status()
        if st["canary"] or any(s["state"] == "loading" for s in st["slots"].values()):
            return  # an admin or a promotion is at work on the slots: leave them be
        idle = other(router.live) if router.live_version() else router.live
        try:
            router.load(idle, lambda: self.loader(tenant)(champion))
            router.switch(idle)
        except UserError:
            pass  # someone else changed the slots meanwhile: their change stands

    def live(self, tenant: str) -> str | None:
        """The version `champion` answers with: the live slot's, or what the slots would load first."""
        with self._mu:
            t = self._tenants.get(tenant)
        if t is not None and t.router.live_version():
            self._follow(tenant, t.router)
            return t.router.live_version()
        return self._wanted(tenant)
