"""LangfuseSource against a local fake of the Langfuse public API, through the real 5.x SDK."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
from fakes.langfuse_server import fake_langfuse

from tuneloop.errors import TransientError, UserError
from tuneloop.feedback.items import FeedbackItem, FeedbackPolicy
from tuneloop.feedback.langfuse import LangfuseSource

CHAT = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "How do I reset my password?"},
]


@pytest.fixture
def lf():
    with fake_langfuse() as fake:
        yield fake


def source(lf, **kw) -> LangfuseSource:
    kw.setdefault("max_retries", 0)
    return LangfuseSource(lf.url, lf.public_key, lf.secret_key, **kw)


def chat_trace(lf, prompt="How do I reset my password?", answer="Click 'Forgot password'.", user="u1", **kw):
    t = lf.add_trace(user_id=user, **kw)
    lf.add_generation(t, [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": prompt}],
                      {"role": "assistant", "content": answer})
    return t


@pytest.mark.server
def test_items_carry_prompt_response_score_user_tenant(lf):
    t = chat_trace(lf)
    sid = lf.add_score(t, "user-feedback", 0.9, comment="great", metadata={"tenant": "acme", "correction": "Use the link."})
    items, wm = source(lf).fetch(None)
    assert len(items) == 1
    it = items[0]
    assert it.id == f"langfuse:{sid}"
    assert it.source == f"langfuse:{lf.url}"
    assert list(it.messages) == CHAT
    assert it.prompt == "How do I reset my password?"
    assert it.response == "Click 'Forgot password'."
    assert (it.score, it.rating) == (0.9, None)
    assert it.user == "u1" and it.tenant == "acme"
    assert it.comment == "great" and it.correction == "Use the link."
    assert it.timestamp == datetime(2025, 1, 1, 0, 0, 3, tzinfo=timezone.utc).isoformat()
    assert it.metadata["trace_id"] == t
    assert wm == {"since": it.timestamp, "seen_at_since": [sid]}
    assert FeedbackItem.from_json(it.to_json()) == it


@pytest.mark.server
def test_default_tenant_name_and_user_from_score_metadata(lf):
    t = lf.add_trace(user_id=None)
    lf.add_generation(t, "What is 2+2?", "4")  # plain-string input and output
    lf.add_score(t, "fb", 1.0, metadata={"user_id": "meta-user"})
    items, _ = LangfuseSource(lf.url, lf.public_key, lf.secret_key, tenant="t0", name="lf-prod").fetch(None)
    (it,) = items
    assert it.source == "lf-prod" and it.tenant == "t0" and it.user == "meta-user"
    assert list(it.messages) == [{"role": "user", "content": "What is 2+2?"}] and it.response == "4"


@pytest.mark.server
def test_threshold_070_positive_069_negative(lf):
    t = chat_trace(lf)
    a = lf.add_score(t, "fb", 0.7)
    b = lf.add_score(t, "fb", 0.69)
    items, _ = source(lf).fetch(None)
    by_id = {i.id: i for i in items}
    assert by_id[f"langfuse:{a}"].label(FeedbackPolicy())[0] == "positive"
    assert by_id[f"langfuse:{b}"].label(FeedbackPolicy())[0] == "negative"


@pytest.mark.server
def test_value_kinds_boolean_rating_and_categorical_skipped(lf):
    t = chat_trace(lf)
    lf.add_score(t, "thumbs", True, "BOOLEAN")
    lf.add_score(t, "thumbs", False, "BOOLEAN")
    lf.add_score(t, "stars", 2, "NUMERIC")
    lf.add_score(t, "stars", 4.0, "NUMERIC")
    lf.add_score(t, "tone", "friendly", "CATEGORICAL")
    src = source(lf)
    items, wm = src.fetch(None)
    got = [(i.score, i.rating, i.label()[0]) for i in items]
    assert sorted(got, key=str) == sorted([
        (0.0, None, "negative"), (1.0, None, "positive"), (None, 2.0, "negative"), (None, 4.0, "positive"),
    ], key=str)
    assert src.last_skipped == {"CATEGORICAL score (no numeric value)": 1}
    # the skipped score still moves the watermark: it is not re-read next time
    assert source(lf).fetch(wm)[0] == []


@pytest.mark.server
def test_score_name_filter(lf):
    t = chat_trace(lf)
    keep = lf.add_score(t, "user-feedback", 0.8)
    lf.add_score(t, "llm-judge", 0.1)
    items, _ = source(lf, score_name="user-feedback").fetch(None)
    assert [i.id for i in items] == [f"langfuse:{keep}"]
    assert lf.calls("/v3/scores")[-1]["name"] == "user-feedback"


@pytest.mark.server
def test_incremental_watermark_and_new_scores_on_old_traces(lf):
    old = [chat_trace(lf, prompt=f"q{i}", user=f"u{i}") for i in range(3)]
    for t in old:
        lf.add_score(t, "fb", 0.9)
    src = source(lf)
    items, wm = src.fetch(None)
    assert len(items) == 3
    again, wm2 = src.fetch(wm)
    assert again == [] and wm2 == wm

    new_traces = [chat_trace(lf, prompt=f"new{i}") for i in range(3)]
    new_ids = [lf.add_score(t, "fb", 0.2) for t in new_traces]
    new_ids += [lf.add_score(old[0], "fb", 0.5), lf.add_score(old[1], "fb", 1.0),
                lf.add_score(old[2], "fb", 3, "NUMERIC"), lf.add_score(old[0], "fb", False, "BOOLEAN")]
    items, wm3 = src.fetch(wm)
    assert sorted(i.id for i in items) == sorted(f"langfuse:{s}" for s in new_ids)
    assert len(items) == 7
    on_old = [i for i in items if i.metadata["trace_id"] in old]
    assert len(on_old) == 4 and {i.prompt for i in on_old} == {"q0", "q1", "q2"}
    assert src.fetch(wm3)[0] == []


@pytest.mark.server
def test_score_at_exactly_since_is_not_lost_or_repeated(lf):
    t = chat_trace(lf)
    ts = datetime(2025, 6, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    a = lf.add_score(t, "fb", 0.9, timestamp=ts)
    items, wm = source(lf).fetch(None)
    assert [i.id for i in items] == [f"langfuse:{a}"] and wm["seen_at_since"] == [a]
    b = lf.add_score(t, "fb", 0.1, timestamp=ts)  # same timestamp, visible only now
    items, wm2 = source(lf).fetch(wm)
    assert [i.id for i in items] == [f"langfuse:{b}"]
    assert wm2 == {"since": ts.isoformat(), "seen_at_since": sorted([a, b])}
    assert source(lf).fetch(wm2)[0] == []
    assert lf.calls("/v3/scores")[-1]["fromTimestamp"] == "2025-06-01T12:00:00.123000Z"


@pytest.mark.server
def test_lookback_catches_late_scores_without_repeating(lf):
    t = chat_trace(lf)
    lf.add_score(t, "fb", 0.9, timestamp=datetime(2025, 6, 1, 12, 0, 30, tzinfo=timezone.utc))
    src = source(lf, lookback_s=60)
    items, wm = src.fetch(None)
    assert len(items) == 1
    # ingestion lag: a score stamped before `since` shows up only after the first fetch
    late = lf.add_score(t, "fb", 0.2, timestamp=datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc))
    items, wm2 = src.fetch(wm)
    assert [i.id for i in items] == [f"langfuse:{late}"]
    assert src.fetch(wm2)[0] == []
    assert source(lf).fetch(wm)[0] == []  # without lookback it would have been missed


@pytest.mark.server
def test_pagination_follows_cursors_and_caches_observations_per_trace(lf):
    traces = [chat_trace(lf, prompt=f"p{i}") for i in range(4)]
    ids = [lf.add_score(traces[i % 4], "fb", 0.8) for i in range(11)]
    items, wm = source(lf, page_size=3).fetch(None)
    assert sorted(i.id for i in items) == sorted(f"langfuse:{s}" for s in ids)
    score_calls = lf.calls("/v3/scores")
    assert len(score_calls) == 4 and all(c["limit"] == "3" for c in score_calls)
    assert "cursor" not in score_calls[0] and all("cursor" in c for c in score_calls[1:])
    obs_calls = lf.calls("/v2/observations")
    assert sorted(c["traceId"] for c in obs_calls) == sorted(traces)  # one call per trace
    assert {"io", "basic"} <= set(obs_calls[0]["fields"].split(","))
    assert wm["since"] == max(i.timestamp for i in items)


@pytest.mark.server
def test_observation_pages_are_followed(lf):
    t = lf.add_trace(user_id="u9")
    for i in range(120):  # many spans before the generation: observations span two pages of 100
        lf.add_span(t, name=f"s{i}")
    gen = lf.add_generation(t, {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
                            {"choices": [{"message": {"role": "assistant", "content": "hello"}}]})
    for i in range(5):
        lf.add_span(t, name=f"after{i}")
    lf.add_score(t, "fb", 0.95)
    (it,), _ = source(lf).fetch(None)
    assert it.prompt == "hi" and it.response == "hello" and it.user == "u9"
    assert it.metadata["observation_id"] == gen
    assert len(lf.calls("/v2/observations")) == 2


@pytest.mark.server
def test_input_output_shapes_and_fallbacks(lf):
    cases = [
        ({"question": "Q1"}, {"answer": "A1"}),
        ({"input": "Q2"}, {"output": "A2"}),
        ({"prompt": [{"role": "user", "content": "Q3"}]}, {"text": "A3"}),
    ]
    for inp, out in cases:
        t = lf.add_trace()
        lf.add_generation(t, inp, out)
        lf.add_score(t, "fb", 0.9)
    t_root = lf.add_trace()  # no generation: the trace's own input/output on the root observation
    lf.set_trace_io(t_root, "Q4", "A4")
    lf.add_score(t_root, "fb", 0.9)
    t_none = lf.add_trace()  # nothing to train on
    lf.add_score(t_none, "fb", 0.9)
    lf.add_score(None, "fb", 0.9, session_id="sess-1")  # session-level score
    src = source(lf)
    items, _ = src.fetch(None)
    assert sorted((i.prompt, i.response) for i in items) == [(f"Q{n}", f"A{n}") for n in range(1, 5)]
    assert src.last_skipped == {
        "no input/output conversation on the trace": 1,
        "score not attached to a trace (session/experiment score)": 1,
    }


@pytest.mark.server
def test_observation_level_score_uses_that_generation(lf):
    t = lf.add_trace(user_id="u1")
    first = lf.add_generation(t, "draft question", "draft answer")
    lf.add_generation(t, "final question", "final answer")
    lf.add_score(t, "fb", 0.9, observation_id=first)
    lf.add_score(t, "fb", 0.1)
    items, _ = source(lf).fetch(None)
    assert sorted((i.score, i.response) for i in items) == [(0.1, "final answer"), (0.9, "draft answer")]


@pytest.mark.server
def test_503_is_transient(lf):
    lf.add_score(chat_trace(lf), "fb", 0.9)
    lf.fail_next(1)
    with pytest.raises(TransientError, match="503"):
        source(lf).fetch(None)
    # the SDK's own retry (max_retries) rides out a short outage
    lf.fail_next(1)
    t0 = time.monotonic()
    items, _ = source(lf, max_retries=1).fetch(None)
    assert len(items) == 1 and time.monotonic() - t0 < 5


@pytest.mark.server
def test_connection_refused_is_transient():
    with fake_langfuse() as lf:
        url = lf.url
    with pytest.raises(TransientError):
        LangfuseSource(url, "pk", "sk", max_retries=0).fetch(None)


@pytest.mark.server
def test_wrong_keys_are_a_user_error(lf):
    with pytest.raises(UserError) as e:
        LangfuseSource(lf.url, lf.public_key, "sk-wrong").fetch(None)
    assert lf.url in str(e.value) and "key" in e.value.fix


@pytest.mark.server
def test_two_sources_same_public_key_do_not_share_a_host():
    # langfuse.Langfuse() is a per-public-key singleton; the source must not be
    with fake_langfuse() as a, fake_langfuse() as b:
        a.add_score(chat_trace(a, prompt="from a"), "fb", 0.9)
        b.add_score(chat_trace(b, prompt="from b"), "fb", 0.9)
        (ia,), _ = source(a).fetch(None)
        (ib,), _ = source(b).fetch(None)
        assert (ia.prompt, ib.prompt) == ("from a", "from b")


@pytest.mark.server
def test_no_langfuse_background_threads(lf):
    chat_trace(lf)
    source(lf).fetch(None)
    sdk_threads = [t for t in threading.enumerate() if type(t).__module__.startswith("langfuse")]
    assert sdk_threads == []
