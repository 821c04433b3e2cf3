"""One list of metric names (tuneloop.evals.scoring.METRIC_NAMES); every other list derives from it."""

from __future__ import annotations

import typing

from tuneloop.evals.scoring import METRIC_NAMES, PAIRED_METRICS, REPORTED_METRICS, score_texts
from tuneloop.specs import GateSpec


def test_the_paired_metrics_are_exactly_those_scored_per_item():
    _, per_item = score_texts(["a b"], ["a c"], METRIC_NAMES)
    assert tuple(per_item) == PAIRED_METRICS


def test_the_specs_and_reports_take_their_names_from_the_one_list():
    assert typing.get_args(GateSpec.model_fields["metric"].annotation) == PAIRED_METRICS
    GateSpec(min_metrics={name: 0.0 for name in METRIC_NAMES})
    assert REPORTED_METRICS[:-1] == METRIC_NAMES and REPORTED_METRICS[-1] == "perplexity"
