"""The gate against seed noise: candidates that differ from the champion only by their seed are not promoted.

    .venv/bin/python bench/gate_noise.py [--candidates 20] [--steps 120] [--quick]

A champion is trained on the demo task (the demo preset's LoRA and optimizer, `--steps` optimizer steps, seed 0).
Then `--candidates` candidates are trained exactly the same way on the same rows, each with another seed (so
another adapter initialization, batch order and dropout): none is better than the champion except by chance.
Each is gated against the champion by `tuneloop.gate.decide` with the demo preset's gate (exact match, margin
0.02, 95% paired-bootstrap interval, 2000 resamples) on the 120 held-out items. A sound gate promotes at most
about 1 in 20 such candidates (a 95% interval's lower bound clears a margin above zero less than 2.5% of the
time when there is no gain); the point estimate alone (`bootstrap_resamples: 0`) is shown beside it. The last
line is the summary.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--quick", action="store_true", help="5 candidates")
    args = ap.parse_args()
    n = 5 if args.quick else args.candidates

    import torch

    from tuneloop.data import prepare_dataset
    from tuneloop.demo.data import write_demo_data
    from tuneloop.evals.run import evaluate_model
    from tuneloop.gate.decide import decide
    from tuneloop.models.base import resolve_base_model
    from tuneloop.specs import TINY_BASE, DataSpec, EvalSpec, GateSpec, TrainingSpec
    from tuneloop.training import train_lora

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="tl-bench-gate-"))
    files = write_demo_data(work / "data", seed=0)
    base = resolve_base_model(TINY_BASE, work / "models", log=lambda m: None)
    ds = prepare_dataset(files["feedback"], DataSpec(), eval_data=files["heldout"])
    ev = EvalSpec(max_new_tokens=8, batch_size=32)

    def train(seed: int):
        spec = TrainingSpec(target_modules=ALL, learning_rate=3e-3, batch_size=16, gradient_accumulation=1, epochs=1000,
                            max_steps=args.steps, warmup_steps=10, save_every=10_000, early_stopping_patience=None,
                            seed=seed)
        run = train_lora(spec, base, ds.train, ds.validation, work / f"seed-{seed}", log=lambda m: None)
        return evaluate_model(base, str(run.adapter_dir), ds.eval_rows, ev, label=f"seed {seed}")

    champion = train(0)
    print(f"champion (seed 0): exact match {champion.metrics['exact_match']:.3f} on {len(ds.eval_rows)} items",
          flush=True)
    gate, point = GateSpec(), GateSpec(bootstrap_resamples=0)
    promoted, promoted_point, deltas = 0, 0, []
    for seed in range(1, n + 1):
        cand = train(seed)
        d = decide(cand.metrics, cand.per_item, champion.metrics, champion.per_item, gate, "champion")
        p = decide(cand.metrics, cand.per_item, champion.metrics, champion.per_item, point, "champion")
        promoted += d.promote
        promoted_point += p.promote
        deltas.append(d.delta)
        print(f"seed {seed:2d}: exact match {cand.metrics['exact_match']:.3f} ({d.delta:+.3f}), interval "
              f"[{d.interval['low']:+.3f}, {d.interval['high']:+.3f}]: {'PROMOTED' if d.promote else 'rejected'}"
              f"{'; point estimate alone: promoted' if p.promote else ''}", flush=True)
    spread = max(deltas) - min(deltas)
    print(f"gate noise: {promoted} of {n} seed-noise candidates promoted with the paired interval, {promoted_point} "
          f"with the point estimate alone (differences {min(deltas):+.3f} to {max(deltas):+.3f}, spread {spread:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
