"""Evaluation reports: one summary rendered as JSON, Markdown and a self-contained HTML page.

The summary (what the retrain flow produces and stores as ``evaluation.json``
in the version folder) is a plain dict. Every section except ``version`` is
optional; the renderers show what is there and say what is missing::

    {
      "version": "v2",                        # the candidate ("challenger")
      "incumbent_label": "champion v1",       # or "base" when there was no champion
      "created_at": "2025-01-01T00:00:00+00:00",
      "dataset_version": "<sha256>",
      "dataset_splits": {"train": 480, "validation": 60, "eval": 60},
      "decision": {                           # promotion.Decision.to_json(); null when undecided
        "promote": bool, "reason": str, "metric": str,
        "candidate": float, "incumbent": float, "delta": float, "items": int,
        "checks": [{"check": str, "value": float | None, "need": str, "ok": bool}],
        "interval": {"low": float, "high": float, "confidence": 0.95} | None,
      },
      "candidate_metrics": {metric: float},   # exact_match, token_f1, bleu, rouge_l in 0..1; perplexity
      "incumbent_metrics": {metric: float},
      "intervals": {metric: {"delta": float, "low": float, "high": float}},
                                              # paired bootstrap CI of candidate - incumbent; may be {}
      "benchmarks": {name: {"candidate": {metric: float}, "incumbent": {metric: float},
                            "delta": float, "low": float, "high": float,
                            "tolerance": float, "ok": bool, "metric"?: str}},   # may be {}
      "judge": {rubric: {"candidate": float, "incumbent": float | None, "n_failed": int}},  # may be {}
      "training": {"steps": int, "final_loss": float, "best_val_loss": float | None, "best_step": int,
                   "tokens_per_s": float, "seconds": float,
                   "history": [{"step": int, "loss": float, "val_loss"?: float}]},
      "items": [{"id", "prompt", "reference", "candidate", "incumbent"}],   # optional sample
      "status": {"status": str, "reason": str, ...},   # only in summaries rebuilt from the registry
    }

Numbers that are NaN or infinite are written as ``null`` in JSON and shown as
a dash elsewhere. Every piece of text from the summary is escaped in HTML:
prompts and answers are user data. The page has no external references (no
scripts, stylesheets, fonts or images): charts are inline SVG.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

from tuneloop.runtime.fsutil import atomic_write_text
from tuneloop.reports.tables import METRIC_ORDER

ITEM_SAMPLE = 20  # items shown in the HTML table
ITEM_CHARS = 400  # longer texts are cut with an ellipsis
UNBOUNDED = {"perplexity"}  # metrics not on the 0..1 scale of the bar chart
LOWER_IS_BETTER = {"perplexity"}  # a negative delta is an improvement

INCUMBENT_COLOR = "#94a3b8"
CANDIDATE_COLOR = "#2563eb"
VAL_COLOR = "#ea580c"
GOOD, BAD, NEUTRAL = "#15803d", "#b91c1c", "#475569"


# -- small helpers -----------------------------------------------------------
def _finite(value: Any) -> float | None:
    """The value as a float when it is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: Any, spec: str = ".4f", missing: str = "—") -> str:
    v = _finite(value)
    return missing if v is None else format(v, spec)


def _signed(value: Any, digits: int = 4) -> str:
    return _fmt(value, f"+.{digits}f")


def _metric_names(*dicts: dict) -> list[str]:
    present = set().union(*(d.keys() for d in dicts if isinstance(d, dict)))
    return [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER))


def _decision(summary: dict) -> dict | None:
    d = summary.get("decision")
    return d if isinstance(d, dict) else None


def _verdict(summary: dict) -> tuple[str, str]:
    """('PROMOTED' | 'REJECTED' | 'UNDECIDED', css class)."""
    d = _decision(summary)
    promote = d.get("promote") if d else summary.get("promoted")
    if promote is True:
        return "PROMOTED", "promoted"
    if promote is False:
        return "REJECTED", "rejected"
    return "UNDECIDED", "undecided"


def _reason(summary: dict) -> str:
    d = _decision(summary)
    if d and d.get("reason"):
        return str(d["reason"])
    status = summary.get("status")
    if isinstance(status, dict) and status.get("reason"):
        return f"{status.get('status', 'status')}: {status['reason']}"
    return "no promotion decision recorded"


def _interval(summary: dict, metric: str) -> dict | None:
    """{'delta', 'low', 'high'} for a metric: from `intervals`, else the decision's gate interval."""
    iv = (summary.get("intervals") or {}).get(metric)
    if isinstance(iv, dict) and _finite(iv.get("low")) is not None and _finite(iv.get("high")) is not None:
        return iv
    d = _decision(summary)
    if d and d.get("metric") == metric and isinstance(d.get("interval"), dict):
        gi = d["interval"]
        if _finite(gi.get("low")) is not None and _finite(gi.get("high")) is not None:
            return {"delta": d.get("delta"), "low": gi["low"], "high": gi["high"]}
    return None


def _delta(summary: dict, metric: str) -> float | None:
    iv = _interval(summary, metric)
    if iv and _finite(iv.get("delta")) is not None:
        return float(iv["delta"])
    c = _finite((summary.get("candidate_metrics") or {}).get(metric))
    i = _finite((summary.get("incumbent_metrics") or {}).get(metric))
    return None if c is None or i is None else c - i


def _confidence(summary: dict) -> str:
    d = _decision(summary)
    conf = _finite((d.get("interval") or {}).get("confidence")) if d else None
    return f"{conf:.0%}" if conf else "95%"


def _labels(summary: dict) -> tuple[str, str]:
    return str(summary.get("incumbent_label") or "incumbent"), str(summary.get("version") or "candidate")


def _bench_metric(summary: dict, bench: dict) -> str | None:
    if bench.get("metric"):
        return str(bench["metric"])
    cand, inc = bench.get("candidate") or {}, bench.get("incumbent") or {}
    d = _decision(summary)
    if d and d.get("metric") in cand:
        return d["metric"]
    common = _metric_names(cand, inc)
    return common[0] if common else None


def _history(summary: dict) -> list[dict]:
    t = summary.get("training")
    h = t.get("history") if isinstance(t, dict) else None
    return [e for e in h if isinstance(e, dict)] if isinstance(h, list) else []


# -- JSON --------------------------------------------------------------------
def _strict(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_strict(v) for v in items]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_json"):
        return _strict(obj.to_json())
    return str(obj)


def render_json(summary: dict) -> str:
    """Strict, stable JSON: sorted keys, NaN and infinities as null."""
    return json.dumps(_strict(summary), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# -- Markdown ----------------------------------------------------------------
def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]], align: str) -> str:
    sep = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join(["| " + " | ".join(head) + " |", sep] + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _metric_rows(summary: dict) -> list[dict]:
    cand, inc = summary.get("candidate_metrics") or {}, summary.get("incumbent_metrics") or {}
    gate = (_decision(summary) or {}).get("metric")
    rows = []
    for m in _metric_names(cand, inc):
        iv = _interval(summary, m)
        rows.append({"metric": m, "gate": m == gate, "incumbent": inc.get(m), "candidate": cand.get(m),
                     "delta": _delta(summary, m), "low": iv and iv.get("low"), "high": iv and iv.get("high")})
    return rows


def _ci_text(low: Any, high: Any) -> str:
    if _finite(low) is None or _finite(high) is None:
        return "—"
    return f"[{_signed(low)}, {_signed(high)}]"


def _check_value(value: Any) -> str:
    return "missing" if _finite(value) is None else format(float(value), ".4g")


def render_markdown(summary: dict) -> str:
    """Verdict, metrics with intervals, gate checks, benchmarks, judge and training, as Markdown."""
    verdict, _ = _verdict(summary)
    inc_label, cand_label = _labels(summary)
    d = _decision(summary)
    out = [f"# {_md(cand_label)} vs {_md(inc_label)}: {verdict}\n", f"{_reason(summary)}\n"]
    meta = []
    if summary.get("created_at"):
        meta.append(f"- created {summary['created_at']}")
    if summary.get("dataset_version"):
        splits = summary.get("dataset_splits") or {}
        split_text = ", ".join(f"{k} {v}" for k, v in splits.items()) if isinstance(splits, dict) else str(splits)
        meta.append(f"- dataset `{str(summary['dataset_version'])[:16]}`" + (f": {split_text}" if split_text else ""))
    if meta:
        out.append("\n".join(meta) + "\n")

    rows = _metric_rows(summary)
    items = f" ({d['items']} items, same for both)" if d and d.get("items") is not None else ""
    out.append(f"## Held-out metrics{items}\n")
    if rows:
        out.append(_md_table(
            ["metric", _md(inc_label), _md(cand_label), "delta", f"{_confidence(summary)} CI of delta"],
            [[r["metric"] + (" (gate)" if r["gate"] else ""), _fmt(r["incumbent"]), _fmt(r["candidate"]),
              _signed(r["delta"]), _ci_text(r["low"], r["high"])] for r in rows], "lrrrr"))
    else:
        out.append("No metrics recorded.\n")

    out.append("## Gate\n")
    checks = (d or {}).get("checks") or []
    if checks:
        out.append(_md_table(["check", "value", "need", "result"],
                             [[_md(c.get("check", "")), _check_value(c.get("value")), _md(c.get("need", "")),
                               "ok" if c.get("ok") else "FAILED"] for c in checks], "lrll"))
    else:
        out.append("No gate checks recorded.\n")

    benches = summary.get("benchmarks") or {}
    if benches:
        out.append("## Benchmarks (regression guard)\n")
        body = []
        for name, b in sorted(benches.items()):
            m = _bench_metric(summary, b)
            body.append([_md(name), _md(m or "—"), _fmt((b.get("incumbent") or {}).get(m)),
                         _fmt((b.get("candidate") or {}).get(m)), _signed(b.get("delta")),
                         _ci_text(b.get("low"), b.get("high")), _fmt(b.get("tolerance"), ".4g"),
                         "ok" if b.get("ok") else "FAILED"])
        out.append(_md_table(["benchmark", "metric", _md(inc_label), _md(cand_label), "delta", "CI",
                              "tolerance", "result"], body, "llrrrrrl"))

    judge = summary.get("judge") or {}
    if judge:
        out.append("## LLM judge\n")
        body = []
        for rubric, j in sorted(judge.items()):
            c, i = _finite(j.get("candidate")), _finite(j.get("incumbent"))
            body.append([_md(rubric), _fmt(i), _fmt(c), _signed(None if c is None or i is None else c - i),
                         str(j.get("n_failed", 0))])
        out.append(_md_table(["rubric", _md(inc_label), _md(cand_label), "delta", "failed judgements"],
                             body, "lrrrr"))

    out.append("## Training\n")
    t = summary.get("training")
    if isinstance(t, dict) and t:
        lines = []
        if t.get("steps") is not None:
            lines.append(f"- {t['steps']} steps, final loss {_fmt(t.get('final_loss'))}")
        if _finite(t.get("best_val_loss")) is not None:
            lines.append(f"- best validation loss {_fmt(t['best_val_loss'])} at step {t.get('best_step', '—')}")
        if _finite(t.get("tokens_per_s")) is not None or _finite(t.get("seconds")) is not None:
            lines.append(f"- {_fmt(t.get('tokens_per_s'), ',.0f')} tokens/s, {_fmt(t.get('seconds'), '.1f')} s")
        lines.append(f"- {len(_history(summary))} logged steps in the history")
        out.append("\n".join(lines) + "\n")
    else:
        out.append("No training information recorded.\n")
    return "\n".join(out)


# -- SVG charts --------------------------------------------------------------
def _nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> tuple[list[float], int]:
    """Round tick values covering [lo, hi] and the number of decimals to print them with."""
    if not hi > lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        step = mult * mag
        if step >= raw - 1e-15:
            break
    if integer:
        step = max(1.0, round(step))
    start, end = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    n = int(round((end - start) / step))
    ticks = [start + i * step for i in range(n + 1)]
    decimals = 0 if integer else max(0, -math.floor(math.log10(step) + 1e-9) + (1 if mult == 2.5 else 0))
    return ticks, decimals


def _t(x: float) -> str:
    """A coordinate, short."""
    return f"{x:.1f}".rstrip("0").rstrip(".") if abs(x) < 1e9 else "0"


def _svg_text(x: float, y: float, text: str, *, size: int = 12, anchor: str = "middle", fill: str = "#334155",
              weight: str = "normal", extra: str = "") -> str:
    return (f'<text x="{_t(x)}" y="{_t(y)}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}"{extra}>{escape(text)}</text>')


def _svg_open(width: int, height: int, title: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(title)}" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif">'
            f"<title>{escape(title)}</title>")


def _svg_placeholder(width: int, height: int, title: str, message: str) -> str:
    return (_svg_open(width, height, title)
            + f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#f8fafc" stroke="#cbd5e1" '
              f'stroke-dasharray="4 4" rx="6"/>'
            + _svg_text(width / 2, height / 2 + 5, message, size=15, fill="#64748b") + "</svg>")


def metrics_chart_svg(summary: dict, width: int = 960, height: int = 380) -> str:
    """Grouped bars (incumbent, candidate) per 0..1 metric; the paired CI of the difference drawn on the
    candidate bar as an error bar from incumbent + low to incumbent + high."""
    title = "champion vs challenger per metric with intervals"
    inc_label, cand_label = _labels(summary)
    rows = [r for r in _metric_rows(summary)
            if r["metric"] not in UNBOUNDED
            and all(v is None or -1e-9 <= v <= 1 + 1e-9 for v in (_finite(r["incumbent"]), _finite(r["candidate"])))
            and (_finite(r["incumbent"]) is not None or _finite(r["candidate"]) is not None)]
    if not rows:
        return _svg_placeholder(width, 140, title, "no 0–1 metrics to chart")

    left, right, top, bottom = 58, 16, 44, 80
    pw, ph = width - left - right, height - top - bottom
    whisker = []
    for r in rows:
        inc = _finite(r["incumbent"])
        if inc is not None and _finite(r["low"]) is not None and _finite(r["high"]) is not None:
            lo, hi = sorted((inc + float(r["low"]), inc + float(r["high"])))
            whisker.append((max(0.0, lo), min(1.0, hi)))
        else:
            whisker.append(None)
    top_value = max([v for r in rows for v in (_finite(r["incumbent"]), _finite(r["candidate"])) if v is not None]
                    + [w[1] for w in whisker if w])
    ticks, dec = _nice_ticks(0.0, min(1.0, max(top_value * 1.08, 0.05)), 5)
    ymax = ticks[-1]

    def y(v: float) -> float:
        return top + ph - (min(max(v, 0.0), ymax) / ymax) * ph

    parts = [_svg_open(width, height, title)]
    # legend, above the plot
    lx = left
    for color, label in ((INCUMBENT_COLOR, inc_label), (CANDIDATE_COLOR, cand_label)):
        parts.append(f'<rect x="{lx}" y="14" width="14" height="14" rx="2" fill="{color}"/>')
        parts.append(_svg_text(lx + 20, 26, label, anchor="start", size=13))
        lx += 34 + 7.5 * len(label)
    if any(whisker):
        parts.append(f'<line x1="{_t(lx + 7)}" y1="14" x2="{_t(lx + 7)}" y2="28" stroke="#0f172a" stroke-width="2"/>'
                     f'<line x1="{_t(lx + 2)}" y1="14" x2="{_t(lx + 12)}" y2="14" stroke="#0f172a" stroke-width="2"/>'
                     f'<line x1="{_t(lx + 2)}" y1="28" x2="{_t(lx + 12)}" y2="28" stroke="#0f172a" stroke-width="2"/>')
        parts.append(_svg_text(lx + 20, 26, f"{_confidence(summary)} CI of the paired difference, placed at "
                               f"{inc_label} + Δ", anchor="start", size=13))
    else:
        parts.append(_svg_text(lx, 26, "no confidence intervals recorded", anchor="start", size=13, fill="#64748b"))
    # grid and y axis
    for tv in ticks:
        ty = y(tv)
        parts.append(f'<line x1="{left}" y1="{_t(ty)}" x2="{left + pw}" y2="{_t(ty)}" stroke="#e2e8f0"/>')
        parts.append(_svg_text(left - 8, ty + 4, f"{tv:.{dec}f}", anchor="end", size=11, fill="#64748b"))
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#94a3b8"/>')
    parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#94a3b8"/>')
    parts.append(_svg_text(16, top + ph / 2, "score", size=12, fill="#475569",
                           extra=f' transform="rotate(-90 16 {_t(top + ph / 2)})"'))

    group = pw / len(rows)
    bar = min(56.0, group * 0.3)
    for k, r in enumerate(rows):
        cx = left + group * (k + 0.5)
        inc, cand = _finite(r["incumbent"]), _finite(r["candidate"])
        for value, color, x0, label in ((inc, INCUMBENT_COLOR, cx - bar - 3, inc_label),
                                        (cand, CANDIDATE_COLOR, cx + 3, cand_label)):
            if value is None:
                parts.append(_svg_text(x0 + bar / 2, top + ph - 6, "n/a", size=10, fill="#94a3b8"))
                continue
            yy = min(y(value), top + ph - 2)  # a zero still shows as a sliver
            parts.append(f'<rect x="{_t(x0)}" y="{_t(yy)}" width="{_t(bar)}" height="{_t(top + ph - yy)}" '
                         f'fill="{color}" rx="2"><title>{escape(label)} {escape(r["metric"])}: '
                         f'{value:.4f}</title></rect>')
        if inc is not None:  # the incumbent's level, across the group, to read the whisker against
            parts.append(f'<line x1="{_t(cx - bar - 8)}" y1="{_t(y(inc))}" x2="{_t(cx + bar + 8)}" y2="{_t(y(inc))}" '
                         f'stroke="#475569" stroke-dasharray="3 3"/>')
        w = whisker[k]
        if w:
            wx = cx + 3 + bar / 2
            parts.append(f'<g stroke="#0f172a" stroke-width="2"><line x1="{_t(wx)}" y1="{_t(y(w[0]))}" '
                         f'x2="{_t(wx)}" y2="{_t(y(w[1]))}"/>'
                         f'<line x1="{_t(wx - 7)}" y1="{_t(y(w[0]))}" x2="{_t(wx + 7)}" y2="{_t(y(w[0]))}"/>'
                         f'<line x1="{_t(wx - 7)}" y1="{_t(y(w[1]))}" x2="{_t(wx + 7)}" y2="{_t(y(w[1]))}"/></g>')
        # labels under the axis: name, values, delta and interval
        base = top + ph
        name = r["metric"] + (" (gate)" if r["gate"] else "")
        parts.append(_svg_text(cx, base + 18, name, size=13, fill="#0f172a", weight="600"))
        parts.append(_svg_text(cx, base + 36, f"{_fmt(inc, '.3f')} → {_fmt(cand, '.3f')}", size=12, fill="#475569"))
        lo, hi, delta = _finite(r["low"]), _finite(r["high"]), _finite(r["delta"])
        color = GOOD if lo is not None and lo > 0 else BAD if hi is not None and hi < 0 else NEUTRAL
        dtext = f"Δ {_signed(delta, 3)}"
        if lo is not None and hi is not None:
            dtext += f" [{_signed(lo, 3)}, {_signed(hi, 3)}]"
        parts.append(_svg_text(cx, base + 54, dtext, size=12, fill=color, weight="600"))
    parts.append("</svg>")
    return "".join(parts)


def loss_chart_svg(summary: dict, width: int = 960, height: int = 340) -> str:
    """Training loss and validation loss against step."""
    title = "training and validation loss by step"
    train, val = [], []
    for e in _history(summary):
        s = _finite(e.get("step"))
        if s is None:
            continue
        if _finite(e.get("loss")) is not None:
            train.append((s, float(e["loss"])))
        if _finite(e.get("val_loss")) is not None:
            val.append((s, float(e["val_loss"])))
    if not train and not val:
        return _svg_placeholder(width, 140, title, "no training history")

    left, right, top, bottom = 64, 24, 44, 52
    pw, ph = width - left - right, height - top - bottom
    pts = train + val
    xticks, _ = _nice_ticks(min(p[0] for p in pts), max(p[0] for p in pts), 8, integer=True)
    lo_y, hi_y = min(p[1] for p in pts), max(p[1] for p in pts)
    span = hi_y - lo_y
    yticks, ydec = _nice_ticks(lo_y - span * 0.05, hi_y + span * 0.05, 5)
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    parts = [_svg_open(width, height, title)]
    parts.append(f'<defs><clipPath id="plot-clip"><rect x="{left - 6}" y="{top - 6}" width="{pw + 12}" '
                 f'height="{ph + 12}"/></clipPath></defs>')
    for tv in yticks:
        parts.append(f'<line x1="{left}" y1="{_t(py(tv))}" x2="{left + pw}" y2="{_t(py(tv))}" stroke="#e2e8f0"/>')
        parts.append(_svg_text(left - 8, py(tv) + 4, f"{tv:.{ydec}f}", anchor="end", size=11, fill="#64748b"))
    for tv in xticks:
        parts.append(f'<line x1="{_t(px(tv))}" y1="{top + ph}" x2="{_t(px(tv))}" y2="{top + ph + 5}" stroke="#94a3b8"/>')
        parts.append(_svg_text(px(tv), top + ph + 19, f"{tv:.0f}", size=11, fill="#64748b"))
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#94a3b8"/>')
    parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#94a3b8"/>')
    parts.append(_svg_text(left + pw / 2, height - 8, "step", size=12, fill="#475569"))
    parts.append(_svg_text(16, top + ph / 2, "loss", size=12, fill="#475569",
                           extra=f' transform="rotate(-90 16 {_t(top + ph / 2)})"'))

    t = summary.get("training") or {}
    best = _finite(t.get("best_step")) if val else None
    if best is not None and x0 <= best <= x1:
        bx = px(best)
        parts.append(f'<line x1="{_t(bx)}" y1="{top}" x2="{_t(bx)}" y2="{top + ph}" stroke="{GOOD}" '
                     f'stroke-dasharray="5 4"/>')
        near_right = bx > left + pw - 160
        parts.append(_svg_text(bx + (-6 if near_right else 6), top + 14,
                               f"best validation @ step {best:.0f}", anchor="end" if near_right else "start",
                               size=11, fill=GOOD))

    parts.append('<g clip-path="url(#plot-clip)">')
    for series, color, r in ((train, CANDIDATE_COLOR, 2.2 if len(train) > 10 else 3.5), (val, VAL_COLOR, 3.5)):
        if len(series) > 1:
            path = " ".join(f"{_t(px(s))},{_t(py(v))}" for s, v in series)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2" '
                         f'stroke-linejoin="round"/>')
        if len(series) <= 60 or color == VAL_COLOR:
            parts.extend(f'<circle cx="{_t(px(s))}" cy="{_t(py(v))}" r="{r}" fill="{color}"><title>step {s:.0f}: '
                         f'{v:.4f}</title></circle>' for s, v in series)
    parts.append("</g>")

    lx = left + 4
    for color, label, n in ((CANDIDATE_COLOR, "training loss", len(train)), (VAL_COLOR, "validation loss", len(val))):
        parts.append(f'<line x1="{lx}" y1="21" x2="{lx + 22}" y2="21" stroke="{color}" stroke-width="3"/>'
                     f'<circle cx="{lx + 11}" cy="21" r="3.5" fill="{color}"/>')
        text = label + ("" if n else " (none logged)")
        parts.append(_svg_text(lx + 30, 25, text, anchor="start", size=13))
        lx += 50 + 7.5 * len(text)
    parts.append("</svg>")
    return "".join(parts)


# -- HTML --------------------------------------------------------------------
CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f1f5f9; color: #0f172a;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0 0 10px; }
.meta { color: #475569; margin: 0 0 16px; }
.meta code { background: #e2e8f0; padding: 1px 5px; border-radius: 4px; }
section { background: #fff; border: 1px solid #e2e8f0; border-radius: 10px; padding: 16px 18px; margin: 0 0 16px; }
.banner { border-radius: 10px; padding: 14px 18px; margin: 0 0 16px; border: 2px solid; }
.banner .verdict { font-size: 20px; font-weight: 700; letter-spacing: .04em; }
.banner p { margin: 4px 0 0; }
.promoted { background: #dcfce7; border-color: #16a34a; color: #14532d; }
.rejected { background: #fee2e2; border-color: #dc2626; color: #7f1d1d; }
.undecided { background: #e2e8f0; border-color: #64748b; color: #1e293b; }
svg.chart { display: block; width: 100%; height: auto; }
.note { color: #475569; font-size: 13px; margin: 8px 0 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid #e2e8f0; vertical-align: top; }
th { background: #f8fafc; color: #334155; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ok { color: #15803d; font-weight: 600; }
.fail { color: #b91c1c; font-weight: 600; }
.pos { color: #15803d; } .neg { color: #b91c1c; }
.items td { white-space: pre-wrap; word-break: break-word; max-width: 260px; }
.items td.id { white-space: nowrap; color: #475569; }
.stats { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 0 0 12px; }
.stat { background: #f8fafc; border: 1px solid #e2e8f0; border-radius: 8px; padding: 8px 10px; }
.stat b { display: block; font-size: 17px; }
.stat span { color: #64748b; font-size: 12px; }
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _signed_cell(value: Any, digits: int = 4, lower_is_better: bool = False) -> str:
    v = _finite(value)
    cls = "" if v is None or v == 0 else (" pos" if (v > 0) != lower_is_better else " neg")
    return f'<td class="num{cls}">{_e(_signed(v, digits))}</td>'


def _html_table(head: list[tuple[str, bool]], rows: list[str], cls: str = "") -> str:
    th = "".join(f'<th class="num">{_e(h)}</th>' if num else f"<th>{_e(h)}</th>" for h, num in head)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cut(text: Any) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= ITEM_CHARS else s[:ITEM_CHARS - 1] + "…"


def _ok_cell(ok: Any) -> str:
    return '<td class="ok">ok</td>' if ok else '<td class="fail">FAILED</td>'


def render_html(summary: dict) -> str:
    """One self-contained page: verdict banner, metric and loss charts (inline SVG), tables and a sample."""
    verdict, css_class = _verdict(summary)
    inc_label, cand_label = _labels(summary)
    d = _decision(summary)
    body = []

    meta = [f"candidate <b>{_e(cand_label)}</b> against <b>{_e(inc_label)}</b>"]
    if summary.get("created_at"):
        meta.append(f"created {_e(summary['created_at'])}")
    if summary.get("dataset_version"):
        meta.append(f"dataset <code>{_e(str(summary['dataset_version'])[:16])}</code>")
    splits = summary.get("dataset_splits")
    if isinstance(splits, dict) and splits:
        meta.append(", ".join(f"{_e(k)} {_e(v)}" for k, v in splits.items()))
    body.append(f"<h1>Evaluation report: {_e(cand_label)}</h1><p class=\"meta\">{' · '.join(meta)}</p>")
    body.append(f'<div class="banner {css_class}"><div class="verdict">{verdict}</div>'
                f"<p>{_e(_reason(summary))}</p></div>")

    # metrics: chart + table
    rows = _metric_rows(summary)
    items_note = f" on the same {_e(d['items'])} held-out items" if d and d.get("items") is not None else ""
    left_out = [r for r in rows if r["metric"] in UNBOUNDED or any(
        v is not None and not (-1e-9 <= v <= 1 + 1e-9) for v in (_finite(r["incumbent"]), _finite(r["candidate"])))]
    note = ""
    if left_out:
        note = '<p class="note">Not on the 0–1 scale, so not charted: ' + "; ".join(
            f"{_e(r['metric'])} {_e(_fmt(r['incumbent'], '.3f'))} → {_e(_fmt(r['candidate'], '.3f'))} "
            f"(Δ {_e(_signed(r['delta'], 3))}{', lower is better' if r['metric'] == 'perplexity' else ''})"
            for r in left_out) + ".</p>"
    table = ""
    if rows:
        conf = _confidence(summary)
        table = _html_table(
            [("metric", False), (inc_label, True), (cand_label, True), ("delta", True), (f"{conf} CI of delta", True)],
            [f"<tr><td>{_e(r['metric'])}{' <b>(gate)</b>' if r['gate'] else ''}</td>"
             f'<td class="num">{_e(_fmt(r["incumbent"]))}</td><td class="num">{_e(_fmt(r["candidate"]))}</td>'
             f'{_signed_cell(r["delta"], lower_is_better=r["metric"] in LOWER_IS_BETTER)}'
             f'<td class="num">{_e(_ci_text(r["low"], r["high"]))}</td></tr>'
             for r in rows])
    body.append(f"<section><h2>Champion vs challenger per metric{items_note}</h2>"
                f"{metrics_chart_svg(summary)}{note}<div style=\"margin-top:12px\">{table}</div></section>")

    # gate
    checks = (d or {}).get("checks") or []
    gate_rows = [f"<tr><td>{_e(c.get('check', ''))}</td><td class=\"num\">{_e(_check_value(c.get('value')))}</td>"
                 f"<td>{_e(c.get('need', ''))}</td>{_ok_cell(c.get('ok'))}</tr>" for c in checks]
    gi = (d or {}).get("interval")
    gi_note = ""
    if isinstance(gi, dict) and _finite(gi.get("low")) is not None:
        gi_note = (f'<p class="note">{_e(_confidence(summary))} paired bootstrap interval of the '
                   f'{_e(d.get("metric", "gate metric"))} gain: {_e(_ci_text(gi.get("low"), gi.get("high")))}.</p>')
    body.append("<section><h2>Promotion gate</h2>"
                + (_html_table([("check", False), ("value", True), ("need", False), ("result", False)], gate_rows)
                   if gate_rows else '<p class="note">No gate checks recorded.</p>') + gi_note + "</section>")

    benches = summary.get("benchmarks") or {}
    if benches:
        brow = []
        for name, b in sorted(benches.items()):
            m = _bench_metric(summary, b)
            brow.append(f"<tr><td>{_e(name)}</td><td>{_e(m or '—')}</td>"
                        f'<td class="num">{_e(_fmt((b.get("incumbent") or {}).get(m)))}</td>'
                        f'<td class="num">{_e(_fmt((b.get("candidate") or {}).get(m)))}</td>'
                        f'{_signed_cell(b.get("delta"))}<td class="num">{_e(_ci_text(b.get("low"), b.get("high")))}</td>'
                        f'<td class="num">{_e(_fmt(b.get("tolerance"), ".4g"))}</td>{_ok_cell(b.get("ok"))}</tr>')
        body.append("<section><h2>Benchmarks (regression guard)</h2>" + _html_table(
            [("benchmark", False), ("metric", False), (inc_label, True), (cand_label, True), ("delta", True),
             ("CI", True), ("tolerance", True), ("result", False)], brow) + "</section>")

    judge = summary.get("judge") or {}
    if judge:
        jrow = []
        for rubric, j in sorted(judge.items()):
            c, i = _finite(j.get("candidate")), _finite(j.get("incumbent"))
            jrow.append(f"<tr><td>{_e(rubric)}</td><td class=\"num\">{_e(_fmt(i))}</td>"
                        f"<td class=\"num\">{_e(_fmt(c))}</td>{_signed_cell(None if c is None or i is None else c - i)}"
                        f"<td class=\"num\">{_e(j.get('n_failed', 0))}</td></tr>")
        body.append("<section><h2>LLM judge</h2>" + _html_table(
            [("rubric", False), (inc_label, True), (cand_label, True), ("delta", True),
             ("failed judgements", True)], jrow) + "</section>")

    t = summary.get("training")
    stats = ""
    if isinstance(t, dict) and t:
        cells = [(t.get("steps", "—"), "steps"), (_fmt(t.get("final_loss")), "final loss"),
                 (_fmt(t.get("best_val_loss")), "best val loss" + (f", step {t.get('best_step')}"
                                                                  if _finite(t.get("best_val_loss")) is not None else "")),
                 (_fmt(t.get("tokens_per_s"), ",.0f"), "tokens / s"), (_fmt(t.get("seconds"), ".1f"), "seconds")]
        stats = '<div class="stats">' + "".join(
            f'<div class="stat"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in cells) + "</div>"
    body.append(f"<section><h2>Training</h2>{stats}{loss_chart_svg(summary)}</section>")

    items = [i for i in (summary.get("items") or []) if isinstance(i, dict)]
    if items:
        irow = [f'<tr><td class="id">{_e(i.get("id", ""))}</td><td>{_e(_cut(i.get("prompt")))}</td>'
                f'<td>{_e(_cut(i.get("reference")))}</td><td>{_e(_cut(i.get("incumbent")))}</td>'
                f'<td>{_e(_cut(i.get("candidate")))}</td></tr>' for i in items[:ITEM_SAMPLE]]
        more = f" (first {ITEM_SAMPLE} of {len(items)})" if len(items) > ITEM_SAMPLE else ""
        body.append(f"<section><h2>Sample of held-out items{more}</h2>" + _html_table(
            [("id", False), ("prompt", False), ("reference", False), (inc_label, False), (cand_label, False)],
            irow, "items") + "</section>")

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(cand_label)} vs {_e(inc_label)}: {verdict}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


# -- files and the registry --------------------------------------------------
def write_reports(summary: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html atomically; returns {"json", "markdown", "html"} paths."""
    out = Path(out_dir)
    return {
        "json": atomic_write_text(out / "report.json", render_json(summary)),
        "markdown": atomic_write_text(out / "report.md", render_markdown(summary)),
        "html": atomic_write_text(out / "report.html", render_html(summary)),
    }


def summary_from_registry(registry, ref: str) -> dict:
    """The summary of a version: its `evaluation.json` when stored, else a partial one rebuilt from the
    manifest (metrics, training, dataset, incumbent) and status.json (the decision, when one was recorded)."""
    if isinstance(registry, (str, Path)):  # a folder or an s3:// URL
        from tuneloop.registry import open_registry

        registry = open_registry(registry)
    v = registry.get(ref)
    stored = registry.attachment(v.id, "evaluation.json")
    if stored is not None:
        return stored
    m = v.manifest
    incumbent = m.get("incumbent") if isinstance(m.get("incumbent"), dict) else {}
    dataset = m.get("dataset") if isinstance(m.get("dataset"), dict) else {}
    decision = v.status.get("decision") if isinstance(v.status.get("decision"), dict) else None
    training = dict(m["training"]) if isinstance(m.get("training"), dict) else {}
    training.setdefault("history", [])
    return {
        "version": v.id,
        "incumbent_label": incumbent.get("label") or (f"parent {m['parent_version']}" if m.get("parent_version")
                                                      else "incumbent"),
        "created_at": m.get("created_at"),
        "dataset_version": m.get("dataset_version"),
        "dataset_splits": dataset.get("splits", {}),
        "decision": decision,
        "candidate_metrics": dict(m.get("metrics") or {}),
        "incumbent_metrics": dict(incumbent.get("metrics") or {}),
        "intervals": {},
        "benchmarks": {},
        "judge": {},
        "training": training,
        "items": [],
        "status": dict(v.status),
    }
