"""How big a job is, without loading weights: parameters from the model config, tokens from the data."""

from __future__ import annotations

import math

from tuneloop.models.chat import encode_chat
from tuneloop.data.validate import Row


def count_parameters(base_path: str) -> int:
    """Parameters of a causal LM, built on the meta device (no weights read, no memory used)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def tokens_per_epoch(tok, rows: list[Row], max_len: int) -> int:
    """Tokens of one pass over rows; rows counted during validation are not encoded again."""
    return sum(min(r.n_tokens if r.n_tokens is not None else len(encode_chat(tok, r.messages)[0]), max_len)
               for r in rows)


def planned_tokens(tokens_per_epoch: int, n_rows: int, batch_size: int, gradient_accumulation: int,
                   epochs: int, max_steps: int | None) -> int:
    """Tokens the run will actually train on: all epochs, or fewer when max_steps ends it sooner."""
    steps_per_epoch = max(1, math.ceil(math.ceil(n_rows / batch_size) / gradient_accumulation))
    total_steps = epochs * steps_per_epoch if max_steps is None else min(epochs * steps_per_epoch, max_steps)
    return round(tokens_per_epoch * total_steps / steps_per_epoch)


def estimate_run(spec, base_path: str, train_rows: list[Row]):
    """(Estimate, tokens per epoch, tokens planned) of a RetrainSpec's training on these rows."""
    from tuneloop.models.base import load_tokenizer
    from tuneloop.cost.guards import estimate

    t = spec.training
    per_epoch = tokens_per_epoch(load_tokenizer(base_path), train_rows, t.max_seq_len)
    planned = planned_tokens(per_epoch, len(train_rows), t.batch_size, t.gradient_accumulation, t.epochs,
                             t.max_steps)
    # in training-token equivalents (a forward alone costs about a third of a training step): dpo trains on both
    # answers of a pair, kto runs a gradient-free forward on a mismatched answer beside each one, and both score
    # their sequences once with the reference before the first step
    per_token, reference = METHOD_COST.get(t.method, (1.0, 0.0))
    planned = round(planned * per_token + per_epoch * reference)
    return estimate(planned, 1, count_parameters(base_path), spec.hardware), per_epoch, planned


METHOD_COST = {"sft": (1.0, 0.0), "dpo": (2.0, 2 / 3), "kto": (4 / 3, 2 / 3), "sft_then_dpo": (3.0, 2 / 3)}  # (per planned token, reference pass)
