"""Batches for the training loop: which examples go together, and how they become tensors.

Two layouts, the same loss:

* packed (the default): a micro-batch's examples are laid end to end, with position ids restarting
  at 0 for every example. The first token of each example gets no target, as the first column of a
  padded batch gets none: the loss is the padded loss of the same examples. No token attends across
  examples, by one of two paths:
  - varlen (CPU): the whole micro-batch is one row with no padding, and attention runs per example
    (`varlen_attention`, registered with transformers' AttentionInterface), so it costs the sum of
    the squared lengths, not the square of their sum;
  - block mask (GPU, or a model that cannot switch attention): as few rows as fit the longest
    example (first-fit decreasing) and no attention mask; transformers reads restarting position
    ids as packed sequences and builds a block-diagonal causal mask for sdpa / eager, or takes the
    varlen path of flash attention.
* padded: one row per example, padded to the longest; micro-batches are length-grouped (examples
  of similar length together) unless asked otherwise.

The membership of every micro-batch is a pure function of (lengths, batch size, seed, epoch), so a
resumed run sees the same batches in the same order.
"""

from __future__ import annotations

import torch

from tuneloop.models.chat import IGNORE

Example = tuple[list[int], list[int]]  # (input ids, labels with IGNORE off the assistant tokens)

MEGABATCH = 50  # length grouping sorts windows of 50 micro-batches (as transformers' group_by_length does)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = False) -> list[list[int]]:
    """The micro-batches of one epoch, as lists of example indices: ceil(n / batch_size) of them.

    With `group_by_length`, the shuffled order is cut into windows of MEGABATCH micro-batches, each
    window is sorted by length (longest first) and cut into micro-batches, and the micro-batches are
    shuffled, so a batch pads little while the epoch stays a random order of batches.
    """
    order = epoch_order(len(lengths), seed, epoch)
    if not group_by_length:
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    window = MEGABATCH * batch_size
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w: w + window], key=lambda j: -lengths[j])  # stable: ties keep the shuffled order
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    g = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
    return [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of positions into `lengths`) of total length <= capacity; longest items placed first."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        if lengths[i] > capacity:
            raise ValueError(f"an example of {lengths[i]} tokens does not fit a row of {capacity}")
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def collate_padded(batch: list[Example], pad_id: int, dev: str) -> dict:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    owner = torch.arange(len(batch)).unsqueeze(1).expand(-1, width)
    return {"input_ids": ids.to(dev), "labels": labels.to(dev), "attention_mask": mask.to(dev), "owner": owner.to(dev)}


def collate_packed(batch: list[Example], pad_id: int, dev: str, capacity: int | None = None) -> dict:
    """Rows of examples laid end to end (rows as wide as the longest example unless `capacity` is given).

    Position ids restart at 0 at each example (and at the padding that ends a short row, which is its
    own segment with no targets); the first label of each example is IGNORE. `segments` lists each
    row's example lengths, in order.
    """
    lengths = [len(ids) for ids, _ in batch]
    rows = first_fit_decreasing(lengths, capacity or max(lengths))
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    owner = torch.zeros((len(rows), width), dtype=torch.long)  # which example of `batch` each token is from
    ramp = torch.arange(width)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            x, y = batch[i]
            ids[r, at: at + len(x)] = torch.tensor(x)
            labels[r, at + 1: at + len(y)] = torch.tensor(y[1:])
            pos[r, at: at + len(x)] = ramp[: len(x)]
            owner[r, at: at + len(x)] = i
            at += len(x)
        pos[r, at:] = ramp[: width - at]
    return {"input_ids": ids.to(dev), "labels": labels.to(dev), "position_ids": pos.to(dev),
            "segments": [[lengths[i] for i in row] for row in rows], "owner": owner.to(dev)}


def collate(batch: list[Example], pad_id: int, dev: str, packed: bool, one_row: bool = False) -> dict:
    """A packed or padded batch; `one_row` packs everything into a single row (for `varlen_attention`)."""
    if not packed:
        return collate_padded(batch, pad_id, dev)
    return collate_packed(batch, pad_id, dev, sum(len(ids) for ids, _ in batch) if one_row else None)


def packing_is_exact(model) -> bool:
    """Whether packed rows keep examples apart in this model: it takes attention functions from transformers'
    AttentionInterface and position ids, from which transformers builds the per-example mask (or which
    `varlen_attention` splits by). BLOOM and MPT, for instance, build their mask (and ALiBi bias) without
    position ids: packed, their examples would attend to each other."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "_supports_attention_backend", False):
        return False
    try:
        return "position_ids" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


VARLEN = "tuneloop_varlen"


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     segment_lengths=None, **kwargs):
    """Causal attention run example by example over one packed row (query: batch 1, heads, tokens, dim).

    Without `segment_lengths` it is plain causal attention over each row, right for unpadded or
    right-padded rows. Returns (batch, tokens, heads, dim) as transformers' attention functions do.
    """
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    if segment_lengths is None or len(segment_lengths) == 1:
        out = sdpa(query, key, value, is_causal=True, scale=scaling, dropout_p=p, enable_gqa=gqa)
    else:
        if query.shape[0] != 1:
            raise ValueError(f"varlen attention takes one packed row, not {query.shape[0]}")
        parts = zip(query.split(segment_lengths, 2), key.split(segment_lengths, 2), value.split(segment_lengths, 2))
        out = torch.cat([sdpa(q, k, v, is_causal=True, scale=scaling, dropout_p=p, enable_gqa=gqa)
                         for q, k, v in parts], dim=2)
    return out.transpose(1, 2).contiguous(), None


def enable_varlen_attention(model) -> bool:
    """Switch a model's attention to `varlen_attention` where that is exact and pays: CPU, a model that
    takes attention functions from transformers' AttentionInterface, full causal attention (no sliding
    window, no logit softcapping). Returns whether it did; if not, packed batches use the block mask."""
    from transformers import AttentionInterface

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if base.device.type != "cpu" or not getattr(base, "_supports_attention_backend", False):
        return False
    if getattr(cfg, "sliding_window", None) or getattr(cfg, "attn_logit_softcapping", None):
        return False
    if set(getattr(cfg, "layer_types", None) or ()) - {"full_attention"}:
        return False
    AttentionInterface.register(VARLEN, varlen_attention)
    try:
        base.set_attn_implementation(VARLEN)
    except (ValueError, ImportError):
        return False
    return cfg._attn_implementation == VARLEN
