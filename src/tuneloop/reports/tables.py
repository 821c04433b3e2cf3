"""Metric tables for terminals and Markdown, and the order metrics are listed in by every report."""

from __future__ import annotations

from tuneloop.evals.scoring import REPORTED_METRICS

METRIC_ORDER = REPORTED_METRICS  # the held-out metrics, then perplexity (not a 0..1 score)


def metric_names(*columns: dict) -> list[str]:
    """The metrics present in any column: known ones in METRIC_ORDER, then any others by name."""
    present = set().union(*(c.keys() for c in columns))
    return [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER))


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
