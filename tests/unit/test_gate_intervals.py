"""The interval gate: a clear win promotes, a gain inside the noise does not, forgetting is refused."""

from __future__ import annotations

import random

import pytest

from tuneloop.gate.decide import decide, paired_bootstrap
from tuneloop.specs import GateSpec


def scores(n: int, p: float, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    return {f"q{i}": 1.0 if rng.random() < p else 0.0 for i in range(n)}


def wrap(items: dict[str, float]) -> tuple[dict, dict]:
    return {"exact_match": sum(items.values()) / len(items)}, {"exact_match": items}


def test_clear_win_promotes():
    cand, inc = scores(200, 0.85, 1), scores(200, 0.55, 2)
    d = decide(*wrap(cand), *wrap(inc), GateSpec())
    assert d.promote, d.reason
    assert d.interval["low"] > 0.02 and d.interval["low"] < d.delta < d.interval["high"]
    assert "95% CI" in d.reason


def test_gain_inside_the_noise_is_rejected():
    # 60 items, candidate 0.05 better on average but item-level noise is large
    rng = random.Random(3)
    inc = {f"q{i}": float(rng.random() < 0.5) for i in range(60)}
    cand = dict(inc)
    flips = [k for k, v in inc.items() if v == 0.0][:6] + [k for k, v in inc.items() if v == 1.0][:3]
    for k in flips:
        cand[k] = 1.0 - cand[k]
    d = decide(*wrap(cand), *wrap(inc), GateSpec())
    assert d.delta == pytest.approx(3 / 60)
    assert d.delta >= 0.02  # the point estimate alone would have promoted
    assert not d.promote and d.interval["low"] < 0.02
    assert "lower 95% bound" in d.reason
    assert decide(*wrap(cand), *wrap(inc), GateSpec(bootstrap_resamples=0)).promote  # point estimate would


def test_task_win_with_forgetting_is_rejected():
    cand, inc = scores(200, 0.9, 4), scores(200, 0.5, 5)
    general_inc = scores(100, 0.6, 6)
    general_cand = {k: (0.0 if i % 5 == 0 else v) for i, (k, v) in enumerate(general_inc.items())}  # forgot ~12%
    gate = GateSpec(guarded={"arc_easy": 0.02})
    d = decide(*wrap(cand), *wrap(inc), gate, guarded={"arc_easy": (general_cand, general_inc)})
    assert not d.promote
    assert d.guarded["arc_easy"]["drop"] > 0.02 and d.guarded["arc_easy"]["ok"] is False
    assert "arc_easy drop vs champion, lower 95% bound" in d.reason
    assert d.guarded["arc_easy"]["interval"]["low"] > 0.02  # beyond the tolerance with 95% confidence


def test_one_changed_answer_on_a_small_benchmark_is_not_forgetting():
    """20 items, one answer lost: a 0.05 point drop, over the 0.02 tolerance, but well inside the noise."""
    cand, inc = scores(200, 0.9, 4), scores(200, 0.5, 5)
    general_inc = {f"g{i}": float(i % 2 == 0) for i in range(20)}
    general_cand = dict(general_inc, g0=0.0)
    gate = GateSpec(guarded={"arc_easy": 0.02})
    d = decide(*wrap(cand), *wrap(inc), gate, guarded={"arc_easy": (general_cand, general_inc)})
    assert d.promote and d.guarded["arc_easy"]["drop"] == pytest.approx(0.05), d.reason
    point = decide(*wrap(cand), *wrap(inc), GateSpec(guarded={"arc_easy": 0.02}, bootstrap_resamples=0),
                   guarded={"arc_easy": (general_cand, general_inc)})
    assert not point.promote  # the point estimate alone would call it forgetting
    lost = dict(general_inc, **{f"g{i}": 0.0 for i in range(0, 20, 2)[:6]})  # six of ten right answers lost
    assert not decide(*wrap(cand), *wrap(inc), gate, guarded={"arc_easy": (lost, general_inc)}).promote
    # the same task win without the regression is promoted
    ok = decide(*wrap(cand), *wrap(inc), gate, guarded={"arc_easy": (general_inc, general_inc)})
    assert ok.promote and ok.guarded["arc_easy"]["drop"] == 0


def test_small_regression_within_tolerance_passes():
    cand, inc = scores(200, 0.9, 7), scores(200, 0.5, 8)
    general = scores(100, 0.6, 9)
    slightly_worse = dict(general)
    slightly_worse[next(k for k, v in general.items() if v == 1.0)] = 0.0  # -0.01
    d = decide(*wrap(cand), *wrap(inc), GateSpec(default_tolerance=0.02), guarded={"piqa": (slightly_worse, general)})
    assert d.promote and d.guarded["piqa"]["drop"] == pytest.approx(0.01)


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    cand, inc = scores(150, 0.7, 10), scores(150, 0.6, 11)
    a = paired_bootstrap(cand, inc, seed=0)
    assert a == paired_bootstrap(cand, inc, seed=0)
    mean, low, high = a
    assert low < mean < high and high - low < 0.3
    same = paired_bootstrap(inc, inc)
    assert same == (0.0, 0.0, 0.0)


def test_guarded_items_must_match():
    from tuneloop.errors import TuneloopError

    cand, inc = scores(50, 0.9, 12), scores(50, 0.5, 13)
    with pytest.raises(TuneloopError, match="same items"):
        decide(*wrap(cand), *wrap(inc), GateSpec(), guarded={"boolq": ({"a": 1.0}, {"b": 1.0})})
