"""Greedy decoding shared by held-out evaluation and the generative benchmarks, so both produce the
same answers at every batch size; and the small model facts (device, context length, forward arguments)
that the scorers need."""

from __future__ import annotations

import inspect

import torch

from tuneloop.errors import UserError


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def max_length(model) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "max_position_embeddings", None) or 2048)


def forward_params(model) -> set[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a PeftModel
    try:
        return set(inspect.signature(base.forward).parameters)
    except (TypeError, ValueError):
        return set()


def cache_of(res):
    """The KV cache of a forward's output (`cache` since transformers 5.x, `past_key_values` before)."""
    return res["cache"] if "cache" in res else res["past_key_values"]


def chunks(seq: list, size: int):
    for i in range(0, len(seq), size):
        yield seq[i: i + size]


def eos_ids(model, tok) -> set[int]:
    """The tokenizer's end token and the model's generation-config end tokens."""
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else ({gen_eos} if gen_eos is not None else set())
    return ids


def stop_table(model, tok, until: tuple[str, ...] = ()) -> tuple[torch.Tensor, set[int]]:
    """(True for every token id that is an end token or whose text contains a stop string, the end ids)."""
    eos = eos_ids(model, tok)
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)
    stop = torch.zeros(vocab, dtype=torch.bool)
    if until:
        texts = tok.batch_decode([[i] for i in range(min(vocab, len(tok)))])
        stop[[i for i, t in enumerate(texts) if any(u in t for u in until)]] = True
    stop[[e for e in eos if 0 <= e < vocab]] = True
    return stop, eos


@torch.inference_mode()
def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 8,
                    stop: torch.Tensor | None = None, pad_id: int = 0) -> list[list[int]]:
    """Greedy continuations of token-id prompts, cut after the first stop token (kept).

    Left padding with an attention mask, explicit position ids (0 at each row's
    first real token, as in an unpadded run) and a KV cache; a batch stops when
    every row has produced a stop token (`stop`: bool per vocabulary id).
    """
    if batch_size < 1:
        raise UserError(batch_size, "batch size must be at least 1", "give a batch size of 1 or more")
    dev, max_len = model_device(model), max_length(model)
    params = forward_params(model)
    cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    keep = max(max_len - max_new_tokens, 1)
    prompts = [p[-keep:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    for chunk in chunks(order, batch_size):
        b, width = len(chunk), len(prompts[chunk[0]])
        ids = torch.full((b, width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, i in enumerate(chunk):
            p = prompts[i]
            ids[j, width - len(p):] = torch.tensor(p)
            mask[j, width - len(p):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **last_only)
        nxt = res.logits[:, -1].argmax(-1)
        if stop is None:
            stop = torch.zeros(res.logits.shape[-1], dtype=torch.bool)
        stop_d = stop.to(dev)
        toks, done, last = [nxt], stop_d[nxt], pos[:, -1:]
        for _ in range(max_new_tokens - 1):
            if bool(done.all()):
                break
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            last = last + 1
            cache = cache_of(res)
            res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last, use_cache=True,
                        **{cache_kw: cache}, **last_only)
            nxt = res.logits[:, -1].argmax(-1)
            toks.append(nxt)
            done = done | stop_d[nxt]
        gen = torch.stack(toks, 1)
        is_stop = stop_d[gen].tolist()
        for j, (i, row) in enumerate(zip(chunk, gen.tolist())):
            cut = is_stop[j].index(True) + 1 if True in is_stop[j] else len(row)
            out[i] = row[:cut]
    return out  # type: ignore[return-value]
