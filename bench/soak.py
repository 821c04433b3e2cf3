"""Soak: the serving process under a bounded concurrent load, first within its capacity, then above it.

    .venv/bin/python bench/soak.py [--duration 180] [--max-concurrency 4] [--max-queue 16]
                                   [--within N] [--above M] [--max-tokens 8]

Starts `tuneloop serve` in its own process on a free port, with `--max-concurrency` and `--max-queue`, serving
a registry version (an untrained LoRA on the tiny base, made here in a second). After a warm-up, phase 1 runs
`--within` closed-loop clients (default: exactly the capacity, max-concurrency + max-queue, so no request can
find the server full) and phase 2 runs `--above` clients (default 3x the capacity), half the duration each.
Clients are threads with the `openai` SDK, `max_retries=0` so that every 429 is counted; in phase 2 a client
that gets a 429 waits the answer's Retry-After before its next request, as the SDK's own retries would.

Prints, per phase: requests, answered, 429s, 5xx, other errors, p50/p95/p99 latency of the answered ones;
the server's RSS after the warm-up and at the end, and the growth; and a last line `soak: {json}` with the
figures. Exits 1 unless: 0 errors within capacity, no 5xx, some 429s above capacity, RSS growth under
--max-growth-pct (default 10).
"""

from __future__ import annotations

import argparse
import json
import os
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

from tuneloop.serving.capacity import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_QUEUE  # noqa: E402
from tuneloop.serving.slots import quantile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bluegreen_load import free_port  # noqa: E402


def make_registry(tmp: Path, models: Path) -> str:
    """One version: an untrained LoRA (q/v) on the tiny base (cached under `models`; built there if absent)."""
    from peft import LoraConfig, get_peft_model

    from tuneloop.models.base import load_model, resolve_base_model
    from tuneloop.registry import open_registry
    from tuneloop.specs import TINY_BASE

    base = resolve_base_model(TINY_BASE, models, log=lambda m: print(m, file=sys.stderr))
    reg = open_registry(str(tmp / "registry"))
    model = get_peft_model(load_model(base), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp / "adapter")
    reg.create_version(tmp / "adapter", base_model=TINY_BASE, dataset_version="soak", parent_version=None, spec={},
                       metrics={})
    return str(tmp / "registry")


class Load:
    """Closed-loop clients: each sends a chat completion as soon as its last one is answered."""

    def __init__(self, url: str, max_tokens: int):
        self.url, self.max_tokens = url, max_tokens
        self.results: list[tuple[str, float, str]] = []  # (phase, seconds, "ok" | "429" | "5xx" | "error: ...")
        self.lock = threading.Lock()
        self.phase = "warm-up"
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.active = 0
        self.in_flight: Counter = Counter()  # by phase

    def start_phase(self, phase: str, n: int) -> None:
        """Label what is sent from now on `phase`, let the previous phase's requests finish (so that none of
        them meets this phase's extra clients), then run n clients."""
        with self.lock:
            before, self.phase = self.phase, phase
        while self.in_flight[before]:
            time.sleep(0.005)
        self.active = n
        while len(self.threads) < n:
            t = threading.Thread(target=self._client, args=(len(self.threads),), daemon=True)
            self.threads.append(t)
            t.start()

    def _client(self, k: int) -> None:
        import openai

        client = openai.OpenAI(base_url=self.url + "/v1", api_key="soak", max_retries=0, timeout=120)
        n = 0
        while not self.stop.is_set():
            if k >= self.active:
                time.sleep(0.05)
                continue
            with self.lock:
                phase, wait = self.phase, 0.0
                self.in_flight[phase] += 1
            t0 = time.perf_counter()
            try:
                client.chat.completions.create(model="tuneloop", max_tokens=self.max_tokens, temperature=0,
                                               messages=[{"role": "user", "content": f"I was charged twice, order "
                                                                                     f"{k}-{n}"}])
                what = "ok"
            except openai.RateLimitError as e:
                what, wait = "429", float(e.response.headers.get("retry-after", "1"))
            except openai.InternalServerError as e:
                what = f"5xx {e.status_code}"
            except Exception as e:  # noqa: BLE001 - counted and shown
                what = f"error: {type(e).__name__}: {str(e)[:120]}"
            dt = time.perf_counter() - t0
            n += 1
            with self.lock:
                self.results.append((phase, dt, what))
                self.in_flight[phase] -= 1
            if wait:
                self.stop.wait(wait)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(150)


def summarize(rows: list[tuple[float, str]]) -> dict:
    lat = [dt for dt, what in rows if what == "ok"]
    kinds = Counter("error" if w.startswith("error") else w.split()[0] for _, w in rows)
    ms = {f"p{int(q * 100)}_ms": None if not lat else round(quantile(lat, q) * 1000, 1) for q in (0.5, 0.95, 0.99)}
    failures = sorted({w for _, w in rows if w.startswith(("5xx", "error"))})
    return {"requests": len(rows), "ok": kinds["ok"], "429": kinds["429"], "5xx": kinds["5xx"],
            "errors": kinds["error"], **ms, "examples": failures[:3]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of load after the warm-up (default 180)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds (default: 10%% of --duration, 3 to 15)")
    ap.add_argument("--max-concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY)
    ap.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE)
    ap.add_argument("--within", type=int, help="clients in phase 1 (default: the capacity)")
    ap.add_argument("--above", type=int, help="clients in phase 2 (default: 3x the capacity)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--max-growth-pct", type=float, default=10.0)
    args = ap.parse_args()
    import psutil

    capacity = args.max_concurrency + args.max_queue
    within, above = args.within or capacity, args.above or 3 * capacity
    warmup = args.warmup if args.warmup is not None else min(15.0, max(3.0, args.duration / 10))
    models = Path(os.environ.get("TUNELOOP_MODELS_DIR", ROOT / ".tuneloop" / "models"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        registry = make_registry(tmp, models)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "TUNELOOP_MODELS_DIR": str(models), "TUNELOOP_STATE_DIR": str(tmp / "state")}
        cmd = [sys.executable, "-c", "import sys; from tuneloop.cli.main import main; sys.exit(main())", "serve",
               "--port", str(port), "--registry", registry, "--version", "v1",
               "--max-concurrency", str(args.max_concurrency), "--max-queue", str(args.max_queue)]
        log = open(tmp / "server.log", "w+")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        load = Load(url, args.max_tokens)
        rss: list[tuple[float, int]] = []
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    log.seek(0)
                    sys.exit(f"the server did not start:\n{log.read()[-3000:]}")
                time.sleep(0.2)
            server = psutil.Process(proc.pid)
            load.start_phase("warm-up", within)
            time.sleep(warmup)
            rss.append((time.monotonic(), server.memory_info().rss))
            t_start = time.monotonic()
            for phase, n in (("within", within), ("above", above)):
                load.start_phase(phase, n)
                end = time.monotonic() + args.duration / 2
                while time.monotonic() < end:
                    time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                    rss.append((time.monotonic(), server.memory_info().rss))
            wall = time.monotonic() - t_start
        finally:
            load.close()
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()

    phases = {p: summarize([(dt, w) for ph, dt, w in load.results if ph == p]) for p in ("within", "above")}
    start_mb, end_mb = rss[0][1] / 2**20, rss[-1][1] / 2**20
    growth = 100 * (end_mb - start_mb) / start_mb
    print(f"soak: {wall:.0f} s after a {warmup:.0f} s warm-up; capacity {args.max_concurrency} running + "
          f"{args.max_queue} queued; {within} clients, then {above}; max_tokens {args.max_tokens}")
    print(f"{'phase':7} {'clients':>7} {'requests':>8} {'ok':>6} {'429':>6} {'5xx':>4} {'errors':>6} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'ok/s':>6}")
    for (name, s), n in zip(phases.items(), (within, above)):
        fmt = [f"{s[k]:7.1f}" if s[k] is not None else f"{'-':>7}" for k in ("p50_ms", "p95_ms", "p99_ms")]
        print(f"{name:7} {n:7} {s['requests']:8} {s['ok']:6} {s['429']:6} {s['5xx']:4} {s['errors']:6} "
              f"{' '.join(fmt)} {s['ok'] / (args.duration / 2):6.1f}")
        for ex in s["examples"]:
            print("   e.g.", ex)
    print(f"server RSS: {start_mb:.1f} MiB after warm-up, {end_mb:.1f} MiB at the end "
          f"({growth:+.1f}%), peak {max(r for _, r in rss) / 2**20:.1f} MiB")
    w, a = phases["within"], phases["above"]
    error_rate_within = (w["requests"] - w["ok"]) / w["requests"] if w["requests"] else None
    ok = (w["requests"] > 0 and w["ok"] == w["requests"] and a["5xx"] == 0 and a["errors"] == 0 and a["429"] > 0
          and growth < args.max_growth_pct)
    print("soak: " + json.dumps({
        "passed": ok, "seconds": round(wall, 1), "max_concurrency": args.max_concurrency, "max_queue": args.max_queue,
        "clients_within": within, "clients_above": above, "error_rate_within": error_rate_within,
        "within": {k: v for k, v in w.items() if k != "examples"},
        "above": {k: v for k, v in a.items() if k != "examples"},
        "rss_start_mib": round(start_mb, 1), "rss_end_mib": round(end_mb, 1), "rss_growth_pct": round(growth, 2)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
