"""How much faster is benchmark scoring at batch 8 than at batch 1, with identical outputs?

    .venv/bin/python bench/batched_eval.py [--repeats 3] [--gen-copies 5] [--threads 1]

On the locally built tiny Llama (reused from .tuneloop/models when present,
built in a temporary folder otherwise), with the demo's first adapter on top
when one is in .tuneloop/demo/registry (what the loop scores: base + LoRA
through peft; `--adapter none` for the bare base, `--adapter DIR` for
another), it times three parts: every multiple choice item of the five MC
samples (100 items, 300 log-likelihood requests), the TriviaQA-style sample
repeated to 100 generative items (32 new tokens at most), and the loop's own
task evaluation (greedy answers to the demo's 120 held-out chat prompts, 32
new tokens at most). Each batch size runs `--repeats`
times, interleaved, and the fastest run counts (the machines are shared). It
checks that per-item decisions, generated tokens and predictions are identical
at both batch sizes and log-likelihoods agree to 1e-4, then prints the timings
and, last, the throughput at batch 8 over batch 1 (time at 1 / time at 8).

Torch runs one thread by default here: on the shared 2-core machines two
OpenMP threads contend with other processes and runs become 10-40x slower and
erratic (seconds instead of tenths); `--threads 0` keeps torch's own default.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a script of its own: nothing here may download
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from tuneloop.models.base import load_tokenizer, resolve_base_model  # noqa: E402
from tuneloop.evals import benchmarks as B, loglikelihood as LL, suite as S  # noqa: E402
from tuneloop.evals.run import generate, load_for_eval  # noqa: E402
from tuneloop.specs import TINY_BASE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def base_path() -> str:
    cached = ROOT / ".tuneloop" / "models"
    models = cached if (cached / "tiny-llama" / "config.json").exists() else Path(tempfile.mkdtemp(prefix="tl-bench-"))
    return resolve_base_model(TINY_BASE, models, log=lambda m: print(m, flush=True))


def adapter_path(arg: str) -> str | None:
    if arg == "none":
        return None
    if arg != "auto":
        return arg
    demo = ROOT / ".tuneloop" / "demo" / "registry" / "tenants" / "demo" / "versions" / "v1" / "adapter"
    return str(demo) if (demo / "adapter_config.json").exists() else None


def task_prompts() -> list[list[dict]]:
    from tuneloop.demo.data import read_jsonl, write_demo_data

    with tempfile.TemporaryDirectory() as d:
        rows = read_jsonl(write_demo_data(Path(d))["heldout"])
    return [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]


def workload(gen_copies: int) -> tuple[list[dict], list[dict]]:
    mc, gen = [], []
    for name in B.SAMPLE_NAMES:
        b = B.load_benchmark(name)
        if b.kind == B.MULTIPLE_CHOICE:
            mc += b.items
        else:
            gen += [dict(it, id=f"{it['id']}#{c}") for c in range(gen_copies) for it in b.items]
    return mc, gen


def run(model, tok, mc, gen, chats, bs: int, max_new_tokens: int) -> tuple[dict, dict]:
    reqs = [(it["context"], LL.continuation_for(it["context"], c)) for it in mc for c in it["choices"]]
    t0 = time.perf_counter()
    lls = LL.loglikelihoods(model, tok, reqs, bs)
    t1 = time.perf_counter()
    mcs = LL.score_multiple_choice(model, tok, mc, bs)  # includes its own log-likelihood pass
    t2 = time.perf_counter()
    gens = S.score_generative(model, tok, gen, max_new_tokens, bs)
    t3 = time.perf_counter()
    answers = generate(model, tok, chats, max_new_tokens, bs)
    t4 = time.perf_counter()
    return ({"loglikelihood": t1 - t0, "multiple_choice": t2 - t1, "generative": t3 - t2, "task_eval": t4 - t3},
            {"lls": lls, "mc": mcs, "gen": gens, "task": answers})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gen-copies", type=int, default=5, help="copies of the 20 generative sample items")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--adapter", default="auto", help="adapter folder, 'none', or 'auto' (the demo's v1 if present)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    path = base_path()
    adapter = adapter_path(args.adapter)
    tok, model = load_tokenizer(path), load_for_eval(path, adapter)
    mc, gen = workload(args.gen_copies)
    chats = task_prompts()
    n_req = sum(len(it["choices"]) for it in mc)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"workload: {len(mc)} multiple choice items ({n_req} log-likelihood requests), "
          f"{len(gen)} generative items, {len(chats)} task-evaluation prompts (max {args.max_new_tokens} new tokens); "
          f"adapter: {adapter or 'none'}")
    run(model, tok, mc[:8], gen[:8], chats[:8], 8, 4)  # warm-up, out of the timings

    best: dict[int, dict[str, float]] = {}
    outs: dict[int, dict] = {}
    for r in range(args.repeats):
        for bs in (1, 8):
            times, outs[bs] = run(model, tok, mc, gen, chats, bs, args.max_new_tokens)
            best[bs] = {k: min(v, best.get(bs, {}).get(k, float("inf"))) for k, v in times.items()}
            print(f"  repeat {r + 1} batch {bs}: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()), flush=True)

    a, b = outs[1], outs[8]
    diff = max(abs(x[0] - y[0]) for x, y in zip(a["lls"], b["lls"]))
    greedy_same = all(x[1] == y[1] for x, y in zip(a["lls"], b["lls"]))
    mc_same = all(x == y for x, y in zip(a["mc"], b["mc"]))
    tok_same = all(x["tokens"] == y["tokens"] and x["prediction"] == y["prediction"]
                   for x, y in zip(a["gen"], b["gen"]))
    task_same = a["task"] == b["task"]
    identical = diff <= 1e-4 and greedy_same and mc_same and tok_same and task_same
    print(f"identical outputs: {identical} (max |loglik diff| {diff:.2e}, is_greedy same {greedy_same}, "
          f"acc/acc_norm/pred same {mc_same}, generated tokens same {tok_same}, task answers same {task_same})")
    acc = sum(s["acc"] for s in b["mc"]) / len(mc)
    em = sum(s["exact_match"] for s in b["gen"]) / len(gen)
    print(f"scores (tiny model, not meaningful): MC acc {acc:.3f}, generative EM {em:.3f}")
    print(f"{'part':16} {'batch 1 s':>10} {'batch 8 s':>10} {'speedup':>8}")
    for k in best[1]:
        print(f"{k:16} {best[1][k]:10.2f} {best[8][k]:10.2f} {best[1][k] / best[8][k]:7.2f}x")
    parts = ("multiple_choice", "generative", "task_eval")
    t1, t8 = sum(best[1][k] for k in parts), sum(best[8][k] for k in parts)
    print(f"{'MC + gen + task':16} {t1:10.2f} {t8:10.2f} {t1 / t8:7.2f}x")
    if not identical:
        print("OUTPUTS DIFFER between batch 1 and batch 8", file=sys.stderr)
    print(f"ratio batch8/batch1: {t1 / t8:.2f}")
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    main()
