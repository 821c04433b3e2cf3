"""tuneloop.runtime.observability: helpers, HTTP /metrics, textfile snapshot, multiprocess, dashboard.

Isolation: an autouse fixture calls ``reset_for_tests()`` so every test starts
from a fresh, zeroed registry.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tuneloop.runtime import observability as obs

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deployments" / "grafana-dashboard.json"


@pytest.fixture(autouse=True)
def fresh_registry():
    obs.reset_for_tests()
    yield
    obs.reset_for_tests()


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def _get(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def _exercise_all():
    obs.record_training_started("acme")
    obs.record_training_started("acme")
    obs.record_training_started("acme")
    obs.record_training_finished("acme", "succeeded", 42.0)
    obs.record_training_finished("acme", "failed", 7200.0)
    obs.record_training_finished("acme", "cancelled", 3.0)
    obs.record_loss("run-1", 1.5, 900.0)
    obs.record_loss("run-1", 0.75, 1200.0)
    obs.record_evaluation("v3", {"accuracy": 0.81, "rougeL": 0.4, "note": "skip", "flag": True})
    obs.record_promotion("acme", True)
    obs.record_promotion("acme", False)
    obs.record_promotion("acme", False)
    obs.record_rollback("acme")
    obs.record_feedback("api", "positive")
    obs.record_feedback("api", "positive", n=4)
    obs.record_feedback("ui", "negative", n=2)
    obs.record_feedback("ui", "neutral", n=0)
    obs.record_drift("acme")
    obs.record_drift("acme")


def _assert_all(text: str):
    # `*_created` gauges (prometheus_client's default) are tolerated, not required.
    fams = {n: t for n, t in _families(text).items() if not n.endswith("_created")}
    assert fams == {
        "training_jobs": "counter",
        "training_duration_seconds": "histogram",
        "training_loss_current": "gauge",
        "training_tokens_per_second": "gauge",
        "evaluation_score": "gauge",
        "promotions": "counter",
        "rollbacks": "counter",
        "feedback_items": "counter",
        "drift_detected": "counter",
    }
    s = _samples(text)
    assert _get(s, "training_jobs_total", status="started", tenant="acme") == 3
    assert _get(s, "training_jobs_total", status="succeeded", tenant="acme") == 1
    assert _get(s, "training_jobs_total", status="failed", tenant="acme") == 1
    assert _get(s, "training_jobs_total", status="cancelled", tenant="acme") == 1
    assert _get(s, "training_duration_seconds_count", tenant="acme") == 3
    assert _get(s, "training_duration_seconds_sum", tenant="acme") == pytest.approx(7245.0)
    assert _get(s, "training_duration_seconds_bucket", tenant="acme", le="5.0") == 1
    assert _get(s, "training_duration_seconds_bucket", tenant="acme", le="60.0") == 2
    assert _get(s, "training_duration_seconds_bucket", tenant="acme", le="3600.0") == 2
    assert _get(s, "training_duration_seconds_bucket", tenant="acme", le="7200.0") == 3
    assert _get(s, "training_duration_seconds_bucket", tenant="acme", le="+Inf") == 3
    assert _get(s, "training_loss_current", run="run-1") == 0.75
    assert _get(s, "training_tokens_per_second", run="run-1") == 1200.0
    assert _get(s, "evaluation_score", version="v3", metric="accuracy") == pytest.approx(0.81)
    assert _get(s, "evaluation_score", version="v3", metric="rougeL") == pytest.approx(0.4)
    assert not any(n == "evaluation_score" and ("metric", "note") in l for n, l in s)
    assert not any(n == "evaluation_score" and ("metric", "flag") in l for n, l in s)
    assert _get(s, "promotions_total", outcome="promoted", tenant="acme") == 1
    assert _get(s, "promotions_total", outcome="rejected", tenant="acme") == 2
    assert _get(s, "rollbacks_total", tenant="acme") == 1
    assert _get(s, "feedback_items_total", source="api", label="positive") == 5
    assert _get(s, "feedback_items_total", source="ui", label="negative") == 2
    assert ("feedback_items_total", frozenset({("source", "ui"), ("label", "neutral")})) not in s
    assert _get(s, "drift_detected_total", tenant="acme") == 2
    # exact exposed series names (no double `_total_total`, no stray suffixes)
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert {"training_jobs_total", "training_duration_seconds_bucket", "training_duration_seconds_sum",
            "training_duration_seconds_count", "training_loss_current", "training_tokens_per_second",
            "evaluation_score", "promotions_total", "rollbacks_total", "feedback_items_total",
            "drift_detected_total"} <= names
    assert not any("_total_total" in n for n in names)


@pytest.mark.server
def test_http_metrics_endpoint_exposes_every_series():
    _exercise_all()
    server, port = obs.serve_metrics(port=0)
    try:
        assert port > 0
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        _assert_all(r.text)
        # counters keep incrementing between scrapes
        obs.record_rollback("acme")
        r2 = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert _get(_samples(r2.text), "rollbacks_total", tenant="acme") == 2
        assert httpx.get(f"http://127.0.0.1:{port}/nope", timeout=5).status_code == 404
    finally:
        obs.stop_metrics_server(server)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)


def test_reset_isolates_tests():
    obs.record_drift("acme")
    obs.reset_for_tests()
    s = _samples(obs.generate_latest(obs.REGISTRY).decode())
    assert ("drift_detected_total", frozenset({("tenant", "acme")})) not in s


def test_dedicated_registry_not_global():
    import prometheus_client

    obs.record_drift("acme")
    assert obs.REGISTRY is not prometheus_client.REGISTRY
    assert b"drift_detected_total" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_write_textfile_parses(tmp_path):
    _exercise_all()
    path = obs.write_textfile(tmp_path / "sub" / "tuneloop.prom")
    assert path.exists()
    _assert_all(path.read_text())
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp file left behind


def test_invalid_values_rejected():
    with pytest.raises(ValueError):
        obs.record_training_finished("acme", "started", 1.0)
    with pytest.raises(ValueError):
        obs.record_feedback("api", "meh")
    with pytest.raises(ValueError):
        obs.record_feedback("api", "positive", n=-1)


@pytest.mark.server
def test_multiprocess_mode_aggregates_across_processes(tmp_path):
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    writer = textwrap.dedent("""
        import sys
        from tuneloop.runtime import observability as obs
        obs.record_training_started("acme")
        obs.record_loss("r", float(sys.argv[1]), 10.0)
    """)
    for loss in ("2.0", "1.0"):
        subprocess.run([sys.executable, "-c", writer, loss], env=env, check=True, timeout=30)
    reader = textwrap.dedent("""
        import sys
        from tuneloop.runtime import observability as obs
        assert obs.multiprocess_enabled()
        obs.write_textfile(sys.argv[1])
    """)
    out = tmp_path / "agg.prom"
    subprocess.run([sys.executable, "-c", reader, str(out)], env=env, check=True, timeout=30)
    s = _samples(out.read_text())
    assert _get(s, "training_jobs_total", status="started", tenant="acme") == 2  # summed over processes
    assert _get(s, "training_loss_current", run="r") == 1.0  # most recent value wins


# --- dashboard ---------------------------------------------------------------

def _panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def test_dashboard_is_valid_and_covers_every_metric():
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["title"] and dash["uid"]
    assert any(v["name"] == "DS_PROMETHEUS" and v["type"] == "datasource" for v in dash["templating"]["list"])
    panels = list(_panels(dash))
    assert len(panels) >= 9
    assert len({p["id"] for p in panels}) == len(panels)
    family_re = re.compile(r"\b(" + "|".join(
        re.escape(n) + (r"(?:_bucket|_sum|_count)?" if n == "training_duration_seconds" else "")
        for n in obs.METRIC_NAMES) + r")\b")
    seen = set()
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            expr = t["expr"]
            found = family_re.findall(expr)
            assert found, (p["title"], expr)
            assert expr.count("(") == expr.count(")"), expr
            seen.update(re.sub(r"_(bucket|sum|count)$", "", f) for f in found)
    assert seen == set(obs.METRIC_NAMES)
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert "histogram_quantile(0.5" in exprs and "histogram_quantile(0.95" in exprs
    assert "training_duration_seconds_bucket" in exprs
