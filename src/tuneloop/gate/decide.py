"""The promotion gate: a pure decision, no side effects.

A candidate replaces the incumbent (the champion, or the bare base model when
there is none) only if, on the same held-out items:

- the lower bound of the paired bootstrap confidence interval of the
  difference (candidate - incumbent) clears the margin, so a gain inside the
  noise is not a gain;
- no guarded metric (a general benchmark) regresses by more than its tolerance,
  so a task win bought by forgetting is refused: judged, like the task metric,
  on the paired bootstrap interval of the difference on the same items (the
  lower bound of the drop must stay within the tolerance), so one changed
  answer on a small benchmark does not flip it;
- every absolute floor holds.

Losing is a normal outcome with a reason, not an exception.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tuneloop.errors import TuneloopError
from tuneloop.specs import GateSpec


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    candidate: float
    incumbent: float
    delta: float
    items: int
    checks: list[dict] = field(default_factory=list)
    interval: dict | None = None  # {"low", "high", "confidence", "resamples"} of the gate metric's difference
    guarded: dict = field(default_factory=dict)  # name -> {"candidate", "incumbent", "drop", "tolerance", "ok"}

    def to_json(self) -> dict:
        return asdict(self)


def paired_bootstrap(candidate: dict[str, float], incumbent: dict[str, float], resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean difference over the same items and its percentile bootstrap interval (items resampled in pairs)."""
    keys = sorted(candidate)
    diff = np.array([candidate[k] - incumbent[k] for k in keys], dtype=np.float64)
    if diff.size == 0:
        raise TuneloopError("no items to compare on")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high)


def _paired(metric: str, cand: dict[str, dict[str, float]], inc: dict[str, dict[str, float]]) -> tuple[float, float, int]:
    c, i = cand.get(metric), inc.get(metric)
    if c is None or i is None:
        raise TuneloopError(f"per-item scores for {metric!r} are missing; evaluate both models with it")
    if set(c) != set(i):
        raise TuneloopError(
            f"candidate and incumbent were scored on different items ({len(set(c) ^ set(i))} differ); "
            "evaluate both on the same held-out set")
    n = len(c)
    if n == 0:
        raise TuneloopError("no held-out items to compare on")
    return sum(c.values()) / n, sum(i[k] for k in c) / n, n


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.4g}"


def decide(candidate_metrics: dict[str, float], candidate_items: dict[str, dict[str, float]],
           incumbent_metrics: dict[str, float], incumbent_items: dict[str, dict[str, float]],
           gate: GateSpec, incumbent_label: str = "champion",
           guarded: dict[str, tuple[dict[str, float], dict[str, float]]] | None = None,
           extra_checks: list[dict] | None = None) -> Decision:
    """Promote or reject; every check is listed with its outcome.

    `guarded` maps a benchmark name to (candidate per-item scores, incumbent
    per-item scores) on that benchmark's items; its tolerance comes from
    `gate.guarded` (or `gate.default_tolerance`). `extra_checks` (rubric gates
    from an LLM judge, same shape) must all be ok too.
    """
    cand, inc, n = _paired(gate.metric, candidate_items, incumbent_items)
    delta = cand - inc
    interval = None
    if gate.bootstrap_resamples:
        _, low, high = paired_bootstrap(candidate_items[gate.metric], incumbent_items[gate.metric],
                                        gate.bootstrap_resamples, gate.confidence, gate.seed)
        interval = {"low": low, "high": high, "confidence": gate.confidence, "resamples": gate.bootstrap_resamples}
        checks = [{"check": f"{gate.metric} gain over {incumbent_label}, lower {gate.confidence:.0%} bound",
                   "value": round(low, 6), "need": f">= {gate.margin}", "ok": low >= gate.margin - 1e-12}]
    else:
        checks = [{"check": f"{gate.metric} gain over {incumbent_label}", "value": round(delta, 6),
                   "need": f">= {gate.margin}", "ok": delta >= gate.margin - 1e-12}]
    guarded_out = {}
    for name, (c_items, i_items) in sorted((guarded or {}).items()):
        if set(c_items) != set(i_items) or not c_items:
            raise TuneloopError(f"guarded benchmark {name!r}: candidate and incumbent were not scored on the same items")
        c_mean = sum(c_items.values()) / len(c_items)
        i_mean = sum(i_items[k] for k in c_items) / len(c_items)
        tol = gate.guarded.get(name, gate.default_tolerance)
        drop = i_mean - c_mean
        entry = {"candidate": c_mean, "incumbent": i_mean, "drop": drop, "tolerance": tol}
        if gate.bootstrap_resamples:  # forgetting only when the drop is beyond the tolerance with confidence
            _, low, high = paired_bootstrap(c_items, i_items, gate.bootstrap_resamples, gate.confidence, gate.seed)
            sure = -high  # the smallest drop the interval allows
            entry["interval"] = {"low": -high, "high": -low, "confidence": gate.confidence}
            ok = sure <= tol + 1e-12
            check = {"check": f"{name} drop vs {incumbent_label}, lower {gate.confidence:.0%} bound",
                     "value": round(sure, 6), "need": f"<= {tol}", "ok": ok}
        else:
            ok = drop <= tol + 1e-12
            check = {"check": f"{name} regression vs {incumbent_label}", "value": round(drop, 6),
                     "need": f"<= {tol}", "ok": ok}
        guarded_out[name] = entry | {"ok": ok}
        checks.append(check)
    for name, floor in sorted(gate.min_metrics.items()):
        value = candidate_metrics.get(name)
        checks.append({"check": f"{name} minimum", "value": value, "need": f">= {floor}",
                       "ok": value is not None and value >= floor})
    if gate.max_perplexity is not None:
        ppl = candidate_metrics.get("perplexity")
        checks.append({"check": "perplexity maximum", "value": ppl, "need": f"<= {gate.max_perplexity}",
                       "ok": ppl is not None and ppl <= gate.max_perplexity})
    checks += [dict(c) for c in extra_checks or []]
    failed = [c for c in checks if not c["ok"]]
    ci = f", {gate.confidence:.0%} CI [{interval['low']:+.4f}, {interval['high']:+.4f}]" if interval else ""
    if failed:
        reason = "rejected: " + "; ".join(
            f"{c['check']} is {_fmt(c['value'])}, needs {c['need']}" for c in failed)
        if not checks[0]["ok"]:
            reason += (f" ({gate.metric} {cand:.4f} vs {incumbent_label} {inc:.4f}, difference {delta:+.4f}{ci} "
                       f"on the same {n} items)")
    else:
        reason = (f"promoted: {gate.metric} {cand:.4f} vs {incumbent_label} {inc:.4f} "
                  f"({delta:+.4f}{ci}, margin {gate.margin}) on the same {n} items")
    return Decision(not failed, reason, gate.metric, cand, inc, delta, n, checks, interval, guarded_out)
