"""Feedback files into the store: incremental, idempotent, nothing lost on bad rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tuneloop.feedback.collect import collect
from tuneloop.feedback.files import FileSource
from tuneloop.feedback.items import FeedbackItem, FeedbackPolicy
from tuneloop.feedback.store import FeedbackStore


def rows(n: int, start: int = 0, **extra) -> list[dict]:
    return [{"prompt": f"question number {i}", "response": f"answer {i}", "score": 0.9, "user": f"u{i}",
             "timestamp": f"2026-11-{1 + i % 20:02d}T10:00:00Z", **extra} for i in range(start, start + n)]


def write_jsonl(path: Path, data: list[dict], mode: str = "w") -> None:
    with path.open(mode) as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in data))


def write_csv(path: Path, data: list[dict], mode: str = "w") -> None:
    fields = ["prompt", "response", "score", "rating", "correction", "user", "tenant", "timestamp"]
    with path.open(mode, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if mode == "w":
            w.writeheader()
        w.writerows(data)


@pytest.mark.parametrize("writer, suffix", [(write_jsonl, ".jsonl"), (write_csv, ".csv")])
def test_twice_adds_nothing_and_seven_new_add_seven(tmp_path, writer, suffix):
    path = tmp_path / f"feedback{suffix}"
    writer(path, rows(20))
    store = FeedbackStore(tmp_path / "store")
    source = FileSource(path)
    assert len(collect(source, store).new) == 20
    again = collect(source, store)
    assert again.fetched == 0 and again.new == []
    writer(path, rows(7, start=20), mode="a")
    assert len(collect(source, store).new) == 7
    assert len(store.items()) == 27


def test_a_rewritten_file_is_reread_but_nothing_counted_twice(tmp_path):
    path = tmp_path / "f.jsonl"
    write_jsonl(path, rows(10))
    store = FeedbackStore(tmp_path / "store")
    collect(FileSource(path), store)
    write_jsonl(path, rows(3, start=100) + rows(10))  # rewritten: new rows first, old rows after
    result = collect(FileSource(path), store)
    assert result.fetched == 13 and len(result.new) == 3
    assert len(store.items()) == 13


def test_the_same_item_from_two_collections_is_stored_once(tmp_path):
    store = FeedbackStore(tmp_path / "store")
    item = FeedbackItem(id="x:1", source="x", messages=({"role": "user", "content": "q"},), response="a",
                        timestamp="2026-11-01T00:00:00+00:00", score=0.1)
    assert store.add([item, item]) == [item]
    assert store.add([item]) == []


def test_a_line_being_written_waits_for_the_next_collection(tmp_path):
    path = tmp_path / "f.jsonl"
    write_jsonl(path, rows(3))
    with path.open("a") as fh:
        fh.write(json.dumps(rows(1, start=3)[0])[:20])  # half a line, no newline yet
    store = FeedbackStore(tmp_path / "store")
    assert len(collect(FileSource(path), store).new) == 3
    with path.open("a") as fh:
        fh.write(json.dumps(rows(1, start=3)[0])[20:] + "\n")
    assert len(collect(FileSource(path), store).new) == 1


def test_bad_rows_are_skipped_with_their_line_and_the_rest_kept(tmp_path):
    path = tmp_path / "f.jsonl"
    good = rows(4)
    path.write_text("\n".join([json.dumps(good[0]), "{not json", json.dumps({"prompt": "q"}),
                               json.dumps(good[1] | {"score": 7}), json.dumps(good[2] | {"rating": "bad"}),
                               json.dumps(good[3])]) + "\n")
    result = collect(FileSource(path), FeedbackStore(tmp_path / "store"))
    assert len(result.new) == 2
    assert [e.split(":")[0] for e in result.errors] == ["line 2", "line 3", "line 4", "line 5"]
    assert "outside 0-1" in result.errors[2] and "not a number" in result.errors[3]


def test_torn_ledger_tail_is_ignored_and_repaired(tmp_path):
    store = FeedbackStore(tmp_path / "store")
    path = tmp_path / "f.jsonl"
    write_jsonl(path, rows(2))
    collect(FileSource(path), store)
    with store.ledger.open("a") as fh:
        fh.write('{"id": "torn')  # a crash mid-append
    assert len(store.items()) == 2
    write_jsonl(path, rows(1, start=2), mode="a")
    collect(FileSource(path), store)
    assert len(store.items()) == 3


@pytest.mark.parametrize("score, rating, label", [
    (0.7, None, "positive"), (0.69, None, "negative"), (None, 2, "negative"), (None, 3, "positive"),
    (0.9, 1, "negative"), (None, None, "neutral")])
def test_labels(score, rating, label):
    item = FeedbackItem(id="i", source="s", messages=({"role": "user", "content": "q"},), response="a",
                        timestamp="2026-11-01T00:00:00+00:00", score=score, rating=rating)
    assert item.label(FeedbackPolicy())[0] == label


def test_negatives_carry_their_reason(tmp_path):
    path = tmp_path / "f.jsonl"
    write_jsonl(path, rows(3) + rows(2, start=3, score=0.2) + rows(1, start=5, score=None, rating=1))
    result = collect(FileSource(path), FeedbackStore(tmp_path / "store"))
    negatives = result.negatives()
    assert len(negatives) == 3
    assert {reason for _, reason in negatives} == {"score 0.2 < 0.7", "rating 1 < 3"}
    assert result.summary() | {} == {"source": "file:f.jsonl", "fetched": 6, "new": 6, "duplicates": 0,
                                     "negatives": 3, "errors": 0}


def test_chat_rows_keep_the_conversation(tmp_path):
    path = tmp_path / "f.jsonl"
    write_jsonl(path, [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": "hello"}], "rating": 5, "tenant": "acme"}])
    (item,) = collect(FileSource(path), FeedbackStore(tmp_path / "store")).new
    assert item.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})
    assert item.response == "hello" and item.tenant == "acme" and item.prompt == "hi"


def test_a_drop_file_not_written_yet_is_nothing_new_and_its_rows_are_read_once_it_is(tmp_path):
    drop = tmp_path / "incoming" / "feedback.jsonl"
    store = FeedbackStore(tmp_path / "store")
    with pytest.raises(FileNotFoundError, match=str(drop)):  # a named file that is not there: an error
        collect(FileSource(drop), store)
    result = collect(FileSource(drop, missing_ok=True), store)
    assert result.new == [] and result.errors == []
    drop.parent.mkdir()
    drop.write_text(json.dumps({"prompt": "p", "response": "r", "score": 0.1, "tenant": "acme"}) + "\n")
    result = collect(FileSource(drop, missing_ok=True), store)
    assert [(i.tenant, i.response) for i in result.new] == [("acme", "r")]
    assert collect(FileSource(drop, missing_ok=True), store).new == []
