"""Promotion and rollback against a real vLLM, for a GPU machine: what tests/serving/test_vllm.py checks
against the local vLLM-speaking fake.

    pip install vllm                       # on the GPU machine, with its CUDA build of torch
    .venv/bin/python scripts/vllm_promote.py [--base DIR_OR_HUB_ID] [--vllm-port 8100] [--port 8200]

Steps (each checked; exit 1 at the first that fails):
1. a base (default: the tiny Llama tuneloop builds, saved to a folder vLLM can read) and three LoRA
   versions in a fresh registry: v1 and v2 random adapters, v3 another;
2. `vllm serve BASE --enable-lora --max-lora-rank 16` with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True;
3. `tuneloop serve --engine vllm --vllm-url ...` with v1 in the blue slot (an adapter in vLLM);
4. `tuneloop deploy promote v2` (blue-green) while a client streams: promoted, 0 failed streams, both
   adapters listed by vLLM's /v1/models;
5. a canary of v3 whose requests all fail once it takes traffic (fault injection): rolled back, and v3's
   adapter unloaded from vLLM.

Accuracy is not what this checks (random adapters answer nonsense): the smoke threshold is 0, and the
rollback comes from the injected errors. Prints one line per step and the figures (load time of an
adapter in vLLM, time to first streamed token through tuneloop).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def wait_ok(url: str, seconds: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    sys.exit(f"{url} not healthy in {seconds:.0f} s")


def prepare(work: Path, base: str | None) -> tuple[str, Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneloop.models.base import load_model, load_tokenizer, resolve_base_model
    from tuneloop.registry import open_registry
    from tuneloop.settings import get_settings
    from tuneloop.specs import TINY_BASE

    if base is None:
        base = str(work / "base")
        tiny = resolve_base_model(TINY_BASE, get_settings().models_dir, log=lambda m: None)
        load_model(tiny).save_pretrained(base)
        load_tokenizer(tiny).save_pretrained(base)
    reg = open_registry(str(work / "registry"))
    for k in range(3):
        torch.manual_seed(k)
        model = get_peft_model(load_model(base), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.normal_(0, 0.05)
        model.save_pretrained(work / f"a{k}")
        reg.create_version(work / f"a{k}", base_model=base, dataset_version="gpu-check", parent_version=None,
                           spec={}, metrics={})
    smoke = work / "smoke.jsonl"
    smoke.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant",
                                                                                     "content": "ok"}]}) + "\n"
                             for q in ("where is my parcel", "reset my password", "I was charged twice")))
    return base, work / "registry", smoke


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="model folder or hub id vLLM serves (default: the tiny base, saved)")
    ap.add_argument("--vllm-port", type=int, default=8100)
    ap.add_argument("--port", type=int, default=8200)
    args = ap.parse_args()
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            base, registry, smoke = prepare(work, args.base)
            print(f"1. base {base}; registry {registry} with v1, v2, v3", flush=True)
            vllm_url, url = f"http://127.0.0.1:{args.vllm_port}", f"http://127.0.0.1:{args.port}"
            procs.append(subprocess.Popen(["vllm", "serve", base, "--port", str(args.vllm_port), "--enable-lora",
                                           "--max-lora-rank", "16", "--max-loras", "4", "--dtype", "float32"],
                                          env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
                                          start_new_session=True))
            wait_ok(vllm_url + "/health", 900, procs[-1])
            print("2. vLLM is up", flush=True)
            env = {**os.environ, "TUNELOOP_REGISTRY": str(registry)}
            tl = [sys.executable, "-m", "tuneloop.cli.main"]
            t0 = time.perf_counter()
            procs.append(subprocess.Popen([*tl, "serve", "--engine", "vllm", "--vllm-url", vllm_url, "--port",
                                           str(args.port), "--version", "v1", "--allow-faults"], env=env,
                                          cwd=ROOT, start_new_session=True))
            wait_ok(url + "/health", 300, procs[-1])
            print(f"3. tuneloop serve --engine vllm up, v1 loaded in {time.perf_counter() - t0:.1f} s", flush=True)
            cfg = work / "promote.yaml"
            cfg.write_text(f"server: {url}\nsmoke: {smoke}\nmin_accuracy: 0\nstep_seconds: 2\nwatch_seconds: 4\n"
                           "max_p95_seconds: 30\n")
            failures, ttft, stop = [], [], threading.Event()

            def stream():
                with httpx.Client(timeout=120) as c:
                    while not stop.is_set():
                        t = time.perf_counter()
                        with c.stream("POST", url + "/v1/chat/completions", json={
                                "model": "tuneloop", "stream": True, "max_tokens": 16,
                                "messages": [{"role": "user", "content": "hello"}]}) as r:
                            first, body = None, []
                            for line in r.iter_lines():
                                first = first or time.perf_counter() - t
                                body.append(line)
                        ttft.append(first)
                        if r.status_code != 200 or "data: [DONE]" not in body:
                            failures.append(r.status_code)

            client = threading.Thread(target=stream)
            client.start()
            done = subprocess.run([*tl, "deploy", "--server", url, "promote", "v2", "--config", str(cfg)], env=env,
                                  cwd=ROOT)
            stop.set()
            client.join(120)
            loaded = {m["id"] for m in httpx.get(vllm_url + "/v1/models").json()["data"]}
            ok = done.returncode == 0 and not failures and {"tuneloop-blue-v1", "tuneloop-green-v2"} <= loaded
            print(f"4. promote v2: exit {done.returncode}; {len(ttft)} streams, {len(failures)} failed; vLLM has "
                  f"{sorted(loaded)}; time to first streamed token p50 "
                  f"{1000 * sorted(ttft)[len(ttft) // 2]:.0f} ms" if ttft else "4. no stream completed", flush=True)
            if not ok:
                return 1

            def corrupt():
                for _ in range(3000):
                    st = httpx.get(url + "/admin/status").json()
                    if st["canary"]:
                        httpx.post(f"{url}/admin/slots/{st['canary']['slot']}/faults", json={"error_rate": 1.0})
                        return
                    time.sleep(0.02)

            threading.Thread(target=corrupt, daemon=True).start()
            done = subprocess.run([*tl, "deploy", "--server", url, "promote", "v3", "--mode", "canary", "--config",
                                   str(cfg)], env=env, cwd=ROOT)
            time.sleep(3)
            loaded = {m["id"] for m in httpx.get(vllm_url + "/v1/models").json()["data"]}
            ok = done.returncode == 1 and not any(n.endswith("-v3") for n in loaded)
            print(f"5. canary v3 failing every request: exit {done.returncode} (1 = rolled back); vLLM has {sorted(loaded)}",
                  flush=True)
            return 0 if ok else 1
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
