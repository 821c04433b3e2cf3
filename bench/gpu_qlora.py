"""GPU path: QLoRA (4-bit NF4 base) on a ~1B-parameter Llama, tokens/s and peak memory, packed vs padded.

    .venv/bin/python bench/gpu_qlora.py [--model PATH_OR_HUB_ID] [--rows 512] [--batch 16] [--steps 30]

Needs a CUDA GPU and bitsandbytes (both in the service's dependencies on a GPU install; see
docs/performance.md). Without `--model` the base is a randomly initialized Llama with TinyLlama-1.1B's
shape (hidden 2048, 22 layers, 32 heads, 4 key-value heads) and the tiny base's tokenizer, built on
the GPU and saved in bf16; throughput does not depend on what the weights know. With `--model` any
causal LM folder or hub id is used as it is.

The same rows (bench/_train_common.py: a skewed length distribution, ~75% short prompts and a long
tail) train `--steps` optimizer steps of tuneloop's own loop (`train_lora`) with `quantization: 4bit`,
LoRA r 16 on q/k/v/o, twice: packed (the default layout: rows of examples laid end to end, a
block-diagonal causal mask built by transformers from restarting position ids, or flash attention's
varlen path when it is installed) and padded with length grouping off (random batches padded to
their longest row). Reported per layout: real tokens/s (padding not counted), seconds, peak GPU
memory (`torch.cuda.max_memory_allocated`), final loss. Last line: packed over padded tokens/s.

Without a GPU it says so, prints the command above and exits 0 ("skipped"); `--allow-cpu --size 20m`
runs the same code path on the CPU (bitsandbytes' CPU 4-bit layers) as a smoke check of the script.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_common as C  # noqa: E402

ONE_B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4)


def build_1b(out_dir: Path) -> tuple[str, int]:
    """TinyLlama-1.1B's shape, random weights, the tiny base's tokenizer; built on the GPU, saved in bf16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneloop.models.base import load_tokenizer

    tok = load_tokenizer(C.tiny_base_path())
    torch.manual_seed(0)
    cfg = LlamaConfig(**ONE_B, vocab_size=len(tok), max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    del model
    torch.cuda.empty_cache()
    return str(out_dir), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a causal LM folder or hub id (default: a random ~1B Llama built here)")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU (a smoke check of this script)")
    ap.add_argument("--size", default=None, choices=sorted(C.SIZES), help="with --allow-cpu: a small random Llama")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device here: this benchmark measures the GPU path. On a GPU machine, after the GPU "
              "install in docs/performance.md, run:\n    .venv/bin/python bench/gpu_qlora.py")
        print("skipped: no GPU")
        return

    from tuneloop.specs import TrainingSpec
    from tuneloop.training import train_lora

    work = Path(tempfile.mkdtemp(prefix="tl-gpu-qlora-"))
    if args.model:
        base, n_params = args.model, None
    elif torch.cuda.is_available() and not args.size:
        base, n_params = build_1b(work / "base")
    else:
        base, n_params = C.build_base(args.size or "20m", work / "base")
    rows = C.skewed_rows(args.rows)
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else C.machine_line()
    print(f"device: {dev}; torch {torch.__version__}")
    print(f"model: {base} ({f'{n_params:,} parameters' if n_params else 'as given'}), 4-bit NF4 base, LoRA r 16; "
          f"{len(rows)} rows, batch {args.batch}, {args.steps} steps")

    results = {}
    for layout, packing in (("padded", False), ("packed", True)):
        spec = TrainingSpec(quantization="4bit", packing=packing, group_by_length=False, batch_size=args.batch,
                            gradient_accumulation=1, epochs=100, max_steps=args.steps, rank=16, alpha=32,
                            learning_rate=2e-4, warmup_steps=0, save_every=10**6, early_stopping_patience=None,
                            max_seq_len=1024, seed=1)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        res = train_lora(spec, base, rows, [], work / layout, resume=False, log=lambda m: None)
        wall = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        results[layout] = res
        print(f"  {layout:7} {res.steps} steps, {res.train_tokens:,} real tokens in {res.seconds:.1f} s "
              f"({wall:.1f} s with model load): {res.tokens_per_s:,.0f} tokens/s; peak GPU memory {peak:.2f} GiB; "
              f"final loss {res.final_loss:.4f}", flush=True)
    print(f"ratio packed/padded tokens/s: {results['packed'].tokens_per_s / results['padded'].tokens_per_s:.2f}")


if __name__ == "__main__":
    main()
