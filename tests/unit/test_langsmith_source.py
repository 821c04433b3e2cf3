"""LangSmithSource against a local fake LangSmith API, through the real `langsmith` SDK."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest
from fakes.langsmith_server import FakeLangSmith, langsmith_fake  # noqa: F401  (fixture)

from tuneloop.errors import TransientError, UserError
from tuneloop.feedback.collect import collect
from tuneloop.feedback.items import FeedbackItem, FeedbackPolicy
from tuneloop.feedback.langsmith import LangSmithSource, messages_from_inputs, response_from_outputs
from tuneloop.feedback.store import FeedbackStore

CHAT_IN = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reset my password?"}]}
CHAT_OUT = {"output": "Settings > Security > Reset."}


def _run(fake: FakeLangSmith, i: int = 0, project: str = "prod-chat", **kw) -> str:
    return fake.add_run(project, {"input": f"question {i}"}, {"output": f"answer {i}"}, **kw)


def _source(fake: FakeLangSmith, **kw) -> LangSmithSource:
    return LangSmithSource("prod-chat", api_url=fake.url, **kw)


def test_items_have_the_right_fields(langsmith_fake):
    fake = langsmith_fake
    rid = fake.add_run("prod-chat", CHAT_IN, CHAT_OUT, metadata={"user_id": "u-17", "tenant": "acme"})
    fid = fake.add_feedback(rid, "user_score", 0.2, comment="wrong menu",
                            correction={"output": "Profile > Password > Reset."})
    lc = fake.add_run("prod-chat", {"messages": [[{"type": "system", "content": "sys"},
                                                  {"type": "human", "content": "hola"}]]},
                      {"generations": [[{"text": "", "message": {"type": "ai", "content": "buenas"}}]]},
                      extra={"user": "u-9"})
    fake.add_feedback(lc, "user_score", True)
    oa = fake.add_run("prod-chat", {"question": "2+2?"},
                      {"choices": [{"message": {"role": "assistant", "content": "4"}}]})
    fake.add_feedback(oa, "user_score", None, value="meh", correction="four")

    items, mark = _source(fake).fetch(None)

    assert len(items) == 3
    first, second, third = items  # oldest feedback first
    assert first.id == f"langsmith:{rid}:{fid}"
    assert first.source == "langsmith:prod-chat"
    assert first.messages == tuple(CHAT_IN["messages"])
    assert first.prompt == "Reset my password?"
    assert first.response == "Settings > Security > Reset."
    assert (first.score, first.rating) == (0.2, None)
    assert first.correction == "Profile > Password > Reset."
    assert first.comment == "wrong menu"
    assert (first.user, first.tenant) == ("u-17", "acme")
    assert first.timestamp == fake.feedback[fid]["created_at"]
    assert first.metadata["run_id"] == rid and first.metadata["feedback_key"] == "user_score"
    assert first.label(FeedbackPolicy()) == ("negative", "score 0.2 < 0.7")

    assert second.messages == ({"role": "system", "content": "sys"}, {"role": "user", "content": "hola"})
    assert second.response == "buenas"
    assert (second.score, second.user, second.tenant) == (1.0, "u-9", "default")

    assert third.messages == ({"role": "user", "content": "2+2?"},)
    assert (third.response, third.score, third.correction) == ("4", None, "four")
    assert third.label() == ("neutral", "no score or rating")

    assert mark["since"] == third.timestamp
    assert mark["seen_at_since"] == [third.metadata["feedback_id"]]
    for it in items:  # what the store writes round-trips
        assert FeedbackItem.from_json(it.to_json()) == it


def test_score_0_7_is_positive_and_0_69_negative(langsmith_fake):
    policy = FeedbackPolicy()
    base = dict(source="s", messages=({"role": "user", "content": "q"},), response="a", timestamp="t")
    assert FeedbackItem(id="a", score=0.7, **base).label(policy)[0] == "positive"
    assert FeedbackItem(id="b", score=0.69, **base).label(policy)[0] == "negative"

    fake = langsmith_fake
    pos = fake.add_feedback(_run(fake, 1), score=0.7)
    neg = fake.add_feedback(_run(fake, 2), score=0.69)
    labels = {it.metadata["feedback_id"]: it.label(policy) for it in _source(fake).fetch(None)[0]}
    assert labels[pos] == ("positive", "score 0.7 >= 0.7")
    assert labels[neg] == ("negative", "score 0.69 < 0.7")


def test_second_collection_is_empty_and_new_feedback_on_old_runs_is_found(langsmith_fake, tmp_path):
    fake = langsmith_fake
    old_runs = [_run(fake, i) for i in range(3)]
    for r in old_runs:
        fake.add_feedback(r, score=0.9)
    src = _source(fake)

    items, mark = src.fetch(None)
    assert len(items) == 3
    again, mark2 = src.fetch(mark)
    assert again == [] and mark2 == mark

    fake.tick(3600)  # a day of traffic later ...
    new_runs = [_run(fake, 10 + i) for i in range(4)]
    added = [fake.add_feedback(r, score=0.8) for r in new_runs]
    added += [fake.add_feedback(r, score=0.1, comment="late thumbs-down") for r in old_runs]  # OLD runs
    items, mark3 = src.fetch(mark2)
    assert len(items) == 7
    assert sorted(it.metadata["feedback_id"] for it in items) == sorted(added)
    assert sum(it.metadata["run_id"] in old_runs for it in items) == 3
    assert src.fetch(mark3)[0] == []

    # the same through the collector and the store
    store = FeedbackStore(tmp_path / "store")
    assert len(collect(src, store).new) == 10
    assert len(collect(src, store).new) == 0 and collect(src, store).fetched == 0


def test_feedback_with_the_same_created_at_is_returned_once_each(langsmith_fake):
    fake = langsmith_fake
    at = fake.tick()
    a = fake.add_feedback(_run(fake, 1), score=1.0, created_at=at)
    src = _source(fake)
    items, mark = src.fetch(None)
    assert [it.metadata["feedback_id"] for it in items] == [a]
    assert mark["seen_at_since"] == [a]

    b = fake.add_feedback(_run(fake, 2), score=0.0, created_at=at)  # written late, same timestamp
    items, mark = src.fetch(mark)
    assert [it.metadata["feedback_id"] for it in items] == [b]
    assert sorted(mark["seen_at_since"]) == sorted([a, b])
    assert src.fetch(mark)[0] == []


def test_lookback_rereads_feedback_that_became_visible_late(langsmith_fake):
    fake = langsmith_fake
    fake.add_feedback(_run(fake, 1), score=1.0)
    plain, with_lookback = _source(fake), _source(fake, lookback_s=60)
    mark_plain, mark_lb = plain.fetch(None)[1], with_lookback.fetch(None)[1]

    late_ts = fake.tick(0) - timedelta(seconds=10)  # older than what was already collected
    late = fake.add_feedback(_run(fake, 2), score=0.0, created_at=late_ts)
    assert plain.fetch(mark_plain)[0] == []  # documented: without lookback it is missed
    items, mark_lb = with_lookback.fetch(mark_lb)
    assert [it.metadata["feedback_id"] for it in items] == [late]
    assert with_lookback.fetch(mark_lb)[0] == []


def test_only_root_runs_of_the_project_and_the_key_asked_for(langsmith_fake):
    fake = langsmith_fake
    root = _run(fake, 1)
    child = fake.add_run("prod-chat", {"input": "tool call"}, {"output": "42"}, parent_run_id=root, run_type="tool")
    other = _run(fake, 2, project="staging")
    keep = fake.add_feedback(root, "user_score", 1.0)
    fake.add_feedback(root, "correctness", 0.0)
    fake.add_feedback(child, "user_score", 0.0)
    fake.add_feedback(other, "user_score", 0.0)
    no_output = fake.add_run("prod-chat", {"input": "q"}, None, error="boom")
    fake.add_feedback(no_output, "user_score", 0.0)

    src = _source(fake, feedback_key="user_score", name="ls")
    items, mark = src.fetch(None)
    assert [it.metadata["feedback_id"] for it in items] == [keep]
    assert items[0].source == "ls"
    assert src.last_skipped == {"run is not a root run of the project": 1, "run has no outputs": 1}
    assert src.fetch(mark)[0] == []
    assert len(_source(fake).fetch(None)[0]) == 2  # no key filter: user_score and correctness on root


def test_pages_are_followed(langsmith_fake):
    fake = langsmith_fake
    fake.runs_page_size = 20
    n = 230  # > 2 pages of GET /feedback (100) and > 2 chunks of run ids (100)
    ids = {fake.add_feedback(_run(fake, i), score=(i % 10) / 10) for i in range(n)}
    items, mark = _source(fake).fetch(None)
    assert len(items) == n
    assert {it.metadata["feedback_id"] for it in items} == ids
    assert [it.timestamp for it in items] == sorted(it.timestamp for it in items)
    feedback_pages = [q for m, p, q in fake.requests if p == "/feedback"]
    assert [q["offset"] for q in feedback_pages] == [["0"], ["100"], ["200"]]
    runs_pages = [b for m, p, b in fake.requests if p == "/runs/query"]
    assert len(runs_pages) == 12  # 3 chunks (100, 100, 30 ids) x pages of 20
    assert sum("cursor" in b for b in runs_pages) == 9
    assert _source(fake).fetch(mark)[0] == []


def test_503_is_a_transient_error(langsmith_fake):
    fake = langsmith_fake
    fake.add_feedback(_run(fake), score=1.0)
    fake.fail_next(100, status=503)
    t0 = time.monotonic()
    with pytest.raises(TransientError, match=r"LangSmith at http://127\.0\.0\.1:\d+ answered HTTP 503"):
        _source(fake, max_retries=0).fetch(None)
    assert time.monotonic() - t0 < 5


def test_503_mid_pagination_is_transient_and_one_blip_is_retried(langsmith_fake):
    fake = langsmith_fake
    for i in range(150):
        fake.add_feedback(_run(fake, i), score=1.0)
    fake.fail_next(100, status=502, after=2)  # project lookup and feedback page 1 pass, page 2 fails
    with pytest.raises(TransientError, match="HTTP 502"):
        _source(fake, max_retries=1).fetch(None)
    assert [p for _, p, _ in fake.requests] == ["/sessions", "/feedback", "/feedback", "/feedback"]

    fake.clear_failures()
    fake.fail_next(1, status=503, after=2)  # one blip: the SDK's urllib3 retry absorbs it
    assert len(_source(fake).fetch(None)[0]) == 150


def test_401_is_a_user_error_that_says_to_set_the_key(langsmith_fake):
    fake = langsmith_fake
    fake.add_feedback(_run(fake), score=1.0)
    fake.require_api_key("lsv2-right")
    with pytest.raises(UserError) as info:
        _source(fake).fetch(None)
    assert info.value.value == fake.url
    assert "401" in info.value.rule
    assert "API key" in info.value.fix and "LANGSMITH_API_KEY" in info.value.fix
    with pytest.raises(UserError, match="Fix: set the API key"):
        _source(fake, api_key="lsv2-wrong").fetch(None)
    assert len(_source(fake, api_key="lsv2-right").fetch(None)[0]) == 1


def test_403_is_a_user_error(langsmith_fake):
    fake = langsmith_fake
    fake.fail_next(1, status=403)
    with pytest.raises(UserError, match="HTTP 403"):
        _source(fake).fetch(None)


def test_unreachable_server_is_transient(langsmith_fake):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    src = LangSmithSource("prod-chat", api_url=f"http://127.0.0.1:{port}", max_retries=0)
    with pytest.raises(TransientError, match="unreachable"):
        src.fetch(None)


def test_unknown_project_is_a_user_error(langsmith_fake):
    with pytest.raises(UserError, match="is not a project at"):
        LangSmithSource("nope", api_url=langsmith_fake.url).fetch(None)


def test_no_feedback_gives_an_empty_watermark(langsmith_fake):
    langsmith_fake.add_run("prod-chat", {"input": "q"}, {"output": "a"})
    assert _source(langsmith_fake).fetch(None) == ([], {})


@pytest.mark.parametrize("inputs, expected", [
    ({"messages": [{"role": "user", "content": "hi"}]}, [("user", "hi")]),
    ({"messages": [{"type": "system", "content": "s"}, {"type": "human", "content": "h"},
                   {"type": "ai", "content": "a"}, {"type": "human", "content": "h2"}]},
     [("system", "s"), ("user", "h"), ("assistant", "a"), ("user", "h2")]),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "part1 "}, {"type": "text", "text": "2"}]}]},
     [("user", "part1 2")]),
    ({"messages": [{"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "HumanMessage"],
                    "kwargs": {"content": "serialized", "type": "human"}}]}, [("user", "serialized")]),
    ({"messages": [{"type": "human", "data": {"content": "to_dict form"}}]}, [("user", "to_dict form")]),
    ({"input": "plain"}, [("user", "plain")]),
    ({"question": "why?", "context": "docs"}, [("user", "why?")]),
    ({"prompt": "p"}, [("user", "p")]),
    ({"prompts": ["llm prompt"]}, [("user", "llm prompt")]),
    ({"text": "only key"}, [("user", "only key")]),
    ({"a": 1, "b": [2]}, [("user", '{"a": 1, "b": [2]}')]),
])
def test_input_shapes(inputs, expected):
    assert [(m["role"], m["content"]) for m in messages_from_inputs(inputs)] == expected


@pytest.mark.parametrize("outputs, expected", [
    ({"output": "o"}, "o"),
    ({"answer": "a", "sources": []}, "a"),
    ({"choices": [{"message": {"role": "assistant", "content": "c"}}]}, "c"),
    ({"choices": [{"text": "legacy"}]}, "legacy"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "last"}]}, "last"),
    ({"messages": [{"type": "human", "content": "u"}, {"type": "ai", "content": "lc"}]}, "lc"),
    ({"generations": [[{"text": "gen"}]]}, "gen"),
    ({"generations": [[{"text": "", "message": {"type": "ai", "content": "gm"}}]]}, "gm"),
    ({"output": {"type": "ai", "content": "msg"}}, "msg"),
    ({"role": "assistant", "content": "bare"}, "bare"),
    ({"x": 1}, '{"x": 1}'),
    (None, ""),
])
def test_output_shapes(outputs, expected):
    assert response_from_outputs(outputs) == expected
