"""Datasets built from feedback: SFT + preference + negatives, lineage, datasheet, tenants never mixed."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tuneloop.data import prepare_dataset
from tuneloop.errors import UserError
from tuneloop.feedback.build import build_feedback_dataset
from tuneloop.feedback.items import FeedbackItem
from tuneloop.specs import DataSpec

NOW = datetime(2026, 11, 24, tzinfo=timezone.utc)


def item(i: int, *, score=0.9, correction=None, user=None, tenant="acme", days_ago=1, prompt=None, response=None):
    return FeedbackItem(
        id=f"t:{tenant}:{i}", source="test", messages=({"role": "user", "content": prompt or f"how do I do task {i}?"},),
        response=response or f"do step {i} then step {i + 1}", timestamp=(NOW - timedelta(days=days_ago)).isoformat(),
        score=score, correction=correction, user=user or f"user{i}", tenant=tenant)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_positives_negatives_and_preferences(tmp_path):
    items = [item(i) for i in range(20)]
    items += [item(100 + i, score=0.1, correction=f"the right way {i}") for i in range(3)]
    items += [item(200, score=0.3)]
    ds = build_feedback_dataset(items, tmp_path, tenant="acme", now=NOW)
    sft, pref, neg = (read(ds.path / f) for f in ("sft.jsonl", "preference.jsonl", "negatives.jsonl"))
    assert len(sft) == 23 and len(pref) == 3 and len(neg) == 4
    assert pref[0].keys() >= {"prompt", "chosen", "rejected"} and pref[0]["chosen"].startswith("the right way")
    assert {n["reason"] for n in neg} == {"score 0.1 < 0.7", "score 0.3 < 0.7"}
    lineage = json.loads((ds.path / "lineage.json").read_text())
    assert sorted(lineage["feedback_ids"]["preference.jsonl"]) == ["t:acme:100", "t:acme:101", "t:acme:102"]
    sheet = ds.datasheet
    assert sheet["tenant"] == "acme" and sheet["license"] == "unspecified" and sheet["sources"] == ["test"]
    assert sheet["counts"]["sft"] == 23 and sheet["redaction"]["applied"] is True
    assert sheet["collection_window"]["start"] == (NOW - timedelta(days=30)).isoformat()


def test_same_feedback_same_version_and_folder(tmp_path):
    items = [item(i) for i in range(15)]
    a = build_feedback_dataset(items, tmp_path, tenant="acme", now=NOW)
    b = build_feedback_dataset(list(reversed(items)), tmp_path, tenant="acme", now=NOW)
    assert a.version == b.version and a.path == b.path
    assert len(list((tmp_path / "acme").iterdir())) == 2  # the version folder and LATEST


def test_tenants_are_never_mixed(tmp_path):
    items = [item(i) for i in range(15)] + [item(i, tenant="globex") for i in range(15)]
    acme = build_feedback_dataset(items, tmp_path, tenant="acme", now=NOW)
    assert all(r["tenant"] == "acme" for r in read(acme.path / "sft.jsonl"))
    globex = build_feedback_dataset(items, tmp_path, tenant="globex", now=NOW)
    assert acme.path.parent != globex.path.parent
    with pytest.raises(UserError, match="tenant 'initech'"):
        build_feedback_dataset(items, tmp_path, tenant="initech", now=NOW)
    with pytest.raises(UserError, match="not 'globex'"):
        prepare_dataset(acme.path.parent, DataSpec(), tenant="globex")


def test_window_excludes_old_feedback(tmp_path):
    items = [item(i) for i in range(12)] + [item(50 + i, days_ago=60) for i in range(10)]
    ds = build_feedback_dataset(items, tmp_path, tenant="acme", now=NOW, window_days=30)
    assert ds.counts["items_in_window"] == 12


def test_pii_is_redacted_before_writing(tmp_path):
    items = [item(i) for i in range(12)]
    items.append(item(99, prompt="my email is jane.doe@example.com and card 4111 1111 1111 1111",
                      response="call me on +1-202-555-0143"))
    ds = build_feedback_dataset(items, tmp_path, tenant="acme", now=NOW)
    text = "".join(p.read_text() for p in ds.path.glob("*.jsonl"))
    assert "jane.doe@example.com" not in text and "4111 1111 1111 1111" not in text and "555-0143" not in text
    counts = ds.datasheet["redaction"]["counts"]
    assert counts.get("email") == 1 or counts.get("EMAIL") == 1


def test_training_reads_the_folder_and_refuses_one_without_datasheet(tmp_path):
    items = [item(i) for i in range(30)]
    ds = build_feedback_dataset(items, tmp_path, tenant="acme", now=NOW)
    prepared = prepare_dataset(tmp_path / "acme", DataSpec(), tenant="acme")  # LATEST resolves the version
    assert len(prepared.train) + len(prepared.validation) + len(prepared.test) == 30
    assert prepared.datasheet["tenant"] == "acme" and prepared.datasheet["prepared"]["version"] == prepared.version
    (ds.path / "datasheet.json").unlink()
    with pytest.raises(UserError, match="datasheet"):
        prepare_dataset(ds.path, DataSpec(), tenant="acme")


def test_user_flood_is_capped(tmp_path):
    items = [item(i) for i in range(40)] + [item(300 + i, user="mallory", prompt=f"a distinct question {i} about x{i * 7}")
                                            for i in range(30)]
    ds = build_feedback_dataset(items, tmp_path, tenant="acme", now=NOW)
    lineage = json.loads((ds.path / "lineage.json").read_text())
    kept_mallory = sum(1 for fid in lineage["feedback_ids"]["sft.jsonl"] if int(fid.split(":")[-1]) >= 300)
    assert kept_mallory <= 0.10 * len(lineage["feedback_ids"]["sft.jsonl"]) + 1e-9
    assert ds.counts["dropped_by_guard"] >= 25
