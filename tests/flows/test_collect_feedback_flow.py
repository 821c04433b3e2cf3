"""collect-feedback under a temporary Prefect API: incremental, idempotent, events per negative, datasets built."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from tuneloop.specs import CollectSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collect_feedback(prefect_harness):
    import sys

    sys.path.insert(0, str(ROOT))
    from tuneloop.flows.collect_feedback import collect_feedback

    return collect_feedback


def append(path, start: int, n: int, score: float) -> None:
    with path.open("a") as fh:
        for i in range(start, start + n):
            fh.write(json.dumps({"prompt": f"how do I export report {i} to pdf?", "response": f"use menu {i}",
                                 "score": score, "user": f"u{i}", "tenant": "acme",
                                 "timestamp": "2026-11-20T10:00:00Z"}) + "\n")


def test_collect_twice_then_seven_more(collect_feedback, state_dir, tmp_path):
    path = tmp_path / "incoming.jsonl"
    append(path, 0, 20, 0.9)
    append(path, 20, 3, 0.1)
    spec = CollectSpec(sources=[{"kind": "file", "path": str(path), "tenant": "acme"}], window_days=3650)

    first = collect_feedback(spec)
    assert first["new"] == 23 and first["negative_events"] == 3
    sheet = json.loads((state_dir / "feedback" / "datasets" / "acme" /
                        (state_dir / "feedback" / "datasets" / "acme" / "LATEST").read_text().strip() /
                        "datasheet.json").read_text())
    assert sheet["counts"]["sft"] == 20 and sheet["counts"]["negatives"] == 3 and sheet["tenant"] == "acme"

    second = collect_feedback(spec)
    assert second["new"] == 0 and second["negative_events"] == 0 and second["datasets"] == {}

    append(path, 23, 7, 0.2)
    third = collect_feedback(spec)
    assert third["new"] == 7 and third["negative_events"] == 7
    assert third["datasets"]["acme"]["negatives"] == 10
