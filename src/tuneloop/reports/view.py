"""What every report shows of a `RetrainSummary`, worked out once: the verdict, the labels, one row per
metric with its interval, and how numbers print (NaN, infinities and missing values as a dash)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuneloop.reports.summary import BenchmarkRow, Interval, RetrainSummary
from tuneloop.reports.tables import metric_names

UNBOUNDED = {"perplexity"}  # metrics not on the 0..1 scale of the bar chart
LOWER_IS_BETTER = {"perplexity"}  # a negative delta is an improvement


def finite(value: float | None) -> float | None:
    """The value when it is a finite number, else None."""
    return value if value is not None and math.isfinite(value) else None


def fmt(value: float | None, spec: str = ".4f", missing: str = "—") -> str:
    v = finite(value)
    return missing if v is None else format(v, spec)


def signed(value: float | None, digits: int = 4) -> str:
    return fmt(value, f"+.{digits}f")


def ci_text(low: float | None, high: float | None) -> str:
    if finite(low) is None or finite(high) is None:
        return "—"
    return f"[{signed(low)}, {signed(high)}]"


def check_value(value: float | None) -> str:
    return "missing" if finite(value) is None else format(value, ".4g")


def verdict(s: RetrainSummary) -> tuple[str, str]:
    """('PROMOTED' | 'REJECTED' | 'UNDECIDED', css class)."""
    promote = s.decision.promote if s.decision else s.promoted
    if promote is True:
        return "PROMOTED", "promoted"
    if promote is False:
        return "REJECTED", "rejected"
    return "UNDECIDED", "undecided"


def reason(s: RetrainSummary) -> str:
    if s.decision and s.decision.reason:
        return s.decision.reason
    if s.status and s.status.get("reason"):
        return f"{s.status.get('status', 'status')}: {s.status['reason']}"
    return "no promotion decision recorded"


def labels(s: RetrainSummary) -> tuple[str, str]:
    """(incumbent, candidate) as the reports name them."""
    return s.incumbent_label or "incumbent", s.version or "candidate"


def confidence(s: RetrainSummary) -> str:
    conf = finite(s.decision.interval.confidence) if s.decision and s.decision.interval else None
    return f"{conf:.0%}" if conf else "95%"


def items_compared(s: RetrainSummary) -> int | None:
    return s.decision.items if s.decision else None


def interval(s: RetrainSummary, metric: str) -> Interval | None:
    """A metric's interval: from `intervals`, else the decision's own interval of its gate metric."""
    iv = s.intervals.get(metric)
    if iv and finite(iv.low) is not None and finite(iv.high) is not None:
        return iv
    d = s.decision
    if d and d.metric == metric and d.interval and finite(d.interval.low) is not None \
            and finite(d.interval.high) is not None:
        return Interval(delta=d.delta, low=d.interval.low, high=d.interval.high)
    return None


def delta(s: RetrainSummary, metric: str) -> float | None:
    iv = interval(s, metric)
    if iv and finite(iv.delta) is not None:
        return iv.delta
    c, i = finite(s.candidate_metrics.get(metric)), finite(s.incumbent_metrics.get(metric))
    return None if c is None or i is None else c - i


@dataclass(frozen=True)
class MetricRow:
    metric: str
    gate: bool  # the metric the promotion gate decided on
    incumbent: float | None
    candidate: float | None
    delta: float | None
    low: float | None
    high: float | None

    @property
    def on_unit_scale(self) -> bool:
        """Charted on the 0..1 bar chart: a bounded metric whose values are all within 0..1."""
        return self.metric not in UNBOUNDED and all(
            v is None or -1e-9 <= v <= 1 + 1e-9 for v in (finite(self.incumbent), finite(self.candidate)))


def metric_rows(s: RetrainSummary) -> list[MetricRow]:
    cand, inc = s.candidate_metrics, s.incumbent_metrics
    gate = s.decision.metric if s.decision else None
    rows = []
    for m in metric_names(cand, inc):
        iv = interval(s, m)
        rows.append(MetricRow(m, m == gate, inc.get(m), cand.get(m), delta(s, m),
                              iv.low if iv else None, iv.high if iv else None))
    return rows


def bench_metric(s: RetrainSummary, bench: BenchmarkRow) -> str | None:
    """The benchmark's headline metric; summaries written before it was recorded fall back to the gate's
    metric, else the first metric both sides have."""
    if bench.metric:
        return bench.metric
    if s.decision and s.decision.metric in bench.candidate:
        return s.decision.metric
    common = metric_names(bench.candidate, bench.incumbent)
    return common[0] if common else None


def judge_delta(candidate: float | None, incumbent: float | None) -> float | None:
    c, i = finite(candidate), finite(incumbent)
    return None if c is None or i is None else c - i
