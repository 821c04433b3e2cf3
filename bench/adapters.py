"""LoRA adapters on one shared base (serving.adapters) vs a merged model per fine-tune: load cost and memory.

    .venv/bin/python bench/adapters.py [--quick] [--counts 1,4,16,50] [--merged-max 16] [--repeats 5]
                                       [--max-tokens 32]

Two bases: the tiny base (`tuneloop/tiny-llama`, hidden 128, 2 layers) and a
randomly initialized Llama of hidden 512, 4 layers (~15M parameters) so the
figures mean something. On each, 16 LoRA adapters at the production defaults
(rank 16 on q, k, v, o) with random weights.

Each measurement runs in a fresh process, so RSS deltas are not blurred by
what an earlier one freed:

* pooled: an `AdapterPool` loads the base, then 1, 4, 16 adapters (each by a
  one-token request). RSS after each step, minus RSS after imports; the
  pool's measured adapter bytes beside it. Then, per repeat, one adapter is
  unloaded and asked again: time to first token (a 1-token answer) and the
  full answer (`--max-tokens`, greedy) when its adapter is not loaded (cold:
  the on-demand load) and again when it is (warm).
* merged: `Engine.load` (the base with the adapter merged in, one model per
  fine-tune) for the counts up to `--merged-max` (16: 50 merged copies of the
  bigger base would take 3 GiB to say what the 16 already say); RSS the same
  way; cold is `Engine.load` plus the answer, warm the answer on a loaded
  model.
* resident: with the most adapters loaded (50), the pool's RSS growth since
  imports against one base as it runs alone (its RSS growth after a first
  answer, 0 adapters) plus the adapters' measured tensor bytes; and against
  the base's parameter bytes plus the adapters (the difference is torch's
  working memory: kernels' scratch, threads, caches).

Greedy answers of the pool and of the merged model for the same adapter must
be equal (checked). Last line: memory per extra fine-tuned model, merged over
pooled, on the bigger base.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
MSG = [{"role": "user", "content": "I was charged twice for order 4417, please refund one"}]
BIG = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
           num_key_value_heads=8, max_position_embeddings=512)


def rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def make_bases(tmp: Path) -> dict[str, str]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneloop.models.base import load_tokenizer, resolve_base_model
    from tuneloop.specs import TINY_BASE

    models = Path(os.environ.get("TUNELOOP_MODELS_DIR", ROOT / ".tuneloop" / "models"))
    tiny = resolve_base_model(TINY_BASE, models, log=lambda m: None)
    tok = load_tokenizer(tiny)
    torch.manual_seed(0)
    cfg = LlamaConfig(**BIG, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    big = tmp / "llama-512x4"
    LlamaForCausalLM(cfg).save_pretrained(big)
    tok.save_pretrained(big)
    return {"tiny (128x2)": tiny, "llama 512x4": str(big)}


def make_adapters(base: str, out: Path, n: int) -> list[str]:
    """n LoRAs at the production rank and targets, random A and B (B is zero at init: no effect)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneloop.models.base import load_model
    from tuneloop.specs import TrainingSpec

    spec = TrainingSpec()
    model = get_peft_model(load_model(base), LoraConfig(r=spec.rank, lora_alpha=spec.alpha,
                                                        target_modules=list(spec.target_modules)))
    folders = []
    for k in range(n):
        torch.manual_seed(k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.05)
        model.save_pretrained(out / f"a{k}")
        folders.append(str(out / f"a{k}"))
    return folders


def imports() -> None:
    """Everything both modes import, before their RSS baseline: the delta is then models, not modules."""
    import importlib

    for name in ("peft", "transformers.models.llama.modeling_llama", "tuneloop.serving.adapters"):
        importlib.import_module(name)


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def child_pooled(base: str, adapters: list[str], counts: list[int], repeats: int, max_tokens: int) -> dict:
    from tuneloop.models.base import load_model, load_tokenizer
    from tuneloop.serving.adapters import AdapterPool

    imports()
    rss0 = rss()
    pool = AdapterPool(load_base=lambda b: (load_model(base), load_tokenizer(base)))
    pool.engine("b").chat(MSG, max_tokens=1)
    mem = {"0": rss() - rss0}
    base_bytes = sum(p.nbytes for p in pool._bases["b"].model.parameters())
    names = [(f"ft:{k}", Path(a)) for k, a in enumerate(adapters)]
    loaded, adapter_bytes = 0, {}
    for n in counts:
        for k in range(loaded, n):
            pool.engine("b", names[k]).chat(MSG, max_tokens=1)
        loaded = n
        mem[str(n)] = rss() - rss0
        adapter_bytes[str(n)] = pool.stats()["bytes_used"]
    t = {"cold_ttft": [], "warm_ttft": [], "cold_full": [], "warm_full": []}
    for r in range(repeats):
        name = names[r % loaded]
        for kind, tokens in (("ttft", 1), ("full", max_tokens)):
            pool.unload(name[0])
            t[f"cold_{kind}"].append(timed(lambda: pool.engine("b", name).chat(MSG, max_tokens=tokens))[0])
            t[f"warm_{kind}"].append(timed(lambda: pool.engine("b", name).chat(MSG, max_tokens=tokens))[0])
    answer = pool.engine("b", names[0]).chat(MSG, max_tokens=max_tokens)
    for name, _ in names[:loaded]:
        pool.unload(name)
    mem["after_unloading_all"] = rss() - rss0
    for name in names[:loaded]:  # churn: freed adapter memory is reused, not added to
        pool.engine("b", name).chat(MSG, max_tokens=1)
    mem["after_reloading_all"] = rss() - rss0
    return {"rss": mem, "adapter_bytes": adapter_bytes, "base_bytes": base_bytes, "times": t, "answer": answer.text,
            "tokens": answer.completion_tokens, "stats": {k: v for k, v in pool.stats().items() if k != "adapters"}}


def child_merged(base: str, adapters: list[str], counts: list[int], repeats: int, max_tokens: int) -> dict:
    from tuneloop.serving.engine import Engine

    imports()
    rss0 = rss()
    engines, mem = [], {}
    for n in counts:
        while len(engines) < n:
            engines.append(Engine.load(f"v{len(engines)}", base, adapters[len(engines)]))
            engines[-1].chat(MSG, max_tokens=1)
        mem[str(n)] = rss() - rss0
    t = {"cold_ttft": [], "warm_ttft": [], "cold_full": [], "warm_full": []}
    for r in range(repeats):
        a = adapters[r % len(engines)]
        for kind, tokens in (("ttft", 1), ("full", max_tokens)):
            t0 = time.perf_counter()
            eng = Engine.load("cold", base, a)
            eng.chat(MSG, max_tokens=tokens)
            t1 = time.perf_counter()
            eng.chat(MSG, max_tokens=tokens)
            t[f"cold_{kind}"].append(t1 - t0)
            t[f"warm_{kind}"].append(time.perf_counter() - t1)
    answer = engines[0].chat(MSG, max_tokens=max_tokens)
    return {"rss": mem, "times": t, "answer": answer.text, "tokens": answer.completion_tokens}


def run_child(mode: str, base: str, adapters: list[str], args) -> dict:
    counts = args.counts if mode == "pooled" else ",".join(c for c in args.counts.split(",")
                                                            if int(c) <= args.merged_max)
    cmd = [sys.executable, __file__, "--child", mode, "--base", base, "--adapters", ",".join(adapters),
           "--counts", counts, "--repeats", str(args.repeats), "--max-tokens", str(args.max_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"{mode} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:8.2f}"


def ms(xs: list[float]) -> str:
    return f"{1000 * statistics.median(xs):8.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    ap.add_argument("--counts", default="1,4,16,50", help="adapters (fine-tuned models) loaded at once")
    ap.add_argument("--merged-max", type=int, default=16, help="merged models loaded at most (each a base copy)")
    ap.add_argument("--repeats", type=int, default=7, help="cold/warm timings per mode (median shown)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--child", choices=["pooled", "merged"], help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--adapters", help=argparse.SUPPRESS)
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.child:
        fn = child_pooled if args.child == "pooled" else child_merged
        print(json.dumps(fn(args.base, args.adapters.split(","), counts, args.repeats, args.max_tokens)))
        return 0
    if args.quick:
        args.repeats = 3

    import platform

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, fp32 CPU; adapters: rank 16 on q, k, v, o (TrainingSpec defaults); "
          f"{args.repeats} cold/warm repeats, median; full answer = {args.max_tokens} tokens max, greedy")
    ratios, resident = {}, {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for label, base in make_bases(tmp).items():
            adapters = make_adapters(base, tmp / label.split()[0], max(counts))
            pooled = run_child("pooled", base, adapters, args)
            merged = run_child("merged", base, adapters, args)
            assert pooled["answer"] == merged["answer"], (label, pooled["answer"], merged["answer"])
            one = pooled["adapter_bytes"][str(counts[0])] / counts[0]
            print(f"\n== {label}: base {mib(pooled['rss']['0']).strip()} MiB RSS; one adapter "
                  f"{one / 2**10:.0f} KiB measured (pool); same greedy answer pooled and merged "
                  f"({pooled['tokens']} tokens)")
            print(f"{'models':>6} {'pooled MiB':>10} {'adapters MiB':>12} {'merged MiB':>10} "
                  f"{'pooled/model':>12} {'merged/model':>12} {'ratio':>6}")
            prev_n, prev_p, prev_m = 0, pooled["rss"]["0"], 0
            for n in counts:
                p, m = pooled["rss"][str(n)], merged["rss"].get(str(n))
                dp = (p - prev_p) / (n - prev_n)
                if m is None:
                    print(f"{n:6} {mib(p):>10} {mib(pooled['adapter_bytes'][str(n)]):>12} {'-':>10} "
                          f"{mib(dp):>12} {'-':>12} {'-':>6}")
                    continue
                dm = (m - prev_m) / (n - prev_n)
                print(f"{n:6} {mib(p):>10} {mib(pooled['adapter_bytes'][str(n)]):>12} {mib(m):>10} "
                      f"{mib(dp):>12} {mib(dm):>12} {dm / dp if dp > 0 else float('inf'):6.0f}")
                prev_n, prev_p, prev_m = n, p, m
            top = counts[-1]
            base_rss, ad = pooled["rss"]["0"], pooled["adapter_bytes"][str(top)]
            resident[label] = pooled["rss"][str(top)] / (base_rss + ad)
            print(f"  {top} adapters resident: RSS growth {mib(pooled['rss'][str(top)]).strip()} MiB = "
                  f"{resident[label]:.2f}x one base as it runs alone ({mib(base_rss).strip()} MiB RSS) + the "
                  f"adapters' tensors ({mib(ad).strip()} MiB); "
                  f"{pooled['rss'][str(top)] / (pooled['base_bytes'] + ad):.2f}x the base's parameters "
                  f"({mib(pooled['base_bytes']).strip()} MiB) + the adapters (the rest is torch's working memory)")
            n_max = max(int(c) for c in merged["rss"])
            per_pooled = (pooled["rss"][str(n_max)] - pooled["rss"]["0"]) / n_max
            per_merged = merged["rss"][str(n_max)] / n_max
            ratios[label] = per_merged / per_pooled
            print(f"  (MiB: RSS growth since imports; per model: growth per extra model over the previous row; "
                  f"pooled after unloading all {top}: {mib(pooled['rss']['after_unloading_all']).strip()} MiB, "
                  f"after loading them again: {mib(pooled['rss']['after_reloading_all']).strip()} MiB)")
            print(f"  per fine-tuned model at {n_max}: pooled {mib(per_pooled).strip()} MiB RSS "
                  f"({mib(pooled['adapter_bytes'][str(n_max)] / n_max).strip()} MiB adapter tensors), merged "
                  f"{mib(per_merged).strip()} MiB: {ratios[label]:.0f}x less memory per model pooled; "
                  f"{n_max} models: pooled {mib(pooled['rss'][str(n_max)]).strip()} MiB vs merged "
                  f"{mib(merged['rss'][str(n_max)]).strip()} MiB")
            print(f"{'ms (median)':24} {'cold TTFT':>9} {'warm TTFT':>9} {'cold full':>9} {'warm full':>9}")
            for mode, res in (("pooled (on-demand load)", pooled), ("merged (Engine.load)", merged)):
                t = res["times"]
                print(f"{mode:24} {ms(t['cold_ttft']):>9} {ms(t['warm_ttft']):>9} {ms(t['cold_full']):>9} "
                      f"{ms(t['warm_full']):>9}")
            pt, mt = pooled["times"], merged["times"]
            med = {f"{mode}_{k}": statistics.median(v) for mode, res in (("p", pt), ("m", mt)) for k, v in res.items()}
            print(f"  on-demand adapter load adds {1000 * (med['p_cold_ttft'] - med['p_warm_ttft']):.1f} ms to the "
                  f"first token; a merged cold start takes {med['m_cold_ttft'] / med['p_cold_ttft']:.1f}x the pooled "
                  f"one; warm full answer pooled/merged {med['p_warm_full'] / med['m_warm_full']:.2f}x (unmerged "
                  f"LoRA matmuls)")
    print("\nadapters: memory per extra fine-tuned model, merged over pooled: "
          + ", ".join(f"{k} {v:.0f}x" for k, v in ratios.items()) + f"; {counts[-1]} resident over one base "
          "(alone, RSS) + the adapters: " + ", ".join(f"{k} {v:.2f}x" for k, v in resident.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
