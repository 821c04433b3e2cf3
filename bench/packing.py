"""Packing against padding on a skewed length distribution: effective tokens/s and loss per token.

    .venv/bin/python bench/packing.py [--size 20m] [--rows 128] [--batch 8] [--repeats 1] [--threads 1]

One epoch of tuneloop's training loop over the same rows (bench/_train_common.py: ~75% short
prompts, a long tail) on a randomly initialized ~21M-parameter Llama, in three layouts:

* padded: random batches, each padded to its longest row (the old loop);
* length-grouped: still padded, but rows of similar length batched together (`group_by_length`);
* packed: random batches, each laid end to end in one row with per-example attention (the default).

Everything else is the same loop (LM head on target positions only, no KV cache), LoRA dropout is 0
so the layouts compute the same function, and packed and padded see the same batches in the same
order: their per-step losses must agree (relative 1e-4), and a forward pass over every batch of the
epoch in both layouts gives the same loss per token (relative 1e-5). Length-grouped batches differ,
so its loss is printed, not compared. Effective tokens/s counts real tokens, not padding; the
computed tokens (padding included) are printed beside them, and the same ratios per CPU second of
this process, steadier when other processes share the cores. With `--repeats N` each layout runs N
times, interleaved, and the fastest run counts. Last line: packed over padded effective tokens/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_common as C  # noqa: E402

LAYOUTS = {"padded": dict(packing=False, group_by_length=False),
           "length-grouped": dict(packing=False, group_by_length=True),
           "packed": dict(packing=True)}


def spec_for(layout: str, batch: int):
    from tuneloop.specs import TrainingSpec

    return TrainingSpec(**LAYOUTS[layout], batch_size=batch, gradient_accumulation=1, epochs=1, dropout=0.0,
                        learning_rate=1e-3, warmup_steps=0, save_every=10**6, early_stopping_patience=None, seed=1)


def computed_tokens(enc, batch: int, layout: str) -> int:
    """Tokens the model runs over, padding included, for one epoch in this layout."""
    from tuneloop.training.packing import epoch_batches

    lengths = [len(ids) for ids, _ in enc]
    batches = epoch_batches(lengths, batch, 1, 0, group_by_length=LAYOUTS[layout].get("group_by_length", False))
    if layout == "packed":
        return sum(lengths)
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def forward_loss_per_token(base: str, enc, batch: int) -> dict[str, float]:
    """Loss per target token of every batch of the epoch, padded and packed, on the same (initial) model."""
    import torch

    from tuneloop.models.base import load_tokenizer
    from tuneloop.training.loop import build_lora_model
    from tuneloop.training.objectives import batch_loss
    from tuneloop.training.packing import collate, enable_varlen_attention, epoch_batches

    pad = load_tokenizer(base).pad_token_id
    batches = epoch_batches([len(ids) for ids, _ in enc], batch, 1, 0)
    out = {}
    for layout in ("padded", "packed"):
        torch.manual_seed(0)
        model = build_lora_model(base, spec_for(layout, batch)).eval()
        varlen = layout == "packed" and enable_varlen_attention(model)
        total, count = 0.0, 0
        with torch.no_grad():
            for b in batches:
                tensors = collate([enc[i] for i in b], pad, "cpu", layout == "packed", varlen)
                loss, n = batch_loss(model, tensors, varlen)
                total, count = total + float(loss), count + n
        out[layout] = total / count
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_run_args(ap)
    args = ap.parse_args()

    from tuneloop.models.base import load_tokenizer
    from tuneloop.training import train_lora
    from tuneloop.training.objectives import encode_rows

    C.set_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tl-packing-"))
    base, n_params = C.build_base(args.size, work / "base")
    rows = C.skewed_rows(args.rows)
    enc = encode_rows(load_tokenizer(base), rows, 512)
    lengths = sorted(len(ids) for ids, _ in enc)
    print(C.machine_line())
    print(f"model: Llama {args.size} ({n_params:,} parameters); data: {len(enc)} rows, {sum(lengths):,} tokens, "
          f"length median {lengths[len(lengths) // 2]}, p90 {lengths[int(0.9 * len(lengths))]}, max {lengths[-1]}; "
          f"batch {args.batch}, one epoch, LoRA dropout 0")

    per_token = forward_loss_per_token(base, enc, args.batch)
    fwd_gap = abs(per_token["packed"] - per_token["padded"]) / per_token["padded"]
    print(f"forward loss per token over the epoch's batches: padded {per_token['padded']:.6f}, "
          f"packed {per_token['packed']:.6f} (relative gap {fwd_gap:.1e})")

    best: dict[str, object] = {}
    cpu: dict[str, float] = {}
    for r in range(args.repeats):
        for layout in LAYOUTS:
            start: list[float] = []

            def log(message: str) -> None:  # train_lora logs "training ..." right after it starts its clock
                if message.startswith("training") and not start:
                    start.append(time.process_time())

            res = train_lora(spec_for(layout, args.batch), base, rows, [], work / f"{layout}-{r}", resume=False,
                             log=log)
            cpu_s = time.process_time() - start[0]
            print(f"  repeat {r + 1} {layout}: {res.seconds:.1f} s, {res.tokens_per_s:,.0f} tokens/s; "
                  f"{cpu_s:.1f} CPU s, {res.train_tokens / cpu_s:,.0f} tokens/CPU-s; final loss {res.final_loss:.4f}",
                  flush=True)
            if layout not in best or res.seconds < best[layout].seconds:
                best[layout] = res
            cpu[layout] = min(cpu_s, cpu.get(layout, float("inf")))

    steps_gap = max(abs(a["loss"] - b["loss"]) / b["loss"]
                    for a, b in zip(best["packed"].history, best["padded"].history))
    same = fwd_gap <= 1e-5 and steps_gap <= 1e-4
    print(f"packed vs padded, same batches: largest per-step loss gap {steps_gap:.1e} (same loss: {same})")
    print(f"{'layout':15} {'computed tok':>12} {'seconds':>8} {'eff. tok/s':>10} {'vs padded':>9} {'CPU s':>6} "
          f"{'vs padded':>9} {'final loss':>10}")
    for layout, res in best.items():
        print(f"{layout:15} {computed_tokens(enc, args.batch, layout):12,} {res.seconds:8.1f} "
              f"{res.tokens_per_s:10,.0f} {res.tokens_per_s / best['padded'].tokens_per_s:8.2f}x {cpu[layout]:6.1f} "
              f"{cpu['padded'] / cpu[layout]:8.2f}x {res.final_loss:10.4f}")
    print(f"packed over padded per CPU second (steadier when other processes share the cores): "
          f"{cpu['padded'] / cpu['packed']:.2f}")
    print(f"ratio packed/padded effective tokens/s: {best['packed'].tokens_per_s / best['padded'].tokens_per_s:.2f}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
