"""Multiple-choice scoring: tuneloop vs lm-evaluation-harness on the same model and files.

    .venv/bin/python bench/mc_vs_lm_eval.py [--batch-size 8] [--repeats 3] [--threads 1] [--quick]

Needs the bench extra (`pip install -e '.[bench]'`: lm-eval). On the locally
built tiny Llama (reused from .tuneloop/models when present, built in a
temporary folder otherwise) it scores the same multiple-choice JSONL files
with both: the five MC samples shipped in tuneloop.evals.benchmarks_data and
the demo's intent routing written as an MC file (120 held-out messages, six
intents each). lm-eval reads each file through a task YAML of its JSON-file
type (`dataset_path: json`, `data_files`), runs the model object in-process
(`HFLM(pretrained=<model>)`) and computes acc and acc_norm; tuneloop runs
`evals.suite.run_benchmark` on the file.

Both get their best settings: the same batch size, one torch thread (on the
shared 2-core machines two threads contend and runs become erratic; `--threads
0` keeps torch's default), lm-eval with its logits cache on, no bootstrap
(`bootstrap_iters=0`) and a task manager that indexes only these tasks, not
its thousands of built-in ones. The tokenizer given to lm-eval adds BOS (as
Llama's does), which is the context prefix tuneloop always uses. One warm-up
run of each is left out (datasets' Arrow cache, imports); each tool then runs
`--repeats` times, interleaved, and the fastest run counts.

It checks that per-item acc and acc_norm agree on every item and prints the
number of disagreements (exit 1 if any), the largest log-likelihood
difference, the times end to end (file -> per-item scores) and for the
model part alone (the same log-likelihood requests), and last the ratio
lm-eval time / tuneloop time, end to end.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a script of its own: nothing here may download
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval and datasets draw progress bars

from tuneloop.models.base import load_model, load_tokenizer, resolve_base_model  # noqa: E402
from tuneloop.evals import benchmarks as B, loglikelihood as LL, suite as S  # noqa: E402
from tuneloop.specs import TINY_BASE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def base_path() -> str:
    cached = ROOT / ".tuneloop" / "models"
    models = cached if (cached / "tiny-llama" / "config.json").exists() else Path(tempfile.mkdtemp(prefix="tl-bench-"))
    return resolve_base_model(TINY_BASE, models, log=lambda m: print(m, flush=True))


def intent_file(folder: Path) -> Path:
    """The demo's held-out intent routing as a multiple-choice benchmark file."""
    import json

    from tuneloop.demo.data import INTENTS, read_jsonl, write_demo_data

    rows = read_jsonl(write_demo_data(folder / "demo")["heldout"])
    out = folder / "intents.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for k, r in enumerate(rows):
            user = next(m["content"] for m in r["messages"] if m["role"] == "user")
            intent = next(m["content"] for m in r["messages"] if m["role"] == "assistant")
            f.write(json.dumps({"id": f"intent-{k:03d}", "context": f"Message: {user}\nIntent:",
                                "choices": list(INTENTS), "answer": INTENTS.index(intent)}) + "\n")
    return out


def mc_files(folder: Path, quick: bool) -> dict[str, Path]:
    files = {n: B.samples_dir() / f"{n}.jsonl" for n in B.SAMPLE_NAMES
             if B.load_benchmark(n).kind == B.MULTIPLE_CHOICE}
    if not quick:
        files["intents"] = intent_file(folder)
    return files


def run_lm_eval(lm, task_manager, tasks: list[str], batch_size: int) -> dict[str, list[dict]]:
    from lm_eval import simple_evaluate

    with contextlib.redirect_stderr(io.StringIO()):  # its progress bars ignore TQDM_DISABLE
        res = simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, batch_size=batch_size,
                              bootstrap_iters=0, log_samples=True, verbosity="ERROR")
    return {t: sorted(res["samples"][t], key=lambda s: s["doc_id"]) for t in tasks}


def run_tuneloop(model, tok, files: dict[str, Path], batch_size: int) -> dict[str, S.BenchmarkResult]:
    return {name: S.run_benchmark(model, tok, str(path), batch_size) for name, path in files.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="the five shipped MC samples only, 2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 2)

    import torch

    for name in ("lm-eval", "lm_eval", "datasets", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="tl-bench-lmeval-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    os.environ["HF_DATASETS_CACHE"] = str(tmp / "datasets-cache")  # read when `datasets` is imported: before lm_eval
    try:
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        sys.exit("lm-eval is not installed: .venv/bin/pip install -e '.[bench]' 'torch==2.13.0'")
    import lm_eval

    if args.threads:
        torch.set_num_threads(args.threads)
    path = base_path()
    tok, model = load_tokenizer(path), load_model(path).eval()
    tok_bos = load_tokenizer(path)
    tok_bos.add_bos_token = True  # lm-eval encodes contexts with the tokenizer's special tokens: BOS first

    files = mc_files(tmp, args.quick)
    tasks_dir = tmp / "tasks"
    tasks_dir.mkdir()
    for name, p in files.items():
        (tasks_dir / f"tl_{name}.yaml").write_text(TASK_YAML.format(task=f"tl_{name}", path=p))
    tasks = [f"tl_{n}" for n in files]
    tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tok_bos, batch_size=args.batch_size, device="cpu", add_bos_token=True)

    n_items = {n: len(B.load_benchmark(p).items) for n, p in files.items()}
    n_req = sum(len(it["choices"]) for p in files.values() for it in B.load_benchmark(p).items)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; lm-eval {lm_eval.__version__}")
    print(f"workload: {sum(n_items.values())} multiple choice items in {len(files)} files "
          f"({', '.join(f'{n} {k}' for n, k in n_items.items())}), {n_req} log-likelihood requests, "
          f"batch size {args.batch_size}")

    run_lm_eval(lm, tm, tasks, args.batch_size)  # warm-up: datasets' Arrow cache, lazy imports
    run_tuneloop(model, tok, files, args.batch_size)
    best = {"lm-eval": float("inf"), "tuneloop": float("inf")}
    for r in range(args.repeats):
        t0 = time.perf_counter()
        ours = run_tuneloop(model, tok, files, args.batch_size)
        t1 = time.perf_counter()
        theirs = run_lm_eval(lm, tm, tasks, args.batch_size)
        t2 = time.perf_counter()
        best["tuneloop"] = min(best["tuneloop"], t1 - t0)
        best["lm-eval"] = min(best["lm-eval"], t2 - t1)
        print(f"  repeat {r + 1}: tuneloop {t1 - t0:.2f}s, lm-eval {t2 - t1:.2f}s", flush=True)

    # per item: acc and acc_norm; per request: log-likelihood and is_greedy
    from lm_eval.api.instance import Instance

    dis = {"acc": 0, "acc_norm": 0}
    lls_ours, ll_diff, greedy_dis, examples = [], 0.0, 0, []
    requests = []
    for name, path in files.items():
        items = B.load_benchmark(path).items
        samples = theirs[f"tl_{name}"]
        assert len(samples) == len(items), (name, len(samples), len(items))
        reqs = [(it["context"], LL.continuation_for(it["context"], c)) for it in items for c in it["choices"]]
        mine = LL.loglikelihoods(model, tok, reqs, args.batch_size)
        flat = [resp for s in samples for resp in s["filtered_resps"]]
        for (a, ga), (b, gb), req in zip(mine, flat, reqs):
            ll_diff = max(ll_diff, abs(a - float(b)))
            greedy_dis += bool(ga) != bool(gb)
        requests += reqs
        lls_ours += mine
        for it, s in zip(items, samples):
            for m in dis:
                if int(ours[name].per_item[m][it["id"]]) != int(s[m]):
                    dis[m] += 1
                    examples.append(f"{name} {it['id']} {m}: tuneloop {ours[name].per_item[m][it['id']]:.0f}, "
                                    f"lm-eval {s[m]:.0f}")

    # the model part alone: the same (context, continuation) requests through each tool's log-likelihood call
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=req, idx=0) for req in requests]
    model_best = {"lm-eval": float("inf"), "tuneloop": float("inf")}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        LL.loglikelihoods(model, tok, requests, args.batch_size)
        t1 = time.perf_counter()
        lm.loglikelihood(insts, disable_tqdm=True)
        t2 = time.perf_counter()
        model_best["tuneloop"] = min(model_best["tuneloop"], t1 - t0)
        model_best["lm-eval"] = min(model_best["lm-eval"], t2 - t1)

    n = sum(n_items.values())
    print(f"per-item disagreements over {n} items: acc {dis['acc']}, acc_norm {dis['acc_norm']}; "
          f"is_greedy disagreements over {len(requests)} requests: {greedy_dis}; "
          f"max |log-likelihood difference| {ll_diff:.2e}")
    for e in examples[:10]:
        print("  ", e)
    for name in files:
        s = theirs[f"tl_{name}"]
        print(f"  {name:10} acc {ours[name].metrics['acc']:.3f} / {sum(x['acc'] for x in s) / len(s):.3f}  "
              f"acc_norm {ours[name].metrics['acc_norm']:.3f} / {sum(x['acc_norm'] for x in s) / len(s):.3f}"
              "  (tuneloop / lm-eval; tiny model, not meaningful)")
    print(f"{'part':28} {'lm-eval s':>10} {'tuneloop s':>11} {'ratio':>7}")
    print(f"{'end to end (file -> scores)':28} {best['lm-eval']:10.3f} {best['tuneloop']:11.3f} "
          f"{best['lm-eval'] / best['tuneloop']:6.2f}x")
    print(f"{'log-likelihoods only':28} {model_best['lm-eval']:10.3f} {model_best['tuneloop']:11.3f} "
          f"{model_best['lm-eval'] / model_best['tuneloop']:6.2f}x")
    same = dis["acc"] == 0 and dis["acc_norm"] == 0
    if not same:
        print("PER-ITEM SCORES DIFFER between tuneloop and lm-eval", file=sys.stderr)
    print(f"ratio lm-eval/tuneloop: {best['lm-eval'] / best['tuneloop']:.2f}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
