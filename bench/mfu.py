"""Model FLOPs utilization of tuneloop's LoRA training at ~20M and ~100M parameters, against this machine's matmul peak.

    .venv/bin/python bench/mfu.py [--sizes 20m,100m] [--steps 8] [--batch 8] [--threads 1] [--padded] [--profile]

Peak: the best fp32 FLOP/s of a 2048x2048 matmul with the threads the training uses (torch.mm; a
practical peak, not a datasheet one). Then for each size a randomly initialized Llama (built
in-process with the tiny base's tokenizer) trains `--steps` steps of `--batch` rows from the skewed
length distribution of bench/_train_common.py, with the production LoRA (r 16, alpha 32, dropout
0.1, q/k/v/o) and the default layout (packed; `--padded` for random padded batches).

Model FLOPs, per real token: 4 N for the decoder body (LoRA: forward 2 N, backward to the
activations 2 N; frozen weights get no gradient), where N counts the decoder's weights without the
embedding table (a lookup) and without the LM head; the LM head (4 x vocabulary x hidden) counted
only at target positions, the only ones whose logits the loss needs; plus causal attention, 6 x
layers x hidden x length^2 per example (forward 2 x hidden x length^2, backward twice that). The
adapter's own FLOPs (rank 16) are left out. MFU = model FLOPs / seconds / peak, per wall second
and, steadier when other processes share the cores, per CPU second of this process (for the peak
and the training alike). `--profile` prints torch.profiler's table of the operators that take the
most time over two steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_common as C  # noqa: E402


def flops_of_epoch_prefix(enc, batch: int, steps: int, seed: int, cfg) -> tuple[int, float]:
    """(real tokens, model FLOPs) of the first `steps` batches the loop trains on."""
    from tuneloop.models.chat import IGNORE
    from tuneloop.training.packing import epoch_batches

    lengths = [len(ids) for ids, _ in enc]
    chosen = [i for b in epoch_batches(lengths, batch, seed, 0)[:steps] for i in b]
    h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = h * cfg.num_key_value_heads // cfg.num_attention_heads
    body = layers * (2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate_size)
    tokens = sum(lengths[i] for i in chosen)
    targets = sum(sum(1 for y in enc[i][1][1:] if y != IGNORE) for i in chosen)
    attention = sum(6 * layers * h * lengths[i] ** 2 for i in chosen)
    return tokens, 4 * body * tokens + 4 * vocab * h * targets + attention


def profile(spec, base: str, rows, work: Path) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from tuneloop.training import train_lora

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        train_lora(spec.model_copy(update={"max_steps": 2}), base, rows, [], work, resume=False, log=lambda m: None)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20m,100m")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--padded", action="store_true", help="random padded batches instead of packing")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    from transformers import AutoConfig

    from tuneloop.models.base import load_tokenizer
    from tuneloop.specs import TrainingSpec
    from tuneloop.training import train_lora
    from tuneloop.training.objectives import encode_rows

    C.set_threads(args.threads)
    peak, cpu_peak = C.matmul_peak()
    print(C.machine_line())
    print(f"peak: {peak / 1e9:.1f} GFLOP/s per wall second, {cpu_peak / 1e9:.1f} per CPU second "
          f"(fp32 2048x2048 matmul)")
    work = Path(tempfile.mkdtemp(prefix="tl-mfu-"))
    rows = C.skewed_rows(args.batch * args.steps * 2)
    spec = TrainingSpec(batch_size=args.batch, gradient_accumulation=1, max_steps=args.steps, warmup_steps=0,
                        learning_rate=1e-3, save_every=10**6, early_stopping_patience=None, seed=1,
                        packing=not args.padded, group_by_length=False)
    mfu, cpu_mfu = {}, {}
    for size in args.sizes.split(","):
        base, n_params = C.build_base(size, work / size)
        cfg = AutoConfig.from_pretrained(base)
        enc = encode_rows(load_tokenizer(base), rows, spec.max_seq_len)
        train_lora(spec.model_copy(update={"max_steps": 1}), base, rows, [], work / f"warm-{size}", resume=False,
                   log=lambda m: None)  # first-touch allocations and lazy imports, out of the timing
        start: list[float] = []

        def log(message: str) -> None:  # train_lora logs "training ..." right after it starts its clock
            if message.startswith("training") and not start:
                start.append(time.process_time())

        res = train_lora(spec, base, rows, [], work / f"run-{size}", resume=False, log=log)
        cpu_seconds = time.process_time() - start[0]
        tokens, flops = flops_of_epoch_prefix(enc, args.batch, args.steps, spec.seed, cfg)
        assert tokens == res.train_tokens, (tokens, res.train_tokens)
        mfu[size], cpu_mfu[size] = flops / res.seconds / peak, flops / cpu_seconds / cpu_peak
        print(f"{size}: {n_params:,} parameters, {args.steps} steps, {tokens:,} tokens, "
              f"{flops / tokens / 1e6:.1f} MFLOP/token; {res.seconds:.1f} s wall = {res.tokens_per_s:,.0f} tokens/s, "
              f"{flops / res.seconds / 1e9:.1f} GFLOP/s, MFU {mfu[size]:.1%}; {cpu_seconds:.1f} s CPU = "
              f"{tokens / cpu_seconds:,.0f} tokens/CPU-s, {flops / cpu_seconds / 1e9:.1f} GFLOP/CPU-s, "
              f"MFU {cpu_mfu[size]:.1%}", flush=True)
        if args.profile:
            profile(spec, base, rows, work / f"prof-{size}")
    print("MFU per wall second: " + ", ".join(f"{k} {v:.1%}" for k, v in mfu.items())
          + "; per CPU second: " + ", ".join(f"{k} {v:.1%}" for k, v in cpu_mfu.items()))
    print(f"ratio lowest MFU (per CPU second) / 35% target: {min(cpu_mfu.values()) / 0.35:.2f}")


if __name__ == "__main__":
    main()
