"""Preference training on the shipped preference task: SFT, DPO and KTO on the same budget, side by side.

    .venv/bin/python bench/preferences.py [--steps 250] [--quick] [--seed 0]

The task is the demo's support-intent routing as preference data (`tuneloop.demo.data.write_preference_data`):
DPO trains on pairs.jsonl (the right intent preferred over a wrong one drawn at random), KTO on thumbs.jsonl
(unpaired: each prompt served twice, each answer on its own the right intent with a thumbs up two times in
five, or a wrong one with a thumbs down), SFT on the preferred answers of pairs.jsonl. Every method trains the tiny base
(randomly initialized weights, so it starts at chance) with the demo preset's LoRA (all linear layers, lr 3e-3,
batch 16, no early stopping) for the same number of optimizer steps. Each row reports:

- held-out preference accuracy: the share of the 120 held-out pairs (heldout-pairs.jsonl: prompts never
  trained on) whose preferred answer has the higher summed log-probability, before (adapter off) and after;
- held-out exact match of the generated answer (greedy, 8 new tokens) on the same 120 prompts;
- the training's tokens/s and seconds.

DPO and KTO run twice: as the paper's loss alone, and with `sft_weight` 1 (the preferred / desirable answer's
mean token loss added, TRL's rpo_alpha), which the demo preset uses; `sft_then_dpo` runs SFT for half the steps,
then DPO (its reference the SFT adapter) for the other half, with and without `sft_weight`. The last line is the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="100 steps, DPO and KTO with sft_weight only")
    ap.add_argument("--only", help="method:sft_weight pairs to run, comma-separated (e.g. sft_then_dpo:1)")
    args = ap.parse_args()
    steps = 100 if args.quick else args.steps

    import torch
    from peft import PeftModel

    from tuneloop.data import prepare_dataset
    from tuneloop.demo.data import write_preference_data
    from tuneloop.evals.run import evaluate_model
    from tuneloop.models.base import load_model, load_tokenizer, resolve_base_model
    from tuneloop.specs import TINY_BASE, DataSpec, EvalSpec, TrainingSpec
    from tuneloop.training import train_lora
    from tuneloop.training.objectives import preference_accuracy

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="tl-bench-pref-"))
    files = write_preference_data(work / "data", seed=args.seed)
    base = resolve_base_model(TINY_BASE, work / "models", log=lambda m: None)
    tok = load_tokenizer(base)
    held_pairs = prepare_dataset(files["heldout_pairs"], DataSpec(validation_split=0.0, test_split=0.0),
                                 method="dpo").train
    runs = [("sft", "pairs", 0.0), ("dpo", "pairs", 1.0), ("kto", "thumbs", 1.0)]
    if not args.quick:
        runs += [("sft_then_dpo", "pairs", 1.0), ("sft_then_dpo", "pairs", 0.0), ("dpo", "pairs", 0.0),
                 ("kto", "thumbs", 0.0)]
    if args.only:
        names = [f"{m}:{w:g}" for m, _, w in runs]
        runs = [r for r, name in zip(runs, names) if name in args.only.split(",")]
        if not runs:
            sys.exit(f"--only {args.only}: no such run; there are {', '.join(names)}")
    ev = EvalSpec(max_new_tokens=8, batch_size=32)
    rows = []
    base_em = None
    for method, data, sft_weight in runs:
        ds = prepare_dataset(files[data], DataSpec(validation_split=0.1, test_split=0.0, seed=args.seed),
                             eval_data=files["heldout"], method=method)
        stages = 2 if method == "sft_then_dpo" else 1  # the same budget: half the steps each stage
        spec = TrainingSpec(method=method, sft_weight=sft_weight, target_modules=ALL, learning_rate=3e-3,
                            batch_size=16, gradient_accumulation=1, epochs=1000, max_steps=steps // stages,
                            warmup_steps=10,
                            save_every=10_000, early_stopping_patience=None, seed=args.seed)
        t0 = time.perf_counter()
        result = train_lora(spec, base, ds.train, ds.validation, work / f"run-{method}-{sft_weight}", log=lambda m: None)
        wall = time.perf_counter() - t0
        model = PeftModel.from_pretrained(load_model(base), str(result.adapter_dir))
        with model.disable_adapter():
            before = preference_accuracy(model, tok, held_pairs)
        after = preference_accuracy(model, tok, held_pairs)
        if base_em is None:
            base_em = evaluate_model(base, None, ds.eval_rows, ev, label="base").metrics["exact_match"]
        em = evaluate_model(base, str(result.adapter_dir), ds.eval_rows, ev, label=method).metrics["exact_match"]
        row = {"method": method, "data": data, "sft_weight": sft_weight, "train_units": len(ds.train),
               "steps": result.steps, "pref_acc_before": round(before["accuracy"], 3),
               "pref_acc_after": round(after["accuracy"], 3), "exact_match_before": round(base_em, 3),
               "exact_match_after": round(em, 3), "tokens_per_s": round(result.tokens_per_s),
               "train_s": round(result.seconds, 1), "wall_s": round(wall, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| method | data | sft_weight | steps | preference accuracy | exact match | tokens/s | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['data']} ({r['train_units']}) | {r['sft_weight']} | {r['steps']} | "
              f"{r['pref_acc_before']:.3f} -> {r['pref_acc_after']:.3f} | {r['exact_match_before']:.3f} -> "
              f"{r['exact_match_after']:.3f} | {r['tokens_per_s']:,} | {r['train_s']} |")
    best = {r["method"]: r for r in rows if r["sft_weight"] == 1.0}
    if "sft" not in {r["method"] for r in rows}:
        return 0
    print("preferences: " + "; ".join(
        f"{m} pref acc {r['pref_acc_before']:.2f}->{r['pref_acc_after']:.2f}, EM {r['exact_match_before']:.2f}->"
        f"{r['exact_match_after']:.2f}" for m, r in best.items())
          + f"; sft pref acc {rows[0]['pref_acc_after']:.2f}, EM {rows[0]['exact_match_after']:.2f} ({steps} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
