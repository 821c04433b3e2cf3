"""Running a benchmark suite: generative (short-answer) scoring, per-benchmark results and the
headline metric a benchmark is guarded on.

Greedy generation runs left-padded with an attention mask, explicit position
ids counted from each row's first real token and a KV cache; the task
evaluation (`evals.run.generate`) uses the same decoder. Requests are
sorted by length (longest first) to reduce padding and results are returned in
the caller's order. At batch size 1 every row is one unpadded forward,
exactly lm-eval's computation.
"""

from __future__ import annotations

import math
import re
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.evals.benchmarks import MULTIPLE_CHOICE, Benchmark, load_benchmark
from tuneloop.evals.decode import greedy_generate, stop_table
from tuneloop.evals.loglikelihood import encode_text, prefix_ids, score_multiple_choice

GEN_PROMPT = "Question: {question}\nAnswer:"
GEN_UNTIL = ("\n", ".", ",")


@dataclass
class BenchmarkResult:
    name: str
    kind: str
    n: int
    metrics: dict[str, float]
    per_item: dict[str, dict[str, float]]  # metric -> item id -> score
    seconds: float = 0.0
    items: list[dict] = field(default_factory=list)  # id, pred / prediction

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n": self.n, "metrics": self.metrics,
                "per_item": self.per_item, "seconds": self.seconds, "items": self.items}

    @classmethod
    def from_json(cls, d: dict) -> "BenchmarkResult":
        return cls(d["name"], d["kind"], d["n"], d["metrics"], d["per_item"], d.get("seconds", 0.0),
                   d.get("items", []))



def normalize_answer(s: str) -> str:
    """SQuAD/TriviaQA normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _cut(text: str, until: tuple[str, ...]) -> str:
    for u in until:
        k = text.find(u)
        if k >= 0:
            text = text[:k]
    return text.strip()


def generative_prompts(tok, items: list[dict]) -> list[list[int]]:
    return [prefix_ids(tok) + encode_text(tok, GEN_PROMPT.format(question=it["question"])) for it in items]


def score_generative(model, tok, items: list[dict], max_new_tokens: int = 32, batch_size: int = 8,
                     until: tuple[str, ...] = GEN_UNTIL) -> list[dict]:
    """Per item {"exact_match": 0/1, "prediction": str, "tokens": generated ids} by greedy decoding."""
    stop, eos = stop_table(model, tok, until)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    gens = greedy_generate(model, generative_prompts(tok, items), max_new_tokens, batch_size, stop, pad)
    out = []
    for it, g in zip(items, gens):
        text = _cut(tok.decode([t for t in g if t not in eos], skip_special_tokens=True), until)
        em = int(any(normalize_answer(text) == normalize_answer(a) for a in it["answers"]))
        out.append({"exact_match": em, "prediction": text, "tokens": g})
    return out


def run_benchmark(model, tok, bench: Benchmark | str, batch_size: int = 8, max_new_tokens: int = 32,
                  limit: int | None = None) -> BenchmarkResult:
    """Score one benchmark; metrics are means over items."""
    if not isinstance(bench, Benchmark):
        bench = load_benchmark(bench, limit)
    t0 = time.perf_counter()
    items = bench.items
    if bench.kind == MULTIPLE_CHOICE:
        scores = score_multiple_choice(model, tok, items, batch_size)
        names = ("acc", "acc_norm")
        details = [{"id": it["id"], "pred": s["pred"], "pred_norm": s["pred_norm"]} for it, s in zip(items, scores)]
    else:
        scores = score_generative(model, tok, items, max_new_tokens, batch_size)
        names = ("exact_match",)
        details = [{"id": it["id"], "prediction": s["prediction"]} for it, s in zip(items, scores)]
    per_item = {m: {it["id"]: float(s[m]) for it, s in zip(items, scores)} for m in names}
    metrics = {m: (sum(per_item[m].values()) / len(items) if items else math.nan) for m in names}
    return BenchmarkResult(bench.name, bench.kind, len(items), metrics, per_item, time.perf_counter() - t0, details)


def headline(result: BenchmarkResult) -> str:
    """The metric a benchmark is guarded on: normalized accuracy for multiple choice, else exact match."""
    return "acc_norm" if "acc_norm" in result.per_item else "exact_match"


def guarded_pairs(candidate: dict[str, BenchmarkResult],
                  incumbent: dict[str, BenchmarkResult]) -> dict[str, tuple[dict, dict]]:
    """Per-item headline scores of both models on each benchmark, as `promotion.decide(guarded=...)` takes them."""
    return {name: (c.per_item[headline(c)], incumbent[name].per_item[headline(c)]) for name, c in candidate.items()}


def evaluate_benchmarks(base_path: str, adapter_dir: str | Path | None, names: list[str], batch_size: int = 8,
                        limit: int | None = None, max_new_tokens: int = 32,
                        quantization: str = "none") -> dict[str, BenchmarkResult]:
    """Load base (+ adapter) once and run each named benchmark on it."""
    from tuneloop.models.base import load_tokenizer
    from tuneloop.evals.run import load_for_eval

    benches = [load_benchmark(n, limit) for n in names]  # fail on a bad name before loading the model
    tok = load_tokenizer(base_path)
    model = load_for_eval(base_path, adapter_dir, quantization)
    results: dict[str, BenchmarkResult] = {}
    for name, b in zip(names, benches):
        results[str(name)] = run_benchmark(model, tok, b, batch_size, max_new_tokens)
    return results
