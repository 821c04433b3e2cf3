"""The report as Markdown: what `report.md` holds and the Prefect UI shows as the run's artifact."""

from __future__ import annotations

from tuneloop.reports.summary import RetrainSummary
from tuneloop.reports.view import (bench_metric, check_value, ci_text, confidence, finite, fmt, items_compared,
                                   judge_delta, labels, metric_rows, reason, signed, verdict)


def _md(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]], align: str) -> str:
    sep = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join(["| " + " | ".join(head) + " |", sep] + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def render_markdown(summary: RetrainSummary) -> str:
    """Verdict, metrics with intervals, gate checks, benchmarks, judge and training, as Markdown."""
    s = summary
    inc_label, cand_label = labels(s)
    out = [f"# {_md(cand_label)} vs {_md(inc_label)}: {verdict(s)[0]}\n", f"{reason(s)}\n"]
    meta = []
    if s.created_at:
        meta.append(f"- created {s.created_at}")
    if s.dataset_version:
        split_text = ", ".join(f"{k} {v}" for k, v in s.dataset_splits.items())
        meta.append(f"- dataset `{s.dataset_version[:16]}`" + (f": {split_text}" if split_text else ""))
    if meta:
        out.append("\n".join(meta) + "\n")

    rows = metric_rows(s)
    n = items_compared(s)
    out.append(f"## Held-out metrics{f' ({n} items, same for both)' if n is not None else ''}\n")
    if rows:
        out.append(_md_table(
            ["metric", _md(inc_label), _md(cand_label), "delta", f"{confidence(s)} CI of delta"],
            [[r.metric + (" (gate)" if r.gate else ""), fmt(r.incumbent), fmt(r.candidate),
              signed(r.delta), ci_text(r.low, r.high)] for r in rows], "lrrrr"))
    else:
        out.append("No metrics recorded.\n")

    out.append("## Gate\n")
    checks = s.decision.checks if s.decision else []
    if checks:
        out.append(_md_table(["check", "value", "need", "result"],
                             [[_md(c.check), check_value(c.value), _md(c.need), "ok" if c.ok else "FAILED"]
                              for c in checks], "lrll"))
    else:
        out.append("No gate checks recorded.\n")

    if s.benchmarks:
        out.append("## Benchmarks (regression guard)\n")
        body = []
        for name, b in sorted(s.benchmarks.items()):
            m = bench_metric(s, b)
            body.append([_md(name), _md(m or "—"), fmt(b.incumbent.get(m)), fmt(b.candidate.get(m)), signed(b.delta),
                         ci_text(b.low, b.high), fmt(b.tolerance, ".4g"), "ok" if b.ok else "FAILED"])
        out.append(_md_table(["benchmark", "metric", _md(inc_label), _md(cand_label), "delta", "CI",
                              "tolerance", "result"], body, "llrrrrrl"))

    if s.judge:
        out.append("## LLM judge\n")
        body = [[_md(rubric), fmt(j.incumbent), fmt(j.candidate), signed(judge_delta(j.candidate, j.incumbent)),
                 str(j.n_failed)] for rubric, j in sorted(s.judge.items())]
        out.append(_md_table(["rubric", _md(inc_label), _md(cand_label), "delta", "failed judgements"],
                             body, "lrrrr"))

    out.append("## Training\n")
    t = s.training
    if t:
        lines = []
        if t.steps is not None:
            lines.append(f"- {t.steps} steps, final loss {fmt(t.final_loss)}")
        if finite(t.best_val_loss) is not None:
            lines.append(f"- best validation loss {fmt(t.best_val_loss)} at step "
                         f"{t.best_step if t.best_step is not None else '—'}")
        if finite(t.tokens_per_s) is not None or finite(t.seconds) is not None:
            lines.append(f"- {fmt(t.tokens_per_s, ',.0f')} tokens/s, {fmt(t.seconds, '.1f')} s")
        lines.append(f"- {len(t.history)} logged steps in the history")
        out.append("\n".join(lines) + "\n")
    else:
        out.append("No training information recorded.\n")
    return "\n".join(out)
