"""Merge a LoRA adapter into its base model and write the result as safetensors (optionally int8).

The merge runs in float32 on CPU, so it needs no GPU and is exact to float32 rounding; the merged
weights are then saved in the base model's own dtype (a bfloat16 base gives a bfloat16 export).
Memory: about 4 bytes per base parameter, plus the file being written.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.models.base import load_tokenizer
from tuneloop.export.int8 import save_int8


def base_dtype(base: str):
    """The dtype the base model is stored in (float32 when its config does not say)."""
    import torch
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return dtype or torch.float32


def load_merged(base: str, adapter_dir: str | Path):
    """Base (float32, CPU) with the adapter folded into its weights: a plain transformers model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneloop.runtime.safety import refuse_pickles

    refuse_pickles(base, f"base model {base}")
    refuse_pickles(adapter_dir, f"adapter {adapter_dir}")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()


def write_merged(base: str, adapter_dir: Path, dst: Path, *, int8: bool, log=print) -> dict:
    """Merged model + tokenizer into dst; returns what was done, for the export manifest."""
    dst.mkdir(parents=True, exist_ok=True)
    dtype = base_dtype(base)
    log(f"merging {adapter_dir} into {base}")
    merged = load_merged(base, adapter_dir)
    load_tokenizer(base).save_pretrained(dst)
    done = {"merged": True, "dtype": str(dtype).removeprefix("torch."), "quantization": None}
    if int8:
        log("quantizing the merged weights to int8 (weight-only, per output channel)")
        return done | {"quantization": save_int8(merged, dst, dtype)}
    merged.to(dtype).save_pretrained(dst, safe_serialization=True)
    return done
