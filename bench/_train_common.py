"""Shared by the training benches (train_vs_trl.py, packing.py, mfu.py): models and data built here.

No model can be downloaded, so the bases are Llama-architecture models built in-process with the
tiny base's BPE tokenizer and random weights (throughput does not depend on what the weights know;
both trainers in a comparison start from the same weights). The data is chat rows whose prompts
follow a skewed length distribution (most short, a long tail), the case packing is for.
"""

from __future__ import annotations

import os
import platform
import random
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]

# name -> LlamaConfig overrides; the parameter count is printed by the benches (~21M and ~107M)
SIZES = {
    "20m": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8,
                num_key_value_heads=8),
    "100m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                 num_key_value_heads=16),
}


def tiny_base_path() -> str:
    from tuneloop.models.base import resolve_base_model
    from tuneloop.specs import TINY_BASE

    cached = ROOT / ".tuneloop" / "models"
    models = cached if (cached / "tiny-llama" / "config.json").exists() else Path(tempfile.mkdtemp(prefix="tl-bench-"))
    return resolve_base_model(TINY_BASE, models, log=lambda m: print(m, flush=True))


def build_base(size: str, out_dir: Path, seed: int = 0) -> tuple[str, int]:
    """A randomly initialized Llama of the named size with the tiny base's tokenizer; (path, parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneloop.models.base import load_tokenizer

    tok = load_tokenizer(tiny_base_path())
    torch.manual_seed(seed)
    cfg = LlamaConfig(**SIZES[size], vocab_size=len(tok), max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return str(out_dir), sum(p.numel() for p in model.parameters())


def skewed_rows(n: int, seed: int = 0):
    """Chat rows with a skewed prompt length: ~75% one or two corpus lines, the rest 6-30 lines.

    The answer is one corpus line (the loss is on it only), so most rows are 20-60 tokens and a
    quarter run to a few hundred: padding a random batch to its longest row wastes most of it.
    """
    from tuneloop.models.base import corpus_lines
    from tuneloop.data.validate import Row

    lines = corpus_lines()
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randint(1, 2) if rng.random() < 0.75 else rng.randint(6, 30)
        start = rng.randrange(len(lines) - k)
        user = " ".join(lines[start: start + k])
        answer = lines[rng.randrange(len(lines))]
        rows.append(Row(line=i + 1, messages=[{"role": "system", "content": "Answer briefly."},
                                              {"role": "user", "content": user},
                                              {"role": "assistant", "content": answer}]))
    return rows


def add_run_args(ap, batch_help: str | None = None) -> None:
    """The options the one-epoch comparisons share (packing.py, train_vs_trl.py)."""
    ap.add_argument("--size", default="20m", choices=sorted(SIZES))
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help=batch_help)
    ap.add_argument("--repeats", type=int, default=1, help="run each N times, interleaved; the fastest counts")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")


def set_threads(n: int) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def machine_line() -> str:
    import torch

    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")


def matmul_peak(n: int = 2048, seconds: float = 3.0) -> tuple[float, float]:
    """fp32 FLOP/s of a large square matmul with the threads set, per wall second and per CPU second
    of this process (the best of three tries each): the machine's practical peak."""
    import time

    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    wall = cpu = 0.0
    for _ in range(3):
        t, c, k = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - t < seconds / 3:
            a @ b
            k += 1
        wall = max(wall, 2 * n ** 3 * k / (time.perf_counter() - t))
        cpu = max(cpu, 2 * n ** 3 * k / (time.process_time() - c))
    return wall, cpu
