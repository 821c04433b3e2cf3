"""Evaluation reports: JSON, Markdown and a self-contained HTML page with inline SVG charts."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tuneloop.registry import LocalRegistry
from tuneloop.reports.charts import loss_chart_svg, metrics_chart_svg
from tuneloop.reports.html import render_html
from tuneloop.reports.markdown import render_markdown
from tuneloop.reports.summary import RetrainSummary, summary_from_registry
from tuneloop.reports.write import render_json, strict_json, write_reports

S = RetrainSummary.from_json  # the fixtures below are summaries as stored (evaluation.json)

SCRIPT = "<script>alert(1)</script>"


def full_summary() -> dict:
    """A realistic summary: 30 logged steps, 5 metrics, intervals, 2 benchmarks, a judge rubric, items."""
    history = []
    for step in range(1, 31):
        entry = {"step": step, "loss": round(2.4 * math.exp(-step / 12) + 0.55 + 0.04 * math.sin(step * 1.7), 4)}
        if step % 5 == 0:
            entry["val_loss"] = round(2.2 * math.exp(-min(step, 25) / 14) + 0.7 + (0.04 if step == 30 else 0.0), 4)
        history.append(entry)
    return {
        "version": "v2",
        "incumbent_label": "champion v1",
        "created_at": "2025-06-01T12:00:00+00:00",
        "dataset_version": "3f2a9c0d1e7b4a6f" + "0" * 48,
        "dataset_splits": {"train": 480, "validation": 60, "eval": 60},
        "decision": {
            "promote": True, "metric": "exact_match", "candidate": 0.45, "incumbent": 0.40, "delta": 0.05,
            "items": 60,
            "reason": "promoted: exact_match 0.4500 vs champion v1 0.4000 (+0.0500, margin 0.02) on the same 60 items",
            "checks": [
                {"check": "exact_match gain over champion v1", "value": 0.05, "need": ">= 0.02", "ok": True},
                {"check": "exact_match CI lower bound", "value": 0.0167, "need": "> 0", "ok": True},
                {"check": "token_f1 minimum", "value": 0.62, "need": ">= 0.5", "ok": True},
                {"check": "perplexity maximum", "value": 8.91, "need": "<= 20", "ok": True},
            ],
            "interval": {"low": 0.0167, "high": 0.0833, "confidence": 0.95},
        },
        "candidate_metrics": {"exact_match": 0.45, "token_f1": 0.62, "bleu": 0.281, "rouge_l": 0.574,
                              "perplexity": 8.91},
        "incumbent_metrics": {"exact_match": 0.40, "token_f1": 0.585, "bleu": 0.296, "rouge_l": 0.551,
                              "perplexity": 9.73},
        "intervals": {
            "exact_match": {"delta": 0.05, "low": 0.0167, "high": 0.0833},
            "token_f1": {"delta": 0.035, "low": 0.008, "high": 0.061},
            "bleu": {"delta": -0.015, "low": -0.041, "high": 0.012},
            "rouge_l": {"delta": 0.023, "low": -0.004, "high": 0.05},
        },
        "benchmarks": {
            "arithmetic": {"candidate": {"exact_match": 0.71}, "incumbent": {"exact_match": 0.73}, "delta": -0.02,
                           "low": -0.06, "high": 0.02, "tolerance": 0.05, "ok": True},
            "capitals": {"candidate": {"exact_match": 0.55}, "incumbent": {"exact_match": 0.68}, "delta": -0.13,
                         "low": -0.2, "high": -0.07, "tolerance": 0.05, "ok": False},
        },
        "judge": {"helpfulness": {"candidate": 3.9, "incumbent": 3.6, "n_failed": 1}},
        "training": {"steps": 30, "final_loss": history[-1]["loss"], "best_val_loss": history[24]["val_loss"], "best_step": 25,
                     "tokens_per_s": 15234.7, "seconds": 41.3, "history": history},
        "items": [
            {"id": "q-001", "prompt": "What is the capital of France?", "reference": "Paris",
             "candidate": "Paris", "incumbent": "Paris, France"},
            {"id": "q-002", "prompt": SCRIPT, "reference": "a & b < c", "candidate": "<b>bold</b>",
             "incumbent": "\"quoted\" 'text'"},
            {"id": "q-003", "prompt": "Summarise:\nline one\nline two | with a pipe", "reference": "two lines",
             "candidate": "two lines", "incumbent": "one line"},
        ],
    }


def minimal_summary() -> dict:
    return {"version": "v1", "incumbent_label": "base",
            "decision": {"promote": False, "reason": "rejected: exact_match gain over base is -0.01, needs >= 0.02",
                         "metric": "exact_match", "candidate": 0.1, "incumbent": 0.11, "delta": -0.01, "items": 4,
                         "checks": [{"check": "exact_match gain over base", "value": -0.01, "need": ">= 0.02",
                                     "ok": False}], "interval": None},
            "candidate_metrics": {"exact_match": 0.1}, "incumbent_metrics": {"exact_match": 0.11},
            "intervals": {}, "benchmarks": {}, "judge": {},
            "training": {"steps": 0, "final_loss": float("nan"), "best_val_loss": None, "best_step": 0,
                         "tokens_per_s": 0.0, "seconds": 0.0, "history": []}}


class StrictChecker(HTMLParser):
    """Every non-void element closed, in order."""

    VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "source", "wbr"}
    SELF_CLOSED_OK = {"rect", "line", "circle", "polyline", "path"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID | self.SELF_CLOSED_OK:
            self.errors.append(f"self-closed <{tag}/>")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> StrictChecker:
    p = StrictChecker()
    p.feed(page)
    p.close()
    assert not p.errors, p.errors
    assert not p.stack, f"unclosed: {p.stack}"
    return p


# -- JSON ----------------------------------------------------------------------
def test_json_round_trips_and_is_stable():
    s = full_summary()
    text = render_json(S(s))
    assert json.loads(text) == s
    assert render_json(S(json.loads(text))) == text
    keys = list(json.loads(text))
    assert keys == sorted(keys)


def test_json_is_strict_nan_and_inf_become_null():
    s = minimal_summary()
    s["candidate_metrics"]["perplexity"] = float("inf")
    s["incumbent_metrics"]["perplexity"] = float("-inf")
    text = render_json(S(s))
    for bad in ("NaN", "Infinity"):
        assert bad not in text
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict constant {c}"))
    assert back["training"]["final_loss"] is None
    assert back["candidate_metrics"]["perplexity"] is None
    assert back["incumbent_metrics"]["perplexity"] is None


def test_json_handles_paths_and_tuples():
    back = json.loads(strict_json({"version": "v1", "run_dir": Path("/tmp/x"), "pair": (1, 2)}))
    assert back == {"version": "v1", "run_dir": "/tmp/x", "pair": [1, 2]}


# -- Markdown ------------------------------------------------------------------
def test_markdown_has_every_section():
    md = render_markdown(S(full_summary()))
    assert md.startswith("# v2 vs champion v1: PROMOTED")
    assert "promoted: exact_match 0.4500" in md
    for heading in ("## Held-out metrics (60 items, same for both)", "## Gate", "## Benchmarks", "## LLM judge",
                    "## Training"):
        assert heading in md
    assert "| exact_match (gate) | 0.4000 | 0.4500 | +0.0500 | [+0.0167, +0.0833] |" in md
    assert "| bleu | 0.2960 | 0.2810 | -0.0150 | [-0.0410, +0.0120] |" in md
    assert "| perplexity | 9.7300 | 8.9100 | -0.8200 | — |" in md
    assert "| capitals | exact_match | 0.6800 | 0.5500 | -0.1300 | [-0.2000, -0.0700] | 0.05 | FAILED |" in md
    assert "| helpfulness | 3.6000 | 3.9000 | +0.3000 | 1 |" in md
    assert "best validation loss 1.0689 at step 25" in md
    assert "15,235 tokens/s" in md


def test_markdown_of_a_minimal_summary():
    md = render_markdown(S(minimal_summary()))
    assert "REJECTED" in md
    assert "## Benchmarks" not in md and "## LLM judge" not in md
    assert "| exact_match (gate) | 0.1100 | 0.1000 | -0.0100 | — |" in md
    assert "0 logged steps" in md


@pytest.mark.parametrize("summary", [{}, {"version": "v9"}, {"version": "v9", "decision": None, "training": None}])
def test_markdown_survives_missing_sections(summary):
    md = render_markdown(S(summary))
    assert "UNDECIDED" in md
    assert "No metrics recorded." in md and "No gate checks recorded." in md


def test_markdown_escapes_pipes_in_cells():
    s = minimal_summary()
    s["decision"]["checks"][0]["check"] = "a | b"
    assert "| a \\| b |" in render_markdown(S(s))


# -- HTML ----------------------------------------------------------------------
def test_html_is_well_formed_with_two_charts():
    page = render_html(S(full_summary()))
    parsed = parse(page)
    assert page.count("<svg") == 2
    assert parsed.tags.count("svg") == 2
    assert "champion vs challenger per metric with intervals" in page
    assert "training and validation loss by step" in page
    assert 'class="banner promoted"' in page and "PROMOTED" in page


def test_html_has_no_external_references():
    page = render_html(S(full_summary()))
    low = page.lower()
    for needle in ("src=", "href=http", "href=\"http", "@import", "<link", "url(http", "<script"):
        assert needle not in low, needle


def test_html_escapes_user_text():
    page = render_html(S(full_summary()))
    assert SCRIPT not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "a &amp; b &lt; c" in page
    parsed = parse(page)
    assert "script" not in parsed.tags
    assert SCRIPT in "".join(parsed.text)  # shown as text


def test_html_escapes_labels_in_charts_and_titles():
    s = full_summary()
    s["incumbent_label"] = "<img src=x onerror=alert(1)>"
    s["version"] = "v2<script>"
    page = render_html(S(s))
    assert "<img" not in page and "<script" not in page
    parse(page)


def test_html_rejected_banner_and_tables():
    s = full_summary()
    s["decision"]["promote"] = False
    s["decision"]["reason"] = "rejected: capitals regressed"
    page = render_html(S(s))
    assert 'class="banner rejected"' in page and "REJECTED" in page
    assert "rejected: capitals regressed" in page
    for text in ("Promotion gate", "Benchmarks (regression guard)", "LLM judge", "helpfulness", "capitals",
                 "Sample of held-out items", "q-003"):
        assert text in page
    assert page.count('class="fail"') >= 1  # the failed benchmark


def test_html_notes_perplexity_outside_the_chart():
    page = render_html(S(full_summary()))
    chart = metrics_chart_svg(S(full_summary()))
    assert "perplexity" not in chart
    assert "Not on the 0–1 scale" in page and "perplexity 9.730 → 8.910" in page


def test_metrics_chart_draws_bars_and_interval_whiskers():
    chart = metrics_chart_svg(S(full_summary()))
    bars = re.findall(r"<rect [^>]*><title>([^<]*)</title></rect>", chart)
    assert len(bars) == 8  # 4 metrics × 2 bars
    assert "champion v1 exact_match: 0.4000" in bars and "v2 exact_match: 0.4500" in bars
    assert chart.count('stroke="#0f172a" stroke-width="2"><line') == 4  # one whisker per interval
    assert "Δ -0.015 [-0.041, +0.012]" in chart  # negative delta shown


def test_minimal_summary_renders_everywhere():
    s = minimal_summary()
    page = render_html(S(s))
    parse(page)
    assert "no training history" in page
    assert 'class="banner rejected"' in page
    render_markdown(S(s))
    json.loads(render_json(S(s)))


@pytest.mark.parametrize("summary", [{}, {"version": "v3"}, {"version": "v3", "decision": None, "training": None,
                                                                "items": None, "intervals": None}])
def test_empty_summaries_render(summary):
    page = render_html(S(summary))
    parse(page)
    assert "UNDECIDED" in page
    assert "no training history" in page and "no 0–1 metrics to chart" in page


@pytest.mark.parametrize("history", [
    [{"step": 7, "loss": 1.25}],
    [{"step": 7, "loss": 1.25, "val_loss": 1.5}],
    [{"step": s, "loss": 0.5, "val_loss": 0.5} for s in range(1, 6)],
    [{"step": s, "loss": 1.0} for s in range(1, 4)] + [{"step": 4, "loss": float("nan")}],
    [{"step": 0, "loss": 0.0}, {"step": 0, "loss": 0.0}],
])
def test_loss_chart_degenerate_histories(history):
    s = {"training": {"best_step": 1, "history": history}}
    svg = loss_chart_svg(S(s))
    assert "<circle" in svg and "nan" not in svg.lower() and "inf" not in svg.lower()
    parse(svg)


def test_loss_chart_empty_history():
    assert "no training history" in loss_chart_svg(S({"training": {"history": []}}))
    assert "no training history" in loss_chart_svg(S({"training": {"history": [{"step": 1, "loss": None}]}}))


def test_loss_chart_has_two_series_legend_and_ticks():
    svg = loss_chart_svg(S(full_summary()))
    assert "training loss" in svg and "validation loss" in svg
    assert svg.count("<polyline") == 2
    assert ">step<" in svg and ">loss<" in svg
    assert "best validation @ step 25" in svg
    ticks = re.findall(r'text-anchor="middle" fill="#64748b" font-weight="normal">(\d+)</text>', svg)
    assert len(ticks) >= 3 and ticks[0] == "0" and ticks[-1] == "30"


def test_metrics_chart_all_equal_and_negative_values():
    s = {"version": "v2", "candidate_metrics": {"exact_match": 0.0, "token_f1": 0.0},
         "incumbent_metrics": {"exact_match": 0.0, "token_f1": 0.0},
         "intervals": {"exact_match": {"delta": 0.0, "low": -0.1, "high": 0.1}}}
    svg = metrics_chart_svg(S(s))
    parse(svg)
    assert "nan" not in svg.lower()
    s = {"version": "v2", "candidate_metrics": {"exact_match": 0.2}, "incumbent_metrics": {"exact_match": 0.6},
         "intervals": {"exact_match": {"delta": -0.4, "low": -0.55, "high": -0.25}}}
    svg = metrics_chart_svg(S(s))
    assert 'fill="#b91c1c"' in svg  # significant drop in red
    parse(svg)


def test_metrics_chart_with_only_one_side():
    s = {"version": "v1", "candidate_metrics": {"exact_match": 0.3}, "incumbent_metrics": {}}
    svg = metrics_chart_svg(S(s))
    assert "n/a" in svg
    parse(svg)


# -- files ---------------------------------------------------------------------
def test_write_reports_writes_three_files(tmp_path):
    paths = write_reports(S(full_summary()), tmp_path / "out")
    assert set(paths) == {"json", "markdown", "html"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json", "report.md"]
    assert json.loads(paths["json"].read_text())["version"] == "v2"
    assert paths["markdown"].read_text().startswith("# v2")
    assert paths["html"].read_text().startswith("<!DOCTYPE html>")


def test_write_reports_replaces_previous_files(tmp_path):
    write_reports(S(full_summary()), tmp_path)
    write_reports(S(minimal_summary()), tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["version"] == "v1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- the registry --------------------------------------------------------------
@pytest.fixture
def registry(tmp_path) -> LocalRegistry:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"fake" * 32)
    reg = LocalRegistry(tmp_path / "registry")
    s = full_summary()
    training = {k: v for k, v in s["training"].items() if k != "history"}
    reg.create_version(adapter, base_model="tuneloop/tiny-llama", dataset_version=s["dataset_version"],
                       parent_version=None, spec={}, metrics={"exact_match": 0.4, "token_f1": 0.585})
    reg.record_decision("v1", {"promote": True, "reason": "promoted: first", "checks": []})
    reg.create_version(adapter, base_model="tuneloop/tiny-llama", dataset_version=s["dataset_version"],
                       parent_version="v1", spec={}, metrics=s["candidate_metrics"],
                       extra={"training": training,
                              "incumbent": {"label": "champion v1", "metrics": s["incumbent_metrics"]},
                              "dataset": {"splits": s["dataset_splits"]}})
    return reg


def test_summary_from_registry_rebuilds_from_manifest_and_status(registry):
    decision = full_summary()["decision"]
    registry.record_decision("v2", decision)
    s = summary_from_registry(registry, "v2")
    assert s.version == "v2" and s.incumbent_label == "champion v1"
    assert s.candidate_metrics == full_summary()["candidate_metrics"]
    assert s.incumbent_metrics == full_summary()["incumbent_metrics"]
    assert s.dataset_splits == {"train": 480, "validation": 60, "eval": 60}
    assert s.training.best_step == 25 and s.training.history == []
    assert s.decision.to_json() == decision
    assert s.status["status"] == "champion"
    page = render_html(s)
    parse(page)
    assert "PROMOTED" in page and "no training history" in page
    assert "champion" in render_markdown(s)


def test_summary_from_registry_without_a_decision(registry):
    s = summary_from_registry(registry, "v2")
    assert s.decision is None and s.status["status"] == "candidate"
    assert "UNDECIDED" in render_markdown(s)
    s1 = summary_from_registry(registry, "champion")  # aliases resolve; a bare manifest still renders
    assert s1.version == "v1" and s1.decision.reason == "promoted: first"
    assert s1.incumbent_label == "incumbent" and s1.incumbent_metrics == {}
    parse(render_html(s1))


def test_summary_from_registry_prefers_evaluation_json(registry):
    full = full_summary()
    (registry.get("v2").path / "evaluation.json").write_text(render_json(S(full)))
    assert summary_from_registry(registry, "v2").to_json() == full
    assert summary_from_registry(registry.root, "v2").to_json() == full  # a folder works too


# -- the typed summary -----------------------------------------------------------
def test_build_summary_gives_the_json_the_flow_always_returned(tmp_path):
    from types import SimpleNamespace

    from tuneloop.gate.decide import Decision, paired_bootstrap
    from tuneloop.reports.summary import build_summary

    per_item = {"exact_match": {"a": 1.0, "b": 0.0, "c": 1.0}}
    items = [{"id": k, "prompt": f"p {k}", "reference": "r", "prediction": f"c {k}"} for k in "abc"]
    cand = SimpleNamespace(label="candidate", metrics={"exact_match": 2 / 3, "perplexity": float("nan")},
                           per_item=per_item, items=items)
    inc = SimpleNamespace(label="base", metrics={"exact_match": 1 / 3}, per_item={"exact_match": {"a": 0.0, "b": 0.0,
                          "c": 1.0}}, items=[{**i, "prediction": f"i {i['id']}"} for i in items[:2]])
    decision = Decision(True, "promoted", "exact_match", 2 / 3, 1 / 3, 1 / 3, 3, [{"check": "gain", "value": 0.1,
                        "need": ">= 0", "ok": True}], {"low": 0.0, "high": 1.0, "confidence": 0.9, "resamples": 50})
    dataset = SimpleNamespace(version="d" * 64, manifest=lambda: {"splits": {"train": 8, "validation": 1}})
    training = {"steps": 4, "final_loss": 1.5, "best_val_loss": None, "best_step": 0, "tokens_per_s": 10.0,
                "seconds": 1.0, "stopped_reason": None, "history": [{"step": 1, "loss": 2.0, "lr": 0.001}]}
    judge = {"helpful": {"candidate": 3.5, "incumbent": None, "n_failed": 0}}
    s = build_summary("v3", decision, cand, inc, training, dataset, tmp_path / "run", judge=judge,
                      confidence=0.9, resamples=50)
    delta, low, high = paired_bootstrap(per_item["exact_match"], inc.per_item["exact_match"], 50, 0.9)
    expected = {
        "version": "v3", "promoted": True, "decision": decision.to_json(), "created_at": s.created_at,
        "candidate_metrics": cand.metrics, "incumbent_metrics": inc.metrics, "incumbent_label": "base",
        "intervals": {"exact_match": {"delta": delta, "low": low, "high": high}}, "benchmarks": {}, "judge": judge,
        "dataset_version": "d" * 64, "dataset_splits": {"train": 8, "validation": 1}, "training": training,
        "items": [{"id": k, "prompt": f"p {k}", "reference": "r", "candidate": f"c {k}",
                   "incumbent": f"i {k}" if k != "c" else None} for k in "abc"],
        "run_dir": str(tmp_path / "run"),
    }
    assert strict_json(s.to_json()) == strict_json(expected)  # NaN compares unequal to itself: compare as JSON
    assert list(s.to_json()) == list(expected)
    published = s.with_reports({"json": tmp_path / "report.json"})
    assert published.to_json() == {**s.to_json(), "reports": {"json": str(tmp_path / "report.json")}}
    assert S(json.loads(render_json(published))).reports == {"json": str(tmp_path / "report.json")}


def test_stored_summaries_keep_keys_this_release_does_not_know():
    doc = full_summary() | {"future_section": {"x": [1, 2]}}
    doc["training"]["adapter_dir"] = "/tmp/a"
    doc["decision"]["guarded"] = {"arithmetic": {"drop": 0.02, "ok": True}}
    assert S(doc).to_json() == doc


# -- the sample table's layout (what keeps long ids off the prompt column) ---------
def test_long_item_ids_are_cut_with_the_whole_id_in_the_title():
    s = full_summary()
    long_id = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    s["items"][0]["id"] = long_id
    page = render_html(S(s))
    cells = re.findall(r'<td class="id" title="([^"]*)">([^<]*)</td>', page)
    assert (long_id, long_id[:12] + "…") in cells
    assert ("q-002", "q-002") in cells  # short ids are shown whole
    table = re.search(r'<table class="items">(.*?)</table>', page, re.S).group(1)
    assert table.startswith('<colgroup><col class="id"><col><col><col><col></colgroup><thead>')
    css = re.search(r"<style>(.*)</style>", page, re.S).group(1)
    assert "table.items { table-layout: fixed; }" in css  # column widths come from the colgroup, not the text
    assert re.search(r"\.items col\.id \{ width: \d+(\.\d+)?em; \}", css)
    assert re.search(r"\.items td \{[^}]*overflow-wrap: anywhere", css)  # long unbroken text wraps in its cell
    assert re.search(r"\.items td\.id \{[^}]*overflow: hidden", css)
