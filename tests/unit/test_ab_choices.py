"""Explicit A/B choices become DPO pairs: a feedback file's `rejected`, and the service's `preferred_over`."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tuneloop.data import prepare_dataset
from tuneloop.feedback.build import build_feedback_dataset
from tuneloop.feedback.collect import collect
from tuneloop.feedback.files import FileSource
from tuneloop.feedback.store import FeedbackStore
from tuneloop.service.feedback import Completions, record_feedback
from tuneloop.serving.bodies import BadField
from tuneloop.specs import DataSpec


def test_a_file_rows_choice_is_a_pair_and_a_bad_one_is_reported(tmp_path):
    now = datetime.now(timezone.utc).isoformat()
    rows = [{"prompt": f"where is parcel {i}", "response": f"tracking page {i}", "rejected": f"no idea {i}",
             "user": f"u{i}", "timestamp": now} for i in range(6)]
    rows += [{"prompt": "rated and chosen", "response": "good", "rejected": "bad", "score": 0.9, "timestamp": now},
             {"prompt": "chosen but bad", "response": "meh", "rejected": "worse", "score": 0.1, "timestamp": now},
             {"prompt": "same twice", "response": "x", "rejected": "x", "timestamp": now}]
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = FeedbackStore(tmp_path / "store")
    source = FileSource(path)
    collect(source, store)
    assert len(source.last_errors) == 1 and "line 9" in source.last_errors[0]
    assert "rejected is the same text as the response" in source.last_errors[0]
    items = store.items()
    assert sorted(i.rejected for i in items if i.rejected)[:2] == ["bad", "no idea 0"]

    ds = build_feedback_dataset(items, tmp_path / "ds", tenant="default", max_user_share=1.0)
    pairs = prepare_dataset(ds.path, DataSpec(validation_split=0.0, test_split=0.0, min_examples=1),
                            method="dpo").train
    got = {(r.prompt_messages[-1]["content"], r.answer, r.rejected) for r in pairs}
    # the picked answer is preferred; a picked answer rated negative teaches no preference
    assert got == {(f"where is parcel {i}", f"tracking page {i}", f"no idea {i}") for i in range(6)} | {
        ("rated and chosen", "good", "bad")}
    assert ds.counts["preference"] == 7 and ds.counts["sft"] == 1  # an unrated choice is no SFT example


def test_the_services_preferred_over_pairs_two_answers_to_one_conversation(tmp_path):
    completions, store = Completions(tmp_path / "completions"), FeedbackStore(tmp_path / "store")
    ask = [{"role": "user", "content": "my card was declined, my email is ann@example.com"}]
    ids = ["chatcmpl-" + f"{n:024x}" for n in range(3)]
    completions.keep("acme", ids[0], "ft:a", ask, "billing")
    completions.keep("acme", ids[1], "ft:b", ask, "shipping")
    completions.keep("acme", ids[2], "ft:a", [{"role": "user", "content": "another question"}], "refund")

    out = record_feedback(store, completions, "acme", {"completion_id": ids[0], "preferred_over": ids[1]})
    assert out["label"] == "neutral" and out["yields"] == {"sft_row": False, "preference_pair": True}
    (item,) = store.items()
    assert item.response == "billing" and item.rejected == "shipping"
    assert item.metadata["preferred_over"] == ids[1] and "ann@example.com" not in json.dumps(item.messages)

    with pytest.raises(BadField) as e:  # another conversation: not a choice between two answers to one prompt
        record_feedback(store, completions, "acme", {"completion_id": ids[0], "preferred_over": ids[2],
                                                      "idempotency_key": "k2"})
    assert e.value.param == "preferred_over" and "same conversation" in str(e.value)
    with pytest.raises(BadField):
        record_feedback(store, completions, "acme", {"completion_id": ids[0], "preferred_over": ids[0],
                                                      "idempotency_key": "k3"})
    with pytest.raises(BadField) as e:  # without a choice, a rating is still required
        record_feedback(store, completions, "acme", {"completion_id": ids[0], "idempotency_key": "k4"})
    assert "preferred_over alone" in str(e.value)
    assert len(store.items()) == 1  # nothing half-written by the refused ones
