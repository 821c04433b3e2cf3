"""Human-readable summaries: the metrics table and the decision, as Markdown."""

from __future__ import annotations

METRIC_ORDER = ("exact_match", "token_f1", "bleu", "rouge_l", "perplexity")


def metrics_table(columns: dict[str, dict[str, float]]) -> str:
    """A Markdown table, one row per metric, one column per model."""
    names = list(columns)
    head = "| metric | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names) + "\n"
    rows = []
    for m in METRIC_ORDER:
        if any(m in c for c in columns.values()):
            cells = [f"{columns[n][m]:.4f}" if m in columns[n] else "" for n in names]
            rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def text_table(columns: dict[str, dict[str, float]]) -> str:
    """The same table for a terminal."""
    names = list(columns)
    width = max(12, *(len(n) + 2 for n in names))
    out = [f"{'metric':<13}" + "".join(f"{n:>{width}}" for n in names)]
    for m in METRIC_ORDER:
        if any(m in c for c in columns.values()):
            out.append(f"{m:<13}" + "".join(
                f"{columns[n][m]:>{width}.4f}" if m in columns[n] else " " * width for n in names))
    return "\n".join(out)


def retrain_markdown(summary: dict) -> str:
    d = summary["decision"]
    verdict = "PROMOTED" if d["promote"] else "REJECTED"
    checks = "\n".join(f"| {c['check']} | {'missing' if c['value'] is None else format(c['value'], '.4g')} | {c['need']} | {'ok' if c['ok'] else 'FAILED'} |"
                       for c in d["checks"])
    t = summary["training"]
    return (
        f"# retrain {summary['version']}: {verdict}\n\n{d['reason']}\n\n"
        f"## Held-out metrics ({d['items']} items, same for both)\n\n"
        + metrics_table({summary["incumbent_label"]: summary["incumbent_metrics"],
                         summary["version"]: summary["candidate_metrics"]})
        + f"\n## Gate\n\n| check | value | need | result |\n|---|---:|---|---|\n{checks}\n"
        f"\n## Training\n\n- dataset `{summary['dataset_version'][:16]}`: {summary['dataset_splits']}\n"
        f"- {t['steps']} steps, final loss {t['final_loss']:.4f}, best validation loss "
        f"{t['best_val_loss'] if t['best_val_loss'] is None else round(t['best_val_loss'], 4)} at step {t['best_step']}\n"
        f"- {t['tokens_per_s']:,.0f} tokens/s, {t['seconds']:.1f} s\n"
    )
