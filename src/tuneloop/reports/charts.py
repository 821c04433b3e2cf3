"""The report's two charts as inline SVG (no scripts, fonts or images): champion vs challenger per
metric with the paired interval of the difference, and training / validation loss by step."""

from __future__ import annotations

import math
from html import escape

from tuneloop.reports.summary import RetrainSummary
from tuneloop.reports.view import confidence, finite, fmt, labels, metric_rows, signed

INCUMBENT_COLOR = "#94a3b8"
CANDIDATE_COLOR = "#2563eb"
VAL_COLOR = "#ea580c"
GOOD, BAD, NEUTRAL = "#15803d", "#b91c1c", "#475569"


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


def metrics_chart_svg(summary: RetrainSummary, width: int = 960, height: int = 380) -> str:
    """Grouped bars (incumbent, candidate) per 0..1 metric; the paired CI of the difference drawn on the
    candidate bar as an error bar from incumbent + low to incumbent + high."""
    title = "champion vs challenger per metric with intervals"
    inc_label, cand_label = labels(summary)
    rows = [r for r in metric_rows(summary)
            if r.on_unit_scale and (finite(r.incumbent) is not None or finite(r.candidate) is not None)]
    if not rows:
        return _svg_placeholder(width, 140, title, "no 0–1 metrics to chart")

    left, right, top, bottom = 58, 16, 44, 80
    pw, ph = width - left - right, height - top - bottom
    whisker = []
    for r in rows:
        inc = finite(r.incumbent)
        if inc is not None and finite(r.low) is not None and finite(r.high) is not None:
            lo, hi = sorted((inc + r.low, inc + r.high))
            whisker.append((max(0.0, lo), min(1.0, hi)))
        else:
            whisker.append(None)
    top_value = max([v for r in rows for v in (finite(r.incumbent), finite(r.candidate)) if v is not None]
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
        parts.append(_svg_text(lx + 20, 26, f"{confidence(summary)} CI of the paired difference, placed at "
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
        inc, cand = finite(r.incumbent), finite(r.candidate)
        for value, color, x0, label in ((inc, INCUMBENT_COLOR, cx - bar - 3, inc_label),
                                        (cand, CANDIDATE_COLOR, cx + 3, cand_label)):
            if value is None:
                parts.append(_svg_text(x0 + bar / 2, top + ph - 6, "n/a", size=10, fill="#94a3b8"))
                continue
            yy = min(y(value), top + ph - 2)  # a zero still shows as a sliver
            parts.append(f'<rect x="{_t(x0)}" y="{_t(yy)}" width="{_t(bar)}" height="{_t(top + ph - yy)}" '
                         f'fill="{color}" rx="2"><title>{escape(label)} {escape(r.metric)}: '
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
        name = r.metric + (" (gate)" if r.gate else "")
        parts.append(_svg_text(cx, base + 18, name, size=13, fill="#0f172a", weight="600"))
        parts.append(_svg_text(cx, base + 36, f"{fmt(inc, '.3f')} → {fmt(cand, '.3f')}", size=12, fill="#475569"))
        lo, hi, delta = finite(r.low), finite(r.high), finite(r.delta)
        color = GOOD if lo is not None and lo > 0 else BAD if hi is not None and hi < 0 else NEUTRAL
        dtext = f"Δ {signed(delta, 3)}"
        if lo is not None and hi is not None:
            dtext += f" [{signed(lo, 3)}, {signed(hi, 3)}]"
        parts.append(_svg_text(cx, base + 54, dtext, size=12, fill=color, weight="600"))
    parts.append("</svg>")
    return "".join(parts)


def loss_chart_svg(summary: RetrainSummary, width: int = 960, height: int = 340) -> str:
    """Training loss and validation loss against step."""
    title = "training and validation loss by step"
    train, val = [], []
    for e in summary.training.history if summary.training else []:
        if e.step is None:
            continue
        if finite(e.loss) is not None:
            train.append((e.step, e.loss))
        if finite(e.val_loss) is not None:
            val.append((e.step, e.val_loss))
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

    best = summary.training.best_step if val else None
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

