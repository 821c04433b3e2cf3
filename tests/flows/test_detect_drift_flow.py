"""detect-drift under a temporary Prefect API: a shifted window fires (report + event), a steady one does not."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from conftest import ROOT
from tuneloop.feedback.items import FeedbackItem
from tuneloop.feedback.store import FeedbackStore
from tuneloop.specs import DriftSpec
from unit.test_drift import shifted_prompts, support_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def detect_drift(prefect_harness):
    import sys

    sys.path.insert(0, str(ROOT))
    from tuneloop.flows.detect_drift import detect_drift

    return detect_drift


def setup(state_dir, tmp_path, window_prompts, reference_seed=1):
    ref = tmp_path / "reference.jsonl"
    ref.write_text("".join(json.dumps({"prompt": p, "completion": "x"}) + "\n"
                           for p in support_prompts(200, seed=reference_seed)))
    now = datetime.now(timezone.utc)
    items = [FeedbackItem(id=f"w{i}", source="t", messages=({"role": "user", "content": p},), response="r",
                          timestamp=(now - timedelta(hours=i % 200)).isoformat(), score=0.9, tenant="acme")
             for i, p in enumerate(window_prompts)]
    FeedbackStore(state_dir / "feedback").add(items)
    return DriftSpec(tenant="acme", reference=ref, backend="tfidf")


def test_shifted_window_fires_and_writes_a_report(detect_drift, state_dir, tmp_path):
    out = detect_drift(setup(state_dir, tmp_path, shifted_prompts(200, seed=2)))
    assert out["drifted"] is True and out["event"] is True
    report = json.loads(open(out["report"]).read())
    assert report["tenant"] == "acme" and report["auc"] >= 0.6 and report["examples"]


def test_steady_window_does_not_fire(detect_drift, state_dir, tmp_path):
    out = detect_drift(setup(state_dir, tmp_path, support_prompts(200, seed=3)))
    assert out["drifted"] is False and out["event"] is False


def test_too_little_data_is_skipped_not_failed(detect_drift, state_dir, tmp_path):
    out = detect_drift(setup(state_dir, tmp_path, support_prompts(5, seed=4)))
    assert out["drifted"] is False and "not enough prompts" in out["skipped"]
