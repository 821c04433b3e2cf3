"""Latency and failures of a bounded load across a blue-green switch.

    .venv/bin/python bench/bluegreen_load.py [--requests 2000] [--concurrency 8]

Starts `tuneloop serve` in its own process on a free port with a registry of
two versions (the demo's, from .tuneloop/demo/registry, when `make demo` has
run; else two LoRA adapters made here on the tiny base), serving v1 on blue.
A load generator (threads, the `openai` SDK, one chat completion each) sends
`--requests` requests; after a third of them it loads v2 into green, and
after half it switches green live. Requests are grouped by when they started:
before the load, during the load and switch (from the load call until a
second after the switch), and after. It prints p50/p95 latency of each phase,
how many each version answered, and the failures (the acceptance: 0).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import httpx  # noqa: E402

from tuneloop.serving.slots import quantile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_registry(tmp: Path) -> str:
    demo = ROOT / ".tuneloop" / "demo" / "registry" / "tenants" / "demo"  # the demo tenant's registry
    if (demo / "versions" / "v2" / "manifest.json").exists():
        return str(demo)
    from peft import LoraConfig, get_peft_model

    from tuneloop.models.base import load_model, resolve_base_model
    from tuneloop.registry import open_registry
    from tuneloop.specs import TINY_BASE

    base = resolve_base_model(TINY_BASE, tmp / "models", log=lambda m: None)
    reg = open_registry(str(tmp / "registry"))
    for k in range(2):
        model = get_peft_model(load_model(base), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        model.save_pretrained(tmp / f"a{k}")
        reg.create_version(tmp / f"a{k}", base_model=TINY_BASE, dataset_version="bench", parent_version=None,
                           spec={}, metrics={})
    return str(tmp / "registry")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    import openai

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = {**os.environ, "TUNELOOP_MODELS_DIR": os.environ.get("TUNELOOP_MODELS_DIR",
                                                                    str(ROOT / ".tuneloop" / "models"))}
        registry = make_registry(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        code = ("import sys; from tuneloop.serving.server import run_server; "
                f"run_server(port={port}, registry_url=sys.argv[1], version='v1', log=lambda m: None)")
        proc = subprocess.Popen([sys.executable, "-c", code, registry], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("the server did not start")
                time.sleep(0.2)
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
            results: list[tuple[float, float, str]] = []  # (start, seconds, version or failure)
            lock = threading.Lock()
            counter = iter(range(args.requests))
            marks: dict[str, float] = {}

            def worker():
                while True:
                    with lock:
                        k = next(counter, None)
                    if k is None:
                        return
                    t0 = time.perf_counter()
                    try:
                        raw = client.chat.completions.with_raw_response.create(
                            model="tuneloop", max_tokens=8, temperature=0,
                            messages=[{"role": "user", "content": f"I was charged twice, order {k}"}])
                        what = raw.headers["x-tuneloop-version"]
                    except Exception as e:  # counted and printed
                        what = f"FAILED {type(e).__name__}: {e}"
                    with lock:
                        results.append((t0, time.perf_counter() - t0, what))

            admin = httpx.Client(base_url=url, timeout=120)

            def operator():
                while len(results) < args.requests // 3:
                    time.sleep(0.005)
                marks["load"] = time.perf_counter()
                admin.post("/admin/slots/green/load", json={"version": "v2"}).raise_for_status()
                while len(results) < args.requests // 2:
                    time.sleep(0.005)
                admin.post("/admin/switch", json={"slot": "green"}).raise_for_status()
                marks["switch"] = time.perf_counter()

            threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
            op = threading.Thread(target=operator)
            t_start = time.perf_counter()
            for t in threads + [op]:
                t.start()
            for t in threads + [op]:
                t.join()
            wall = time.perf_counter() - t_start
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    failed = [r for r in results if r[2].startswith("FAILED")]
    phases = {"before": [], "during": [], "after": []}
    for t0, dt, what in results:
        if t0 < marks["load"]:
            phases["before"].append((dt, what))
        elif t0 < marks["switch"] + 1.0:
            phases["during"].append((dt, what))
        else:
            phases["after"].append((dt, what))
    print(f"{len(results)} requests, concurrency {args.concurrency}, {wall:.1f} s wall "
          f"({len(results) / wall:.0f} req/s); green load took {marks['switch'] - marks['load']:.2f} s "
          "before the switch")
    print(f"{'phase':8} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8}  answered by")
    for name, rows in phases.items():
        lat = [dt for dt, _ in rows]
        by = Counter("failed" if w.startswith("FAILED") else w for _, w in rows)
        p50, p95 = (quantile(lat, q) or float("nan") for q in (0.5, 0.95))
        print(f"{name:8} {len(rows):8} {p50 * 1000:8.1f} {p95 * 1000:8.1f}  {dict(by)}")
    print(f"failed requests: {len(failed)}")
    for r in failed[:5]:
        print("  ", r[2])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
