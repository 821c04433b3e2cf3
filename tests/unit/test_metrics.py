"""Offline tests for the metric modules shipped in tuneloop.evals.metrics.

tests/conftest.py points HF_HOME and the evaluate caches at a temporary folder
before evaluate is imported: loading a module copies it into that cache.
"""

import os
from pathlib import Path

import pytest

from tuneloop.evals import scoring
from tuneloop.evals.scoring import METRIC_NAMES, load_metric, metrics_dir, score_texts


def test_every_metric_module_ships_and_loads_by_path():
    for name in METRIC_NAMES:
        assert (metrics_dir() / name / f"{name}.py").is_file()
        metric = load_metric(name)
        assert metric.info.description
        assert set(metric.info.features) == {"predictions", "references"}
    assert load_metric("bleu") is load_metric("bleu")  # cached per process


def test_metric_modules_share_their_info_and_still_load_offline():
    """The modules import their MetricInfo from tuneloop.evals.scoring instead of repeating it; evaluate's
    import check sees `tuneloop` as a library to import, and the copied module loads with the hub offline."""
    from evaluate.loading import get_imports

    assert os.environ["HF_EVALUATE_OFFLINE"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"
    for name in METRIC_NAMES:
        path = metrics_dir() / name / f"{name}.py"
        assert ("library", "tuneloop", "tuneloop", None) in get_imports(str(path))
        assert "datasets.Features(" not in path.read_text()
        metric = load_metric(name)
        assert set(metric.info.features) == {"predictions", "references"}
        assert name in metric.compute(predictions=["a b"], references=["a b"])


def test_exact_match_normalises_whitespace_and_case():
    agg, per = score_texts(
        ["  Hello   World ", "Straße", "foo", "a b"],
        ["hello world", "STRASSE", "bar", "ab"],
        names=("exact_match",),
    )
    # casefold maps ß -> ss, so "Straße" matches "STRASSE".
    assert per["exact_match"] == [1.0, 1.0, 0.0, 0.0]
    assert agg["exact_match"] == pytest.approx(0.5)


def test_token_f1_partial_overlap():
    # pred tokens [cat, sat, on, mat] vs ref [cat, sat]: P=2/4, R=2/2 -> F1=2/3.
    agg, per = score_texts(
        ["The cat sat on the mat.", "", "", "x"],
        ["a cat sat", "", "something", ""],
        names=("token_f1",),
    )
    assert per["token_f1"] == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert agg["token_f1"] == pytest.approx((2 / 3 + 1.0) / 4)


def test_bleu_identical_and_disjoint():
    same = "the quick brown fox jumps over the lazy dog"
    agg, per = score_texts([same, same], [same, same], names=("bleu",))
    assert agg["bleu"] == pytest.approx(1.0)
    assert "bleu" not in per  # corpus-level only
    agg, _ = score_texts(["alpha beta gamma delta"], ["one two three four"], names=("bleu",))
    assert agg["bleu"] == pytest.approx(0.0, abs=1e-6)


def test_rouge_l_hand_computed():
    # pred [the cat sat on mat] (5), ref [the cat is on the mat] (6), LCS = the cat on mat (4)
    # F = 2*LCS / (5 + 6) = 8/11.
    agg, per = score_texts(
        ["the cat sat on mat", "你好", "你好"],
        ["the cat is on the mat", "你好", "再见"],
        names=("rouge_l",),
    )
    # Non-ASCII text tokenizes to nothing: equal raw strings -> 1.0, otherwise 0.0.
    assert per["rouge_l"] == pytest.approx([8 / 11, 1.0, 0.0])
    assert agg["rouge_l"] == pytest.approx((8 / 11 + 1.0) / 3)


def test_empty_inputs_score_zero():
    agg, per = score_texts([], [])
    assert agg == {name: 0.0 for name in METRIC_NAMES}
    assert per == {"exact_match": [], "token_f1": [], "rouge_l": []}


def test_all_metrics_together():
    agg, per = score_texts(["Paris"], ["paris"])
    assert set(agg) == set(METRIC_NAMES)
    assert agg["exact_match"] == 1.0 and agg["token_f1"] == 1.0 and agg["rouge_l"] == 1.0
    assert all(0.0 <= v <= 1.0 for v in agg.values())


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"2 vs 1"):
        score_texts(["a", "b"], ["a"])


def test_unknown_metric_is_rejected_with_allowed_names():
    with pytest.raises(ValueError) as exc:
        load_metric("accuracy")
    msg = str(exc.value)
    assert "'accuracy'" in msg
    assert all(name in msg for name in METRIC_NAMES)
    with pytest.raises(ValueError, match="accuracy"):
        score_texts(["a"], ["a"], names=("accuracy",))


def test_scoring_does_not_import_prefect():
    source = Path(scoring.__file__).read_text()
    assert "import prefect" not in source and "from prefect" not in source


def test_modules_cache_went_to_tmp():
    load_metric("exact_match")
    import evaluate

    assert Path(evaluate.config.HF_MODULES_CACHE).is_relative_to(os.environ["HF_HOME"])
