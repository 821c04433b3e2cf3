"""Score predictions against references with the metric modules shipped in this package.

The modules live under ``metrics/`` and are loaded by path, because
``evaluate.load("exact_match")`` would try to download from the Hub. Kept free of
prefect so it can be used (and tested) outside a flow.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Sequence

METRIC_NAMES = ("exact_match", "token_f1", "bleu", "rouge_l")
"""The text metrics, in report order: each is a module under ``metrics/``. The one list of metric names;
the others below (and the specs' and reports' lists) derive from it."""
PAIRED_METRICS = tuple(m for m in METRIC_NAMES if m != "bleu")
"""Those scored per item, so the gate can pair candidate and champion item by item (BLEU is corpus-level)."""
REPORTED_METRICS = (*METRIC_NAMES, "perplexity")
"""What an evaluation reports: the text metrics and the held-out perplexity (`tuneloop.evals.run`)."""


def metrics_dir() -> pathlib.Path:
    """Folder holding one ``<name>/<name>.py`` module per metric (package data)."""
    return pathlib.Path(__file__).resolve().parent / "metrics"


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """Load a shipped metric by path (offline); cached since loading copies the module into the HF cache."""
    if name not in METRIC_NAMES:
        raise ValueError(
            f"unknown metric {name!r}; allowed: {', '.join(METRIC_NAMES)}. "
            "Use one of those names (or add a module under tuneloop/evals/metrics/<name>/<name>.py)."
        )
    import evaluate  # deferred: importing evaluate is slow and reads HF_HOME at import time

    return evaluate.load(str(metrics_dir() / name))


def text_pair_info(description: str, citation: str, inputs_description: str, **extra):
    """The `evaluate.MetricInfo` every shipped metric shares (one prediction string, one reference string).

    Here, not in each module, so the four modules under ``metrics/`` do not repeat it; they import it
    by package name, which evaluate's import check accepts when tuneloop is importable.
    """
    import datasets
    import evaluate

    features = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})
    return evaluate.MetricInfo(description=description, citation=citation, inputs_description=inputs_description,
                               features=features, **extra)


def mean_or_zero(values: Sequence[float]) -> float:
    """A metric's aggregate over its per-item scores; 0.0 when there are no items."""
    return sum(values) / len(values) if values else 0.0


def score_texts(
    predictions: list[str],
    references: list[str],
    names: Sequence[str] = METRIC_NAMES,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Return (aggregate score by metric, per-item scores by metric where the metric has them)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} vs {len(references)}; "
            "pass exactly one reference per prediction."
        )
    aggregates: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    for name in names:
        result = load_metric(name).compute(predictions=list(predictions), references=list(references))
        aggregates[name] = float(result[name])
        if "per_item" in result:
            per_item[name] = [float(x) for x in result["per_item"]]
    return aggregates, per_item
