"""Base models: any Hugging Face causal LM by id or path, or a tiny Llama built here.

No model hub is needed for the default: `tuneloop/tiny-llama` is a 2-layer
Llama with a BPE tokenizer trained on text shipped in the package, built once
and cached under the models folder.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from tuneloop.models.chat import DEFAULT_TEMPLATE
from tuneloop.runtime.fsutil import atomic_write_text, publish_dir, staging_dir
from tuneloop.specs import TINY_BASE

SPECIAL = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
TINY_CONFIG = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=512, vocab_size=2048)
PRETRAIN_EPOCHS = 3


def corpus_lines() -> list[str]:
    text = resources.files("tuneloop").joinpath("assets/corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def pretrain(model, tok, lines: list[str], seed: int, epochs: int = PRETRAIN_EPOCHS, log=print) -> dict:
    """A short language-model pass over the shipped corpus.

    A randomly initialized head is frozen under LoRA and its small weights cap
    how confident the model can become; a brief pretraining gives the adapter
    a base that already models the language, as a real base model would.
    """
    import time

    import torch

    g = torch.Generator().manual_seed(seed)
    enc = [[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"][:62], tok.eos_token_id] for t in lines]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    t0, tokens, loss = time.perf_counter(), 0, torch.tensor(0.0)
    for epoch in range(epochs):
        order = torch.randperm(len(enc), generator=g).tolist()
        for i in range(0, len(order), 32):
            batch = [enc[j] for j in order[i: i + 32]]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), tok.pad_token_id)
            mask = torch.zeros_like(ids)
            for k, b in enumerate(batch):
                ids[k, : len(b)], mask[k, : len(b)] = torch.tensor(b), 1
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(mask.sum())
        log(f"pretraining the tiny base: epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
    model.eval()
    return {"pretrain_epochs": epochs, "pretrain_tokens": tokens, "pretrain_loss": round(loss.item(), 4),
            "pretrain_seconds": round(time.perf_counter() - t0, 1)}


def build_tiny_base(out_dir: Path, seed: int = 0, log=print) -> Path:
    """Train the tokenizer and write a randomly initialized tiny Llama to out_dir (atomically)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tmp = staging_dir(out_dir.parent, out_dir.name)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_CONFIG["vocab_size"], special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus_lines(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>")
    tok.chat_template = DEFAULT_TEMPLATE
    tok.save_pretrained(tmp)

    torch.manual_seed(seed)
    cfg = LlamaConfig(**(TINY_CONFIG | {"vocab_size": len(tok)}), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    stats = pretrain(model, tok, corpus_lines(), seed=seed, log=log)
    model.save_pretrained(tmp, safe_serialization=True)
    atomic_write_text(tmp / "tuneloop.json", json.dumps({"built_by": "tuneloop", "seed": seed, **TINY_CONFIG, **stats}))
    publish_dir(tmp, out_dir)
    return out_dir


def resolve_base_model(name: str, models_dir: Path, log=print) -> str:
    """Local path or hub id for `from_pretrained`; builds the tiny base on first use."""
    if name == TINY_BASE:
        return str(build_tiny_base(Path(models_dir) / "tiny-llama", log=log))
    return name


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def trust_remote_code() -> bool:
    """Whether `from_pretrained` may run Python from a model repository: only when the operator sets
    TUNELOOP_TRUST_REMOTE_CODE=1. Passed explicitly so no library default decides it."""
    from tuneloop.settings import get_settings

    return get_settings().trust_remote_code


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = DEFAULT_TEMPLATE
    return tok


def load_model(path: str, quantization: str = "none"):
    """fp32 on CPU (no fast bf16 there), bf16 on GPUs that have it; optional 4-bit NF4 base."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dev = device()
    dtype = torch.bfloat16 if dev == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    from tuneloop.runtime.safety import refuse_pickles

    refuse_pickles(path, f"base model {path}")  # a local folder: pickle weights never reach torch.load
    kwargs: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code(), "use_safetensors": True}
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": dev}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quantization != "4bit":
        model.to(dev)
    return model
