"""Evaluate a base model, with or without an adapter, on held-out rows.

Candidate and champion are always scored on the same rows, identified by
their content hash, so the promotion gate compares like with like.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path


from tuneloop.models.base import load_model, load_tokenizer
from tuneloop.models.chat import encode_chat
from tuneloop.data.validate import Row
from tuneloop.evals.decode import greedy_generate, stop_table
from tuneloop.evals.scoring import METRIC_NAMES, score_texts
from tuneloop.specs import EvalSpec


@dataclass
class EvalResult:
    label: str
    metrics: dict[str, float]
    per_item: dict[str, dict[str, float]]  # metric -> item id -> score
    items: list[dict] = field(default_factory=list)  # id, prompt, reference, prediction
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"label": self.label, "metrics": self.metrics, "per_item": self.per_item,
                "items": self.items, "seconds": self.seconds}

    @classmethod
    def from_json(cls, d: dict) -> "EvalResult":
        return cls(d["label"], d["metrics"], d["per_item"], d.get("items", []), d.get("seconds", 0.0))


def load_for_eval(base_path: str, adapter_dir: str | Path | None, quantization: str = "none"):
    model = load_model(base_path, quantization)
    if adapter_dir is not None:
        from peft import PeftModel

        from tuneloop.runtime.safety import refuse_pickles

        refuse_pickles(adapter_dir, f"adapter {adapter_dir}")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model


def generate(model, tok, prompts: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers to chat prompts, batched (left padding, KV cache); each stops at an end token.

    The same decoder as the generative benchmarks (`decode.greedy_generate`), so outputs are
    identical at every batch size."""
    stop, eos = stop_table(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    enc = [encode_chat(tok, p, add_generation_prompt=True)[0] for p in prompts]
    gens = greedy_generate(model, enc, max_new_tokens, batch_size, stop, pad)
    return [tok.decode([t for t in g if t not in eos], skip_special_tokens=True).strip() for g in gens]


def evaluate_rows(model, tok, rows: list[Row], spec: EvalSpec, label: str) -> EvalResult:
    from tuneloop.training.loop import mean_loss
    from tuneloop.training.objectives import encode_rows

    t0 = time.perf_counter()
    rows = rows[: spec.max_items] if spec.max_items else rows
    preds = generate(model, tok, [r.prompt_messages for r in rows], spec.max_new_tokens, spec.batch_size)
    refs = [r.answer for r in rows]
    metrics, per_item_lists = score_texts(preds, refs, METRIC_NAMES)
    enc = encode_rows(tok, [Row(r.line, r.prompt_messages + [{"role": "assistant", "content": r.answer}])
                            for r in rows], max_len=10**6)
    metrics["perplexity"] = math.exp(min(mean_loss(model, enc, spec.batch_size, tok.pad_token_id), 50.0))
    ids = [r.key for r in rows]
    per_item = {m: dict(zip(ids, scores)) for m, scores in per_item_lists.items()}
    items = [{"id": k, "prompt": r.prompt_messages[-1]["content"] if r.prompt_messages else "",
              "reference": ref, "prediction": p} for k, r, ref, p in zip(ids, rows, refs, preds)]
    return EvalResult(label, metrics, per_item, items, time.perf_counter() - t0)


def evaluate_model(base_path: str, adapter_dir: str | Path | None, rows: list[Row], spec: EvalSpec,
                   label: str = "model", quantization: str = "none") -> EvalResult:
    """Load base (+ adapter) and score it on rows."""
    tok = load_tokenizer(base_path)
    model = load_for_eval(base_path, adapter_dir, quantization)
    return evaluate_rows(model, tok, rows, spec, label)
