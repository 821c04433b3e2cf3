"""Back-pressure: max_concurrency generations run, max_queue wait, the rest get 429 with Retry-After at once;
and the soak bench, short: no error within capacity, 429s and no 5xx above it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tuneloop.errors import UserError

from servekit import tenant_registry  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def test_admission_runs_queues_in_order_and_refuses_beyond():
    from tuneloop.serving.capacity import Admission, Overloaded

    async def main():
        adm = Admission(max_concurrency=1, max_queue=1)
        events, release = [], anyio.Event()

        async def request(name):
            try:
                async with adm.slot():
                    events.append(f"run {name}")
                    await release.wait()
            except Overloaded as e:
                events.append(f"429 {name} after {e.retry_after_s} s")

        async with anyio.create_task_group() as tg:
            for name in "abc":
                tg.start_soon(request, name)
                await anyio.wait_all_tasks_blocked()
            assert (adm.running, len(adm.waiting), adm.refused) == (1, 1, 1)
            release.set()
        assert events == ["run a", "429 c after 1 s", "run b"]
        assert (adm.running, len(adm.waiting)) == (0, 0)
        # a waiter that gives up (client gone, timeout) leaves the queue and frees its place
        gate = anyio.Event()

        async def hold():
            async with adm.slot():
                await gate.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await anyio.wait_all_tasks_blocked()
            with anyio.move_on_after(0.05):
                async with adm.slot():
                    raise AssertionError("no slot was free")
            assert (adm.running, len(adm.waiting)) == (1, 0)
            gate.set()
        assert (adm.running, len(adm.waiting)) == (0, 0)

    anyio.run(main)


@pytest.mark.parametrize("kw, says", [({"max_concurrency": 0}, "max_concurrency=0"),
                                      ({"max_queue": -1}, "max_queue=-1")])
def test_bad_limits_are_refused(kw, says):
    from tuneloop.serving.capacity import Admission

    with pytest.raises(UserError, match=says):
        Admission(**kw)


def test_over_capacity_answers_429_with_retry_after(tenant_registry):
    """One generation at a time, one waiting; each takes 0.5 s (an injected delay): of three at once, two are
    answered and the third is refused at once."""
    import httpx

    from tuneloop.registry import open_registry
    from tuneloop.serving.app import Loader, create_app
    from tuneloop.serving.slots import Router
    from tuneloop.specs import TINY_BASE

    loader = Loader(open_registry(tenant_registry), TINY_BASE)
    router = Router()
    router.load("blue", lambda: loader("v1"))
    app = create_app(router, loader, allow_faults=True, max_concurrency=1, max_queue=1)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            (await c.post("/admin/slots/blue/faults", json={"delay_s": 0.5})).raise_for_status()
            answers = []

            async def ask():
                answers.append(await c.post("/v1/chat/completions", json=body))

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(ask)
            return answers, (await c.get("/metrics")).text

    answers, metrics = anyio.run(main)
    assert sorted(r.status_code for r in answers) == [200, 200, 429]
    refused = answers[0]  # refused at once, so answered first
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    err = refused.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "server_at_capacity"
    assert "max_concurrency 1, max_queue 1" in err["message"] and "Fix: retry after" in err["message"]
    assert "tuneloop_serving_refused_total 1.0" in metrics
    assert 'tuneloop_serving_requests_total{outcome="ok",slot="blue",version="v1"} 2.0' in metrics


def test_soak_short(tiny_base):
    """bench/soak.py for ~24 s at a small capacity (2 running + 2 queued): 4 clients, then 12."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the tiny model gains nothing from a second thread
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "24", "--warmup", "3",
                           "--max-concurrency", "2", "--max-queue", "2", "--max-tokens", "4"],
                          capture_output=True, text=True, env=env, timeout=300)
    print(proc.stdout)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith("soak: {"), proc.stdout + proc.stderr[-3000:]
    got = json.loads(last.removeprefix("soak: "))
    within, above = got["within"], got["above"]
    assert within["requests"] > 0 and within["ok"] == within["requests"]  # no error within capacity
    assert above["429"] > 0 and above["5xx"] == 0 and above["errors"] == 0  # refused, never failed
    assert got["rss_growth_pct"] < 10
    assert proc.returncode == 0, proc.stdout
