"""What the training loop minimizes, one class a method: SFT's token loss, DPO's and KTO's preference losses.

The loop (`loop.train_lora`) is the same for all three: packing, checkpoints with exact resume, early
stopping on the validation loss, guards and progress. An objective gives it units to batch (an example for
SFT and KTO, a pair for DPO), the tokens of each unit (for batching and throughput), how much each unit
weighs in a step's normalization (target tokens for SFT, 1 for DPO and KTO), and the summed loss of a
micro-batch of units.

The reference model of DPO and KTO is never a second copy of the model: it is the base with the LoRA
adapter switched off (`disable_adapter()`), or, when training continues an adapter (`init_adapter`), that
adapter as it was before the first step. Its log-probabilities are computed once per example before
training (`prepare`) and kept in every checkpoint's state, so a resumed run uses the very same numbers.

- DPO (Rafailov et al. 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) per pair, where pi
  and ref are the summed log-probabilities of the chosen (c) and rejected (r) answers' tokens.
- KTO (Ethayarajh et al. 2024): with z0 = max(0, mean over the micro-batch of (pi - ref) on mismatched
  prompt/answer pairs), a desirable answer costs w_D * (1 - sigmoid(beta * ((pi - ref) - z0))) and an
  undesirable one w_U * (1 - sigmoid(beta * (z0 - (pi - ref)))); z0 is not differentiated. The mismatched
  answer of example i is a fixed other example's answer, so its reference is computed once too. Unless
  given, the weights follow the paper's advice for unbalanced data: w_D * n_D / (w_U * n_U) in [1, 4/3].

Only the final answer's tokens count in DPO and KTO (earlier assistant turns are part of the prompt).

`sft_weight` adds that many times the preferred (DPO) or desirable (KTO) answer's mean token loss to its unit's
loss (TRL's `rpo_alpha`, Pang et al. 2024): preference losses only rank answers, and from a base that has never
produced the answers they can rank them right while the model still generates something else.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from tuneloop.data.dataset import desirable
from tuneloop.data.validate import Row
from tuneloop.models.chat import IGNORE, encode_chat
from tuneloop.training.packing import collate

Example = tuple[list[int], list[int]]


def _targets(labels: list[int]) -> int:
    return sum(lab != IGNORE for lab in labels[1:])


def _has_target(labels: list[int]) -> bool:
    return any(lab != IGNORE for lab in labels[1:])  # the first token is never a target (as in _targets)


def encode_answer(tok, prompt: list[dict], answer: str, max_len: int) -> Example | None:
    """ids and labels of prompt + answer with targets on the answer only; None when no target survives
    max_len."""
    ids, labels = encode_chat(tok, [*prompt, {"role": "assistant", "content": answer}])
    head, _ = encode_chat(tok, prompt, add_generation_prompt=True)
    if ids[: len(head)] == head:  # the template renders the prompt the same with or without the answer
        labels = [IGNORE] * len(head) + labels[len(head):]
    ids, labels = ids[:max_len], labels[:max_len]
    return (ids, labels) if _has_target(labels) else None


def encode_pairs(tok, rows: list[Row], max_len: int) -> list[tuple[Example, Example]]:
    """(preferred, non-preferred) encodings of the rows that are pairs, each with a target within max_len."""
    pairs = []
    for r in rows:
        if r.rejected is None:
            continue
        c = encode_answer(tok, r.prompt_messages, r.answer, max_len)
        j = encode_answer(tok, r.prompt_messages, r.rejected, max_len)
        if c is not None and j is not None:
            pairs.append((c, j))
    return pairs


def sequence_logps(model, batch: dict, n: int, varlen: bool = False) -> torch.Tensor:
    """The summed log-probability of each example's target tokens, shape (n,), from one collated batch."""
    extra = {"segment_lengths": batch["segments"][0]} if varlen else {}
    logits, target, keep = target_logits(model, batch["input_ids"], batch["labels"], batch.get("attention_mask"),
                                         batch.get("position_ids"), **extra)
    logp = -F.cross_entropy(logits.float(), target, reduction="none")
    owner = batch["owner"][:, 1:][keep]
    return torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add(0, owner, logp)


def encode_rows(tok, rows: list[Row], max_len: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for r in rows:
        ids, labels = encode_chat(tok, r.messages)
        ids, labels = ids[:max_len], labels[:max_len]
        if _has_target(labels):
            out.append((ids, labels))
    return out


_SCALED_HEAD = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def _split_backbone_and_head(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if any(getattr(cfg, a, None) is not None for a in _SCALED_HEAD):
        return None
    backbone, head = getattr(base, "base_model", None), base.get_output_embeddings()
    if backbone is None or backbone is base or head is None:
        return None
    return backbone, head


@torch.no_grad()
def _head_matches(model, backbone, head) -> bool:
    """Whether `head(backbone(ids))` gives the model's own logits, on 8 tokens (eval mode, no RNG drawn):
    a model that scales, caps or trims its logits in a way no config flag announces fails here."""
    was_training = model.training
    model.eval()
    try:
        ids = (torch.arange(1, 9, device=head.weight.device) % head.weight.shape[0]).unsqueeze(0)
        full = model(input_ids=ids, use_cache=False).logits.float()
        hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state
        split = head(hidden.to(head.weight.dtype) if head.weight.is_floating_point() else hidden).float()
        return full.shape == split.shape and torch.allclose(full, split, rtol=1e-4, atol=1e-4)
    except Exception:  # noqa: BLE001 - any surprise means: take the full forward
        return False
    finally:
        model.train(was_training)


def _backbone_and_head(model):
    """(decoder, LM head) when the model's logits are exactly `head(decoder(...).last_hidden_state)`; else None.
    Checked numerically once per model (`_head_matches`), so an unknown logit transform falls back safely."""
    cached = getattr(model, "_tuneloop_head_split", None)
    if cached is None:
        parts = _split_backbone_and_head(model)
        if parts is not None and not _head_matches(model, *parts):
            parts = None
        cached = parts or False
        object.__setattr__(model, "_tuneloop_head_split", cached)  # a plain attribute, not a submodule
    return cached or None


def target_logits(model, ids, labels, mask=None, position_ids=None, **kwargs):
    """(logits, targets, keep): the logits at the positions whose next token is a label, those labels, and the
    mask of those positions over `labels[:, 1:]`.

    The LM head (hidden x vocabulary) runs only at those positions; prompt positions, a large share of every
    row, skip it. Models whose head scales its logits take the full forward.
    """
    target = labels[:, 1:]
    keep = target != IGNORE
    parts = _backbone_and_head(model)
    if parts is None:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                       **kwargs).logits
        return logits[:, :-1][keep], target[keep], keep
    backbone, head = parts
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                      **kwargs).last_hidden_state
    hidden = hidden[:, :-1][keep]
    return head(hidden.to(head.weight.dtype) if head.weight.is_floating_point() else hidden), target[keep], keep


def token_loss_sum(model, ids, labels, mask=None, position_ids=None, **kwargs) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over label tokens, and how many there were."""
    logits, target, _ = target_logits(model, ids, labels, mask, position_ids, **kwargs)
    loss = torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")
    return loss, int(target.numel())


def batch_loss(model, batch: dict, varlen: bool = False) -> tuple[torch.Tensor, int]:
    """token_loss_sum of a collated batch; `varlen` when the model runs `varlen_attention` on one packed row."""
    extra = {"segment_lengths": batch["segments"][0]} if varlen else {}
    return token_loss_sum(model, batch["input_ids"], batch["labels"], batch.get("attention_mask"),
                          batch.get("position_ids"), **extra)


class SFT:
    """Next-token loss on the assistant tokens of chat rows (rows marked undesirable are left out; a
    preference pair contributes its preferred answer)."""

    name = "sft"

    def __init__(self, tok, rows: list[Row], max_len: int, spec=None):
        plain = [r for r in rows if r.rejected is None and r.label is not False]
        self.examples = encode_rows(tok, plain or [r for r in rows if r.rejected is not None], max_len)
        self.lengths = [len(ids) for ids, _ in self.examples]
        self.counts = [_targets(labels) for _, labels in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def describe(self) -> str:
        return f"{len(self)} rows"

    def prepare(self, model, batch_size: int, pad_id: int, dev, packed: bool, varlen: bool,
                use_adapter: bool, log) -> None:
        pass

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def loss(self, model, idx: list[int], pad_id: int, dev, packed: bool, varlen: bool) -> tuple[torch.Tensor, dict]:
        batch = collate([self.examples[j] for j in idx], pad_id, dev, packed, one_row=varlen)
        loss, _ = batch_loss(model, batch, varlen)
        return loss, {}


class _Referenced:
    """A preference objective: sequences scored against the reference model's log-probabilities."""

    name = ""
    sequences_per_unit = 2

    def __init__(self):
        self.ref: torch.Tensor | None = None  # (units, sequences_per_unit), float64

    def describe(self) -> str:
        return f"{len(self)} {'pairs' if self.name == 'dpo' else 'answers'}"

    def __len__(self) -> int:
        return len(self.lengths)

    def _sequences(self, idx: list[int]) -> list[list[Example]]:
        """For each of the unit's sequence slots, the sequences of units idx (slot-major)."""
        raise NotImplementedError

    def _logps(self, model, seqs: list[Example], pad_id, dev, packed, varlen) -> torch.Tensor:
        return sequence_logps(model, collate(seqs, pad_id, dev, packed, one_row=varlen), len(seqs), varlen)

    @torch.no_grad()
    def prepare(self, model, batch_size: int, pad_id: int, dev, packed: bool, varlen: bool,
                use_adapter: bool, log) -> None:
        """Reference log-probabilities of every sequence, once: the base (adapter off), or the adapter as it
        is now (continuing one). Eval mode: no dropout."""
        if self.ref is not None or not len(self):
            return
        was_training = model.training
        model.eval()
        off = nullcontext() if use_adapter or not hasattr(model, "disable_adapter") else model.disable_adapter()
        out = torch.zeros(len(self), self.sequences_per_unit, dtype=torch.float64)
        with off:
            for start in range(0, len(self), batch_size):
                idx = list(range(start, min(start + batch_size, len(self))))
                for k, seqs in enumerate(self._sequences(idx)):
                    out[idx, k] = self._logps(model, seqs, pad_id, dev, packed, varlen).double().cpu()
        model.train(was_training)
        self.ref = out
        log(f"reference log-probabilities of {len(self) * self.sequences_per_unit} sequences computed "
            f"({'the starting adapter' if use_adapter else 'base model, adapter off'})")

    def state(self) -> dict:
        return {"reference": self.ref.tolist()} if self.ref is not None else {}

    def load_state(self, state: dict) -> None:
        if state.get("reference") is not None:
            self.ref = torch.tensor(state["reference"], dtype=torch.float64)


class DPO(_Referenced):
    """Direct preference optimization on (prompt, preferred, non-preferred) pairs."""

    name = "dpo"

    def __init__(self, tok, rows: list[Row], max_len: int, spec):
        super().__init__()
        self.beta = spec.beta
        self.pairs = encode_pairs(tok, rows, max_len)
        self.lengths = [len(c[0]) + len(j[0]) for c, j in self.pairs]
        self.counts = [1] * len(self.pairs)
        self.sft_weight = spec.sft_weight
        self.answer_tokens = torch.tensor([_targets(c[1]) for c, _ in self.pairs], dtype=torch.float32)

    def _sequences(self, idx):
        return [[self.pairs[i][0] for i in idx], [self.pairs[i][1] for i in idx]]

    def loss(self, model, idx, pad_id, dev, packed, varlen):
        chosen, rejected = self._sequences(idx)
        lp = self._logps(model, chosen + rejected, pad_id, dev, packed, varlen)
        ref = self.ref[idx].to(lp.device, lp.dtype)
        margin = self.beta * ((lp[: len(idx)] - ref[:, 0]) - (lp[len(idx):] - ref[:, 1]))
        loss = -F.logsigmoid(margin).sum()
        if self.sft_weight:  # the preferred answers' mean token loss, so their likelihood does not sink
            loss = loss + self.sft_weight * (-lp[: len(idx)] / self.answer_tokens[idx].to(lp.device)).sum()
        return loss, {"accuracy": float((margin > 0).sum()), "margin": float(margin.detach().sum() / self.beta)}


def kto_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """(w_D, w_U) with w_D * n_D / (w_U * n_U) in [1, 4/3] (the KTO paper's advice), moving one weight off 1
    only as far as needed."""
    if not n_desirable or not n_undesirable:
        return 1.0, 1.0
    ratio = n_desirable / n_undesirable
    if ratio < 1:
        return 1 / ratio, 1.0
    if ratio > 4 / 3:
        return 1.0, ratio * 3 / 4
    return 1.0, 1.0


class KTO(_Referenced):
    """Kahneman-Tversky optimization on answers marked desirable or not (a pair gives one of each)."""

    name = "kto"

    def __init__(self, tok, rows: list[Row], max_len: int, spec):
        super().__init__()
        self.beta = spec.beta
        items: list[tuple[list[dict], str, bool]] = []
        for r in rows:
            if r.rejected is not None:
                items += [(r.prompt_messages, r.answer, True), (r.prompt_messages, r.rejected, False)]
            else:
                items.append((r.prompt_messages, r.answer, desirable(r)))
        encoded = [(encode_answer(tok, p, a, max_len), p, a, good) for p, a, good in items]
        encoded = [(e, p, a, good) for e, p, a, good in encoded if e is not None]
        self.examples = [e for e, *_ in encoded]
        self.good = torch.tensor([good for *_, good in encoded], dtype=torch.bool)
        answers = [a for _, _, a, _ in encoded]
        # the mismatched pair for the KL estimate: example i's prompt with a fixed other example's answer
        order = list(range(len(encoded)))
        random.Random(spec.seed).shuffle(order)
        partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
        self.mismatched = []
        for i, (e, p, _, _) in enumerate(encoded):
            m = encode_answer(tok, p, answers[partner[i]], max_len)
            self.mismatched.append(m if m is not None else e)
        self.lengths = [len(e[0]) + len(m[0]) for e, m in zip(self.examples, self.mismatched)]
        self.counts = [1] * len(self.examples)
        self.sft_weight = spec.sft_weight
        self.answer_tokens = torch.tensor([_targets(e[1]) for e in self.examples], dtype=torch.float32)
        n_good = int(self.good.sum())
        auto = kto_weights(n_good, len(self.examples) - n_good)
        self.w_desirable = spec.desirable_weight if spec.desirable_weight is not None else auto[0]
        self.w_undesirable = spec.undesirable_weight if spec.undesirable_weight is not None else auto[1]

    def describe(self) -> str:
        n_good = int(self.good.sum())
        return (f"{len(self)} answers ({n_good} desirable, weight {self.w_desirable:.3g}; {len(self) - n_good} "
                f"undesirable, weight {self.w_undesirable:.3g})")

    def _sequences(self, idx):
        return [[self.examples[i] for i in idx], [self.mismatched[i] for i in idx]]

    def loss(self, model, idx, pad_id, dev, packed, varlen):
        answers, mismatched = self._sequences(idx)
        ref = self.ref[idx]
        with torch.no_grad():  # the KL estimate is a baseline, not a path for gradients
            kl = self._logps(model, mismatched, pad_id, dev, packed, varlen).double().cpu() - ref[:, 1]
            z0 = max(float(kl.mean()), 0.0)
        lp = self._logps(model, answers, pad_id, dev, packed, varlen)
        ratio = lp - ref[:, 0].to(lp.device, lp.dtype)
        good = self.good[idx].to(lp.device)
        up = self.w_desirable * (1 - torch.sigmoid(self.beta * (ratio - z0)))
        down = self.w_undesirable * (1 - torch.sigmoid(self.beta * (z0 - ratio)))
        loss = torch.where(good, up, down).sum()
        if self.sft_weight:  # the desirable answers' mean token loss
            nll = -lp / self.answer_tokens[idx].to(lp.device)
            loss = loss + self.sft_weight * torch.where(good, nll, torch.zeros_like(nll)).sum()
        right = torch.where(good, ratio > 0, ratio < 0)
        return loss, {"accuracy": float(right.sum()), "kl": z0 * len(idx)}


OBJECTIVES = {"sft": SFT, "dpo": DPO, "kto": KTO}


def make_objective(method: str, tok, rows: list[Row], max_len: int, spec):
    return OBJECTIVES[method](tok, rows, max_len, spec)


@torch.no_grad()
def preference_accuracy(model, tok, rows: list[Row], max_len: int = 512, batch_size: int = 16) -> dict:
    """Held-out preference accuracy: the share of pairs whose preferred answer has the higher summed
    log-probability under `model` (eval mode), with the mean margin in nats. Rows without `rejected` are
    skipped."""
    from tuneloop.models.base import device

    pairs = encode_pairs(tok, rows, max_len)
    if not pairs:
        return {"pairs": 0, "accuracy": math.nan, "margin": math.nan}
    was_training = model.training
    model.eval()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    wins, margin = 0, 0.0
    for s in range(0, len(pairs), batch_size):
        part = pairs[s: s + batch_size]
        seqs = [c for c, _ in part] + [j for _, j in part]
        lp = sequence_logps(model, collate(seqs, pad_id, device(), packed=False), len(seqs))
        diff = lp[: len(part)] - lp[len(part):]
        wins += int((diff > 0).sum())
        margin += float(diff.sum())
    model.train(was_training)
    return {"pairs": len(pairs), "accuracy": wins / len(pairs), "margin": margin / len(pairs)}
