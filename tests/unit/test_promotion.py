"""The promotion gate: a pure, paired comparison on the same held-out items."""

from __future__ import annotations

import json

import pytest

from tuneloop.errors import TuneloopError
from tuneloop.gate.decide import Decision, decide
from tuneloop.specs import GateSpec as _GateSpec

N = 10


def GateSpec(**kw) -> _GateSpec:
    """The point-estimate gate (no bootstrap): these tables test the checks themselves.

    The interval gate has its own tests in test_gate_intervals.py."""
    return _GateSpec(**({"bootstrap_resamples": 0} | kw))


def items(metric: str, hits: int, n: int = N) -> dict[str, dict[str, float]]:
    """Per-item scores: the first `hits` of `n` items score 1, the rest 0 (mean = hits / n)."""
    return {metric: {f"q{i}": 1.0 if i < hits else 0.0 for i in range(n)}}


def agg(metric: str, hits: int, n: int = N, **extra: float) -> dict[str, float]:
    """Aggregate metrics as an evaluation reports them (every metric present)."""
    return {"exact_match": hits / n, "token_f1": hits / n, metric: hits / n, **extra}


# (candidate hits, incumbent hits, gate kwargs, candidate extra metrics, expect promote, reason fragments)
CASES = [
    pytest.param(8, 5, {}, {}, True, ["promoted", "exact_match", "0.8000", "0.5000", "margin 0.02", "10 items"],
                 id="clearly-better-promotes"),
    pytest.param(6, 5, {"margin": 0.2}, {}, False,
                 ["rejected", "exact_match", "0.6000", "0.5000", "0.1", ">= 0.2"],
                 id="better-but-below-margin-rejects"),
    pytest.param(5, 5, {}, {}, False, ["rejected", "exact_match", "0.5000", "0.5000", ">= 0.02"],
                 id="equal-rejects"),
    pytest.param(3, 5, {}, {}, False, ["rejected", "exact_match", "0.3000", "0.5000", "-0.2"],
                 id="worse-rejects"),
    pytest.param(6, 3, {"min_metrics": {"exact_match": 0.0, "token_f1": 0.7}}, {"token_f1": 0.65}, False,
                 ["rejected", "token_f1 minimum", "0.65", ">= 0.7"],
                 id="meets-margin-below-absolute-floor-rejects"),
    pytest.param(6, 3, {"max_perplexity": 20.0}, {"perplexity": 35.5}, False,
                 ["rejected", "perplexity maximum", "35.5", "<= 20.0"],
                 id="perplexity-exceeded-rejects"),
    pytest.param(6, 3, {"max_perplexity": 20.0}, {"perplexity": 12.0}, True, ["promoted"],
                 id="perplexity-within-limit-promotes"),
    pytest.param(5, 5, {"margin": 0.0}, {}, True, ["promoted", "+0.0000", "margin 0.0"],
                 id="margin-zero-equal-promotes"),
    pytest.param(7, 5, {"margin": 0.2}, {}, True, ["promoted", "+0.2000"],
                 id="gain-exactly-margin-promotes-despite-float-error"),
]


@pytest.mark.parametrize("metric", ["exact_match", "token_f1"])
@pytest.mark.parametrize("cand_hits, inc_hits, gate_kw, extra, promote, fragments", CASES)
def test_decide_table(metric, cand_hits, inc_hits, gate_kw, extra, promote, fragments):
    gate = GateSpec(metric=metric, **gate_kw)
    d = decide(agg(metric, cand_hits, **extra), items(metric, cand_hits),
               agg(metric, inc_hits), items(metric, inc_hits), gate)

    assert isinstance(d, Decision)
    assert d.promote is promote
    assert d.metric == metric
    assert d.items == N
    assert d.candidate == pytest.approx(cand_hits / N)
    assert d.incumbent == pytest.approx(inc_hits / N)
    assert d.delta == pytest.approx((cand_hits - inc_hits) / N)
    for frag in fragments:
        frag = frag.replace("exact_match", metric) if "minimum" not in frag else frag
        assert frag in d.reason, (frag, d.reason)

    # Every check carries a boolean `ok`, and the outcome is exactly "all ok".
    assert d.checks, "a decision always lists at least the gain check"
    assert all(isinstance(c["ok"], bool) for c in d.checks)
    assert all(c["ok"] for c in d.checks) is promote
    assert d.checks[0]["check"] == f"{metric} gain over champion"
    # Every failed check is named in the reason.
    for c in d.checks:
        if not c["ok"]:
            assert c["check"] in d.reason
    # Checks requested by the gate are present.
    names = {c["check"] for c in d.checks}
    for floor in gate.min_metrics:
        assert f"{floor} minimum" in names
    assert ("perplexity maximum" in names) is (gate.max_perplexity is not None)


def test_margin_failure_reason_names_metric_values_and_margin():
    gate = GateSpec(metric="exact_match", margin=0.2)
    d = decide(agg("exact_match", 6), items("exact_match", 6), agg("exact_match", 5), items("exact_match", 5),
               gate, incumbent_label="base model")
    assert not d.promote
    assert "exact_match gain over base model is 0.1, needs >= 0.2" in d.reason
    assert "exact_match 0.6000 vs base model 0.5000, difference +0.1000 on the same 10 items" in d.reason


def test_missing_min_metric_counts_as_failure():
    gate = GateSpec(min_metrics={"bleu": 0.1})
    d = decide(agg("exact_match", 8), items("exact_match", 8), agg("exact_match", 2), items("exact_match", 2), gate)
    assert not d.promote
    bleu = next(c for c in d.checks if c["check"] == "bleu minimum")
    assert bleu["ok"] is False and bleu["value"] is None
    assert "bleu minimum is missing" in d.reason
    json.dumps(d.to_json(), allow_nan=False)  # strict JSON: no NaN written to status.json


def test_missing_perplexity_fails_a_perplexity_gate():
    gate = GateSpec(max_perplexity=50.0)
    d = decide(agg("exact_match", 8), items("exact_match", 8), agg("exact_match", 2), items("exact_match", 2), gate)
    assert not d.promote
    assert "perplexity maximum" in d.reason


def test_different_item_sets_raise():
    cand = {"exact_match": {"q0": 1.0, "q1": 1.0, "q2": 0.0}}
    inc = {"exact_match": {"q0": 1.0, "q1": 0.0, "q9": 0.0}}
    with pytest.raises(TuneloopError, match="different items"):
        decide({"exact_match": 0.67}, cand, {"exact_match": 0.33}, inc, GateSpec())


def test_subset_of_items_raises():
    cand = items("exact_match", 5, n=10)
    inc = items("exact_match", 5, n=9)
    with pytest.raises(TuneloopError, match="different items"):
        decide({}, cand, {}, inc, GateSpec())


@pytest.mark.parametrize("side", ["candidate", "incumbent"])
def test_missing_per_item_metric_raises(side):
    good = items("exact_match", 5)
    other = items("token_f1", 5)  # scored, but not with the gate metric
    cand, inc = (other, good) if side == "candidate" else (good, other)
    with pytest.raises(TuneloopError, match="exact_match.*missing"):
        decide({"exact_match": 0.5}, cand, {"exact_match": 0.5}, inc, GateSpec(metric="exact_match"))


def test_empty_items_raise():
    with pytest.raises(TuneloopError, match="no held-out items"):
        decide({}, {"exact_match": {}}, {}, {"exact_match": {}}, GateSpec())


def test_decision_uses_paired_per_item_means_not_reported_aggregates():
    # The aggregate `metrics` claim the candidate is far better, but on the shared
    # per-item scores it is worse: the per-item mean must decide.
    cand_items = {"exact_match": {"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.0}}   # mean 0.25
    inc_items = {"exact_match": {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}}    # mean 0.50
    d = decide({"exact_match": 0.99}, cand_items, {"exact_match": 0.01}, inc_items, GateSpec(margin=0.0))
    assert not d.promote
    assert d.candidate == pytest.approx(0.25)
    assert d.incumbent == pytest.approx(0.5)
    assert d.delta == pytest.approx(-0.25)
    assert d.items == 4

    # ...and the other way around: aggregates say worse, per-item says better.
    d2 = decide({"exact_match": 0.0}, inc_items, {"exact_match": 1.0}, cand_items, GateSpec(margin=0.1))
    assert d2.promote
    assert d2.candidate == pytest.approx(0.5) and d2.incumbent == pytest.approx(0.25)


def test_to_json_round_trips():
    gate = GateSpec(metric="token_f1", margin=0.05, min_metrics={"exact_match": 0.1}, max_perplexity=30.0)
    d = decide({"token_f1": 0.7, "exact_match": 0.4, "perplexity": 10.0}, items("token_f1", 7),
               {"token_f1": 0.5}, items("token_f1", 5), gate)
    data = d.to_json()
    assert isinstance(data, dict)
    back = json.loads(json.dumps(data))
    assert back == data
    assert Decision(**back) == d
    assert set(back) == {"promote", "reason", "metric", "candidate", "incumbent", "delta", "items", "checks",
                         "interval", "guarded"}
    assert all(isinstance(c["ok"], bool) for c in back["checks"])


def test_decide_does_not_mutate_inputs():
    cand_m, cand_i = agg("exact_match", 8), items("exact_match", 8)
    inc_m, inc_i = agg("exact_match", 5), items("exact_match", 5)
    snapshot = json.dumps([cand_m, cand_i, inc_m, inc_i], sort_keys=True)
    decide(cand_m, cand_i, inc_m, inc_i, GateSpec())
    assert json.dumps([cand_m, cand_i, inc_m, inc_i], sort_keys=True) == snapshot
