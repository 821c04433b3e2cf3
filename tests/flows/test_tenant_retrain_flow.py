"""A retrain run for one tenant (as its trigger starts it: the `tenant` parameter, no fixed data) trains on that
tenant's feedback only, is gated against that tenant's champion, and writes to that tenant's registry."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from importlib import resources

import pytest
import yaml

from conftest import ROOT
from tuneloop.feedback.items import FeedbackItem
from tuneloop.feedback.store import FeedbackStore
from tuneloop.registry import open_registry
from tuneloop.specs import FeedbackDataSpec, validate_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrain(prefect_harness):
    import sys

    sys.path.insert(0, str(ROOT))
    from tuneloop.flows.retrain import retrain

    return retrain


def items(rows: list[dict], tenant: str, start: int = 0) -> list[FeedbackItem]:
    when = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    return [FeedbackItem(id=f"test:{tenant}:{start + i}", source="test", messages=tuple(r["messages"][:-1]),
                         response=r["messages"][-1]["content"], timestamp=when, score=0.9, user=f"{tenant}{start + i}",
                         tenant=tenant) for i, r in enumerate(rows)]


def spec_without_data(heldout, **training):
    """The demo preset as a deployment that serves every tenant would carry it: no `data`."""
    preset = yaml.safe_load(resources.files("tuneloop").joinpath("assets/demo-preset.yaml").read_text())
    preset.pop("data")
    preset["training"] |= training
    # what these tests check is whose data, champion and registry a run uses; the feedback dataset (near
    # duplicates removed) trains the tiny base to 0.49-0.6 exact match, around the demo's 0.5 floor
    preset["gate"]["min_metrics"] = {"exact_match": 0.3}
    return validate_spec(preset | {"eval_data": str(heldout), "tenant": "default"})


def test_each_tenants_run_uses_its_own_feedback_champion_and_registry(retrain, tiny_base, demo_files, state_dir):
    rows = [json.loads(line) for line in demo_files["feedback"].read_text().splitlines()]
    store = FeedbackStore(state_dir / "feedback")
    # tenant a: the demo's right answers; tenant b: 30 rows whose answers are all one wrong word
    store.add(items(rows, "a") + items([{"messages": r["messages"][:-1] + [{"role": "assistant", "content": "zzz"}]}
                                        for r in rows[:30]], "b"))

    one = retrain(spec_without_data(demo_files["heldout"]), tenant="a")
    assert one["promoted"] is True and one["version"] == "v1" and one["incumbent_label"] == "base"
    reg_a = open_registry(tenant="a")
    assert reg_a.aliases() == {"champion": "v1"}
    v1 = reg_a.get("v1")
    assert v1.manifest["tenant"] == "a"
    sheet = json.loads((state_dir / "feedback" / "datasets" / "a" /
                        (state_dir / "feedback" / "datasets" / "a" / "LATEST").read_text().strip() /
                        "datasheet.json").read_text())
    assert sheet["tenant"] == "a" and sheet["counts"]["items_in_window"] == len(rows)  # none of b's rows
    assert open_registry().ids() == []  # the default tenant's registry: untouched

    two = retrain(spec_without_data(demo_files["heldout"], epochs=1, max_steps=2), tenant="b")
    assert two["incumbent_label"] == "base"  # not tenant a's champion
    reg_b = open_registry(tenant="b")
    assert reg_b.ids() == ["v1"] and reg_b.get("v1").manifest["tenant"] == "b"
    assert reg_a.aliases() == {"champion": "v1"} and reg_a.ids() == ["v1"]  # a: unchanged by b's run


def test_a_run_keeps_the_dataset_its_first_attempt_built(prefect_harness, demo_files, state_dir):
    from tuneloop.tasks.feedback import dataset_for_run

    rows = [json.loads(line) for line in demo_files["feedback"].read_text().splitlines()]
    store = FeedbackStore(state_dir / "feedback")
    store.add(items(rows[:20], "a"))
    first = dataset_for_run("a", FeedbackDataSpec(), "run-1")
    store.add(items(rows[20:40], "a", start=20))  # arrives before the run's retry
    again = dataset_for_run("a", FeedbackDataSpec(), "run-1")
    other = dataset_for_run("a", FeedbackDataSpec(), "run-2")
    assert again.version == first.version and first.counts["items_in_window"] == 20
    assert other.version != first.version and other.counts["items_in_window"] == 40
