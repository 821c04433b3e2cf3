"""Blue and green slots, the routing between them, and what each slot has served.

Exactly one slot is live. A canary sends a fraction of the routed traffic to
the other slot. Switching, setting a canary and rolling back are single
assignments under a lock, so every request sees either the old routing or the
new. A request holds the engine it was routed to until it finishes, so a
switch never interrupts one (graceful drain); unloading a slot waits for its
requests in flight to finish.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from tuneloop.errors import UserError
from tuneloop.serving.engine import Engine

SLOTS = ("blue", "green")
WINDOW_S = 600.0  # request records kept per slot for analysis


class UnknownModel(UserError):
    """A model name this server (or this key's tenant) does not serve: OpenAI's 404 model_not_found."""

    def __init__(self, model: object, served_name: str):
        shown = repr(model) if len(repr(model)) <= 80 else repr(model)[:77] + "..."
        super().__init__(f"model={shown}", f"no such model here (or not one this key may use); the model must be "
                         f"{served_name!r}, a slot ({served_name}@blue, {served_name}@green) or a loaded version",
                         "list the choices with GET /v1/models")


def _check_slot(slot: str) -> str:
    if slot not in SLOTS:
        raise UserError(slot, f"a slot is one of {', '.join(SLOTS)}", "name the blue or the green slot")
    return slot


def takes_turn(k: int, fraction: float) -> bool:
    """Whether the k-th event (1-based) is one of a `fraction` of them, spread evenly and deterministically:
    true whenever floor(k * fraction) advances."""
    return int(k * fraction) != int((k - 1) * fraction)


def other(slot: str) -> str:
    return SLOTS[1 - SLOTS.index(_check_slot(slot))]


@dataclass
class Record:
    at: float
    seconds: float
    ok: bool
    version: str


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile (q in [0, 1]); None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(-(-q * len(s) // 1)) - 1))]


@dataclass
class Slot:
    name: str
    engine: Engine | None = None
    state: str = "empty"  # empty | loading | ready | draining
    in_flight: int = 0
    error: str | None = None
    records: deque = field(default_factory=deque)
    faults: dict = field(default_factory=dict)  # chaos testing: error_rate, delay_s, corrupt (see app.py)
    _served: int = 0

    def stats(self, since: float | None = None, version: str | None = None) -> dict:
        recs = [r for r in list(self.records) if (since is None or r.at >= since)
                and (version is None or r.version == version)]
        lat = [r.seconds for r in recs]
        errors = sum(not r.ok for r in recs)
        return {"requests": len(recs), "errors": errors,
                "error_rate": errors / len(recs) if recs else 0.0,
                "p50_s": quantile(lat, 0.5), "p95_s": quantile(lat, 0.95)}

    def describe(self) -> dict:
        e = self.engine
        return {"slot": self.name, "state": self.state, "version": e.version if e else None,
                "base_model": e.base_model if e else None, "loaded_at": e.loaded_at if e else None,
                "in_flight": self.in_flight, "error": self.error, "faults": self.faults or None}


class Router:
    """Which slot answers a request; thread-safe."""

    def __init__(self, canary_seed: int = 0, unload_on_rollback: bool = False):
        """`unload_on_rollback`: a rollback also unloads the slot it rolled back from (an engine whose
        loaded candidate costs its server memory, such as vLLM's adapters)."""
        self.unload_on_rollback = unload_on_rollback
        self.slots = {s: Slot(s) for s in SLOTS}
        self.live = "blue"
        self.previous: str | None = None
        self.canary: tuple[str, float] | None = None  # (slot, fraction of routed traffic)
        self._lock = threading.Condition()
        self._count = 0
        self._canary_seed = canary_seed
        self.events: deque = deque(maxlen=200)

    # -- state ---------------------------------------------------------------
    def _event(self, what: str, **details) -> None:
        self.events.append({"at": time.time(), "event": what, **details})

    def status(self) -> dict:
        with self._lock:
            return {"live": self.live, "previous": self.previous,
                    "canary": {"slot": self.canary[0], "weight": self.canary[1]} if self.canary else None,
                    "slots": {n: s.describe() for n, s in self.slots.items()},
                    "events": list(self.events)[-20:]}

    def live_version(self) -> str | None:
        e = self.slots[self.live].engine
        return e.version if e else None

    # -- loading -------------------------------------------------------------
    def begin_load(self, slot: str) -> None:
        with self._lock:
            s = self.slots[_check_slot(slot)]
            if slot == self.live and s.engine is not None:
                raise UserError(slot, "the live slot cannot be replaced while it serves",
                                f"load into the idle slot ({other(slot)}) and switch to it")
            if self.canary and self.canary[0] == slot:
                raise UserError(slot, "a slot cannot be replaced while it takes canary traffic",
                                "finish or roll back the canary first")
            if s.state == "loading":
                raise UserError(slot, "a load into this slot is already running", "wait for it to finish")
            s.state, s.error = "loading", None
        self._drain(slot)

    def load(self, slot: str, make: Callable[[], Engine]) -> Engine:
        """Load `make()` into a slot (waiting for its requests in flight first); blocking, so call it off the
        event loop. A failed load leaves the slot empty with the error shown in its status."""
        self.begin_load(slot)
        try:
            engine = make()
        except BaseException as e:
            self.finish_load(slot, None, f"{type(e).__name__}: {e}")
            raise
        self.finish_load(slot, engine)
        return engine

    def finish_load(self, slot: str, engine: Engine | None, error: str | None = None) -> None:
        with self._lock:
            s = self.slots[slot]
            old, s.engine, s.error = s.engine, engine, error
            s.state = "ready" if engine else "empty"
            s.records.clear()
            s.faults = {}
            self._event("loaded" if engine else "load-failed", slot=slot,
                        version=engine.version if engine else None, error=error)
        _release(old, engine)

    def _drain(self, slot: str, timeout: float = 300.0) -> bool:
        """Wait until no request is in flight on the slot."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.slots[slot].in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def unload(self, slot: str, timeout: float = 300.0) -> bool:
        with self._lock:
            if _check_slot(slot) == self.live:
                raise UserError(slot, "the live slot cannot be unloaded", "switch to the other slot first")
            if self.canary and self.canary[0] == slot:
                raise UserError(slot, "a slot taking canary traffic cannot be unloaded", "end the canary first")
            self.slots[slot].state = "draining"
        drained = self._drain(slot, timeout)
        with self._lock:
            s = self.slots[slot]
            old, s.engine, s.state = s.engine, None, "empty"
            self._event("unloaded", slot=slot, drained=drained)
        _release(old, None)
        return drained

    # -- routing -------------------------------------------------------------
    def ready(self, slot: str) -> Slot:
        s = self.slots[_check_slot(slot)]
        if s.engine is None or s.state not in ("ready",):
            raise UserError(slot, f"slot {slot} is {s.state}, not ready", "load a version into it first")
        return s

    def switch(self, slot: str) -> dict:
        with self._lock:
            self.ready(slot)
            if slot != self.live:
                self.previous, self.live = self.live, slot
            self.canary = None
            self._event("switch", live=slot, version=self.slots[slot].engine.version)
        return self.status()

    def set_canary(self, slot: str, weight: float) -> dict:
        if not 0.0 <= weight <= 1.0:
            raise UserError(weight, "a canary weight is a fraction between 0 and 1", "give e.g. 0.1 for 10%")
        with self._lock:
            if slot == self.live:
                raise UserError(slot, "the canary must be the idle slot, not the live one",
                                f"load the candidate into {other(self.live)}")
            self.ready(slot)
            self.canary = (slot, weight) if weight > 0 else None
            self._event("canary", slot=slot, weight=weight)
        return self.status()

    def rollback(self) -> dict:
        """End a canary; if there is none, switch back to the previous live slot (kept warm)."""
        with self._lock:
            if self.canary is not None:
                slot, _ = self.canary
                self.canary = None
                self._event("rollback", ended_canary=slot)
            elif self.previous and self.slots[self.previous].engine is not None:
                slot = self.live
                self.live, self.previous = self.previous, self.live
                self._event("rollback", live=self.live, version=self.slots[self.live].engine.version)
            else:
                raise UserError("rollback", "there is no canary and no warm previous slot to go back to",
                                "load the version you want into the idle slot and switch to it")
            if self.unload_on_rollback:  # drains, so not here: the caller may be the event loop
                self.slots[slot].state = "draining"
                threading.Thread(target=self._unload_rolled_back, args=(slot,), daemon=True).start()
        return self.status()

    def _unload_rolled_back(self, slot: str) -> None:
        drained = self._drain(slot)
        with self._lock:
            s = self.slots[slot]
            if s.state != "draining":  # a load into it began meanwhile: that load replaces it
                return
            old, s.engine, s.state = s.engine, None, "empty"
            self._event("unloaded", slot=slot, drained=drained, after="rollback")
        _release(old, None)

    def _pinned(self, model: str, served_name: str) -> str | None:
        for n, s in self.slots.items():
            if model in (n, f"{served_name}@{n}") or (s.engine is not None and s.engine.version == model):
                return n
        return None

    def check(self, model: str, served_name: str) -> None:
        """Raise UnknownModel unless `model` routes somewhere now (no side effect on canary counting)."""
        with self._lock:
            if model in (served_name, "") or self._pinned(model, served_name) is not None:
                return
        raise UnknownModel(model, served_name)

    def route(self, model: str, served_name: str) -> str:
        """The slot for a request naming `model`: the served name follows live/canary routing;
        a slot name or a loaded version id pins the request there."""
        with self._lock:
            if model in (served_name, "", None):
                if self.canary is not None:
                    slot, w = self.canary
                    self._count += 1
                    if takes_turn(self._count + self._canary_seed, w):
                        return slot
                return self.live
            pinned = self._pinned(model, served_name)
        if pinned is None:
            raise UnknownModel(model, served_name)
        return pinned

    @contextmanager
    def serving(self, slot: str):
        """Hold a slot's engine for one request; records latency and outcome."""
        with self._lock:
            s = self.ready(slot)
            engine = s.engine
            s.in_flight += 1
        t0 = time.perf_counter()
        ok = False
        try:
            yield engine
            ok = True
        finally:
            dt = time.perf_counter() - t0
            with self._lock:
                s.in_flight -= 1
                now = time.time()
                s.records.append(Record(now, dt, ok, engine.version))
                while s.records and s.records[0].at < now - WINDOW_S:
                    s.records.popleft()
                self._lock.notify_all()


def _release(old, new) -> None:
    """Let a slot's previous engine free what it holds elsewhere (a vLLM adapter), if it has a `release`."""
    if old is not None and old is not new and hasattr(old, "release"):
        try:
            old.release()
        except Exception as e:  # the slot has moved on either way; the event log says what was left behind
            import logging

            logging.getLogger(__name__).warning(f"releasing {old.version} failed: {type(e).__name__}: {e}")


__all__ = ["SLOTS", "Router", "Slot", "UnknownModel", "other", "quantile"]
