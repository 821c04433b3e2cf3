"""The report as one self-contained HTML page (`report.html`): verdict banner, charts, tables, a sample.

Every piece of text from the summary is escaped: prompts and answers are user data. The page has no
external references (no scripts, stylesheets, fonts or images): the charts are inline SVG.
"""

from __future__ import annotations

from html import escape

from tuneloop.reports.charts import loss_chart_svg, metrics_chart_svg
from tuneloop.reports.summary import RetrainSummary, SampleItem
from tuneloop.reports.view import (LOWER_IS_BETTER, bench_metric, check_value, ci_text, confidence, finite, fmt,
                                   items_compared, judge_delta, labels, metric_rows, reason, signed, verdict)

ITEM_SAMPLE = 20  # items shown in the HTML table
ITEM_CHARS = 400  # longer texts are cut with an ellipsis
ID_CHARS = 12  # item ids are often 64-character hashes: shown cut, whole in the cell's tool tip

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
table.items { table-layout: fixed; }
.items col.id { width: 9em; }
.items td { white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word; }
.items td.id { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; color: #475569;
               font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.stats { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 0 0 12px; }
.stat { background: #f8fafc; border: 1px solid #e2e8f0; border-radius: 8px; padding: 8px 10px; }
.stat b { display: block; font-size: 17px; }
.stat span { color: #64748b; font-size: 12px; }
"""



def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _signed_cell(value: float | None, digits: int = 4, lower_is_better: bool = False) -> str:
    v = finite(value)
    cls = "" if v is None or v == 0 else (" pos" if (v > 0) != lower_is_better else " neg")
    return f'<td class="num{cls}">{_e(signed(v, digits))}</td>'


def _html_table(head: list[tuple[str, bool]], rows: list[str], cls: str = "", cols: str = "") -> str:
    th = "".join(f'<th class="num">{_e(h)}</th>' if num else f"<th>{_e(h)}</th>" for h, num in head)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}>{cols}<thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cut(text: str | None, limit: int = ITEM_CHARS) -> str:
    s = text or ""
    return s if len(s) <= limit else s[:limit - 1] + "…"


def _ok_cell(ok: bool) -> str:
    return '<td class="ok">ok</td>' if ok else '<td class="fail">FAILED</td>'


def _item_row(item: SampleItem) -> str:
    """The id cut to ID_CHARS (whole in its title), so a long id never runs over the prompt beside it."""
    return (f'<tr><td class="id" title="{_e(item.id)}">{_e(_cut(item.id, ID_CHARS + 1))}</td>'
            + "".join(f"<td>{_e(_cut(text))}</td>" for text in (item.prompt, item.reference, item.incumbent,
                                                                  item.candidate)) + "</tr>")


def _metrics_section(s: RetrainSummary, inc_label: str, cand_label: str) -> str:
    rows = metric_rows(s)
    n = items_compared(s)
    items_note = f" on the same {_e(n)} held-out items" if n is not None else ""
    left_out = [r for r in rows if not r.on_unit_scale]
    note = ""
    if left_out:
        note = '<p class="note">Not on the 0–1 scale, so not charted: ' + "; ".join(
            f"{_e(r.metric)} {_e(fmt(r.incumbent, '.3f'))} → {_e(fmt(r.candidate, '.3f'))} "
            f"(Δ {_e(signed(r.delta, 3))}{', lower is better' if r.metric in LOWER_IS_BETTER else ''})"
            for r in left_out) + ".</p>"
    table = ""
    if rows:
        table = _html_table(
            [("metric", False), (inc_label, True), (cand_label, True), ("delta", True),
             (f"{confidence(s)} CI of delta", True)],
            [f"<tr><td>{_e(r.metric)}{' <b>(gate)</b>' if r.gate else ''}</td>"
             f'<td class="num">{_e(fmt(r.incumbent))}</td><td class="num">{_e(fmt(r.candidate))}</td>'
             f'{_signed_cell(r.delta, lower_is_better=r.metric in LOWER_IS_BETTER)}'
             f'<td class="num">{_e(ci_text(r.low, r.high))}</td></tr>' for r in rows])
    return (f"<section><h2>Champion vs challenger per metric{items_note}</h2>"
            f"{metrics_chart_svg(s)}{note}<div style=\"margin-top:12px\">{table}</div></section>")


def _gate_section(s: RetrainSummary) -> str:
    d = s.decision
    checks = d.checks if d else []
    gate_rows = [f"<tr><td>{_e(c.check)}</td><td class=\"num\">{_e(check_value(c.value))}</td>"
                 f"<td>{_e(c.need)}</td>{_ok_cell(c.ok)}</tr>" for c in checks]
    gi_note = ""
    if d and d.interval and finite(d.interval.low) is not None:
        gi_note = (f'<p class="note">{_e(confidence(s))} paired bootstrap interval of the '
                   f'{_e(d.metric or "gate metric")} gain: {_e(ci_text(d.interval.low, d.interval.high))}.</p>')
    return ("<section><h2>Promotion gate</h2>"
            + (_html_table([("check", False), ("value", True), ("need", False), ("result", False)], gate_rows)
               if gate_rows else '<p class="note">No gate checks recorded.</p>') + gi_note + "</section>")


def _benchmarks_section(s: RetrainSummary, inc_label: str, cand_label: str) -> str:
    brow = []
    for name, b in sorted(s.benchmarks.items()):
        m = bench_metric(s, b)
        brow.append(f"<tr><td>{_e(name)}</td><td>{_e(m or '—')}</td>"
                    f'<td class="num">{_e(fmt(b.incumbent.get(m)))}</td>'
                    f'<td class="num">{_e(fmt(b.candidate.get(m)))}</td>'
                    f'{_signed_cell(b.delta)}<td class="num">{_e(ci_text(b.low, b.high))}</td>'
                    f'<td class="num">{_e(fmt(b.tolerance, ".4g"))}</td>{_ok_cell(b.ok)}</tr>')
    return "<section><h2>Benchmarks (regression guard)</h2>" + _html_table(
        [("benchmark", False), ("metric", False), (inc_label, True), (cand_label, True), ("delta", True),
         ("CI", True), ("tolerance", True), ("result", False)], brow) + "</section>"


def _judge_section(s: RetrainSummary, inc_label: str, cand_label: str) -> str:
    jrow = [f"<tr><td>{_e(rubric)}</td><td class=\"num\">{_e(fmt(j.incumbent))}</td>"
            f"<td class=\"num\">{_e(fmt(j.candidate))}</td>{_signed_cell(judge_delta(j.candidate, j.incumbent))}"
            f"<td class=\"num\">{_e(j.n_failed)}</td></tr>" for rubric, j in sorted(s.judge.items())]
    return "<section><h2>LLM judge</h2>" + _html_table(
        [("rubric", False), (inc_label, True), (cand_label, True), ("delta", True),
         ("failed judgements", True)], jrow) + "</section>"


def _training_section(s: RetrainSummary) -> str:
    t = s.training
    stats = ""
    if t:
        best = f", step {t.best_step}" if finite(t.best_val_loss) is not None else ""
        cells = [(t.steps if t.steps is not None else "—", "steps"), (fmt(t.final_loss), "final loss"),
                 (fmt(t.best_val_loss), "best val loss" + best),
                 (fmt(t.tokens_per_s, ",.0f"), "tokens / s"), (fmt(t.seconds, ".1f"), "seconds")]
        stats = '<div class="stats">' + "".join(
            f'<div class="stat"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in cells) + "</div>"
    return f"<section><h2>Training</h2>{stats}{loss_chart_svg(s)}</section>"


def _items_section(s: RetrainSummary, inc_label: str, cand_label: str) -> str:
    more = f" (first {ITEM_SAMPLE} of {len(s.items)})" if len(s.items) > ITEM_SAMPLE else ""
    cols = '<colgroup><col class="id"><col><col><col><col></colgroup>'
    return f"<section><h2>Sample of held-out items{more}</h2>" + _html_table(
        [("id", False), ("prompt", False), ("reference", False), (inc_label, False), (cand_label, False)],
        [_item_row(i) for i in s.items[:ITEM_SAMPLE]], "items", cols) + "</section>"


def render_html(summary: RetrainSummary) -> str:
    """One self-contained page: verdict banner, metric and loss charts (inline SVG), tables and a sample."""
    s = summary
    verdict_text, css_class = verdict(s)
    inc_label, cand_label = labels(s)

    meta = [f"candidate <b>{_e(cand_label)}</b> against <b>{_e(inc_label)}</b>"]
    if s.created_at:
        meta.append(f"created {_e(s.created_at)}")
    if s.dataset_version:
        meta.append(f"dataset <code>{_e(s.dataset_version[:16])}</code>")
    if s.dataset_splits:
        meta.append(", ".join(f"{_e(k)} {_e(v)}" for k, v in s.dataset_splits.items()))
    body = [f"<h1>Evaluation report: {_e(cand_label)}</h1><p class=\"meta\">{' · '.join(meta)}</p>",
            f'<div class="banner {css_class}"><div class="verdict">{verdict_text}</div>'
            f"<p>{_e(reason(s))}</p></div>",
            _metrics_section(s, inc_label, cand_label), _gate_section(s)]
    if s.benchmarks:
        body.append(_benchmarks_section(s, inc_label, cand_label))
    if s.judge:
        body.append(_judge_section(s, inc_label, cand_label))
    body.append(_training_section(s))
    if s.items:
        body.append(_items_section(s, inc_label, cand_label))

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(cand_label)} vs {_e(inc_label)}: {verdict_text}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")
