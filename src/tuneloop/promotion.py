"""The promotion gate: a pure decision, no side effects.

A candidate replaces the incumbent (the champion, or the bare base model when
there is none) only if, on the same held-out items, it beats it by the
configured margin and meets every absolute threshold. Losing is a normal
outcome with a reason, not an exception.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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

    def to_json(self) -> dict:
        return asdict(self)


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
           gate: GateSpec, incumbent_label: str = "champion") -> Decision:
    """Promote or reject; every check is listed with its outcome."""
    cand, inc, n = _paired(gate.metric, candidate_items, incumbent_items)
    delta = cand - inc
    checks = [{"check": f"{gate.metric} gain over {incumbent_label}", "value": round(delta, 6),
               "need": f">= {gate.margin}", "ok": delta >= gate.margin - 1e-12}]
    for name, floor in sorted(gate.min_metrics.items()):
        value = candidate_metrics.get(name)
        checks.append({"check": f"{name} minimum", "value": value, "need": f">= {floor}",
                       "ok": value is not None and value >= floor})
    if gate.max_perplexity is not None:
        ppl = candidate_metrics.get("perplexity")
        checks.append({"check": "perplexity maximum", "value": ppl, "need": f"<= {gate.max_perplexity}",
                       "ok": ppl is not None and ppl <= gate.max_perplexity})
    failed = [c for c in checks if not c["ok"]]
    if failed:
        reason = "rejected: " + "; ".join(
            f"{c['check']} is {_fmt(c['value'])}, needs {c['need']}" for c in failed)
        if not checks[0]["ok"]:
            reason += f" ({gate.metric} {cand:.4f} vs {incumbent_label} {inc:.4f} on the same {n} items)"
    else:
        reason = (f"promoted: {gate.metric} {cand:.4f} vs {incumbent_label} {inc:.4f} "
                  f"(+{delta:.4f}, margin {gate.margin}) on the same {n} items")
    return Decision(not failed, reason, gate.metric, cand, inc, delta, n, checks)
