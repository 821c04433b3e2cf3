"""Batching across requests: the batched server against the one-at-a-time server, same model, in one run.

    .venv/bin/python bench/serving_batch.py [--quick] [--clients 8,32] [--requests 4] [--max-tokens 32]

The model is a randomly initialized Llama (hidden 512, 4 layers, ~15M parameters, the tiny base's
tokenizer) whose end-of-sequence logit is held at 0, so every answer runs to `--max-tokens` and both servers
do the same work. Each server is `tuneloop serve --version base` in its own process: `--max-batch 1` (one
sequence at a time, the server before batching) and the default `--max-batch 32`; the clients are threads
of this process using the `openai` SDK, each sending `--requests` chats in turn with its own prompts.

For each client count: completion tokens per second, requests per second and the p50/p95 latency of a whole
answer, on each server; the ratios batched / one-at-a-time. Time to first streamed token (p50) at 1 and at 8
concurrent streaming clients. Every greedy answer of the batched server must equal the one-at-a-time
server's for the same prompt (checked; exit 1 if not). Last line: the throughput ratios and the p50 ratios.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the parcel order refund password charge twice reset account where when why how my your late "
         "shipping invoice card help please thanks again").split()


def make_model(out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneloop.models.base import load_tokenizer, resolve_base_model
    from tuneloop.settings import get_settings
    from tuneloop.specs import TINY_BASE

    tiny = resolve_base_model(TINY_BASE, get_settings().models_dir, log=lambda m: None)
    tok = load_tokenizer(tiny)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1024,
                                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                                         max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = 0  # answers run to max_tokens: equal work on both servers
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, max_batch: int, home: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TUNELOOP_STATE_DIR": str(home), "TUNELOOP_REGISTRY": str(home / "registry"),
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tuneloop.cli.main", "serve", "--base", str(model), "--version",
                                      "base", "--port", str(self.port), "--max-batch", str(max_batch),
                                      "--max-concurrency", "64", "--max-queue", "64"], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def __enter__(self):
        import httpx

        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit("the server did not become healthy in 180 s")

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def prompts(n: int, seed: int = 0) -> list[list[dict]]:
    import random

    rng = random.Random(seed)
    return [[{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24)))}]
            for _ in range(n)]


def load(url: str, clients: int, per_client: int, max_tokens: int) -> dict:
    """`clients` threads, each asking its `per_client` chats in turn; answers by prompt index."""
    import openai

    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    asks = prompts(clients * per_client, seed=clients)
    lat, answers, tokens = [], {}, 0

    def client(k: int):
        out = []
        for i in range(k * per_client, (k + 1) * per_client):
            t = time.perf_counter()
            r = c.chat.completions.create(model="tuneloop", messages=asks[i], max_tokens=max_tokens, temperature=0)
            out.append((i, time.perf_counter() - t, r.choices[0].message.content, r.usage.completion_tokens))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for rows in pool.map(client, range(clients)):
            for i, dt, text, n in rows:
                lat.append(dt)
                answers[i] = text
                tokens += n
    wall = time.perf_counter() - t0
    lat.sort()
    return {"tok_s": tokens / wall, "req_s": len(lat) / wall, "p50": statistics.median(lat),
            "p95": lat[int(0.95 * (len(lat) - 1))], "answers": answers, "tokens": tokens}


def ttft(url: str, clients: int, max_tokens: int) -> float:
    """p50 seconds from sending a streamed chat to its first piece of text, `clients` streams at once."""
    import openai

    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    asks = prompts(clients * 2, seed=1000 + clients)

    def one(i: int) -> float:
        t = time.perf_counter()
        first = None
        for ch in c.chat.completions.create(model="tuneloop", messages=asks[i], max_tokens=max_tokens,
                                            temperature=0, stream=True):
            if first is None and ch.choices and ch.choices[0].delta.content:
                first = time.perf_counter() - t
        return first if first is not None else float("nan")

    with ThreadPoolExecutor(clients) as pool:
        times = list(pool.map(one, range(clients * 2)))
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="8,32")
    ap.add_argument("--requests", type=int, default=4, help="chats per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="2 chats per client, 16 tokens")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.max_tokens = 2, 16
    counts = [int(x) for x in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp) / "model")
        results = {}
        for name, max_batch in (("one at a time", 1), ("batched", 32)):
            with Server(model, max_batch, Path(tmp) / f"home-{max_batch}") as srv:
                load(srv.url, 2, 1, 4)  # warm up
                results[name] = {n: load(srv.url, n, args.requests, args.max_tokens) for n in counts}
                results[name]["ttft"] = {n: ttft(srv.url, n, args.max_tokens) for n in (1, 8)}
    one, bat = results["one at a time"], results["batched"]
    print(f"model: random Llama hidden 512, 4 layers; {args.requests} chats per client, {args.max_tokens} tokens "
          "each (greedy)")
    print(f"{'clients':>8} {'server':>14} {'tokens/s':>9} {'req/s':>7} {'p50 s':>7} {'p95 s':>7}")
    same = True
    for n in counts:
        for name in ("one at a time", "batched"):
            r = results[name][n]
            print(f"{n:>8} {name:>14} {r['tok_s']:>9.1f} {r['req_s']:>7.2f} {r['p50']:>7.3f} {r['p95']:>7.3f}")
        diff = [i for i in one[n]["answers"] if one[n]["answers"][i] != bat[n]["answers"][i]]
        same &= not diff and one[n]["tokens"] == bat[n]["tokens"]
        print(f"{'':>8} {'batched/one':>14} {bat[n]['tok_s'] / one[n]['tok_s']:>9.2f} "
              f"{bat[n]['req_s'] / one[n]['req_s']:>7.2f} {bat[n]['p50'] / one[n]['p50']:>7.2f} "
              f"{bat[n]['p95'] / one[n]['p95']:>7.2f}   answers identical: {not diff} ({len(diff)} differ)")
    for k in (1, 8):
        print(f"time to first streamed token, {k} client(s): one at a time {one['ttft'][k] * 1000:.0f} ms, "
              f"batched {bat['ttft'][k] * 1000:.0f} ms")
    print("throughput x " + ", ".join(f"{bat[n]['tok_s'] / one[n]['tok_s']:.2f} at {n}" for n in counts)
          + "; p50 latency x " + ", ".join(f"{bat[n]['p50'] / one[n]['p50']:.2f} at {n}" for n in counts)
          + f"; answers identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
