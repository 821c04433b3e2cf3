"""Fuzz what the LangSmith source does with API answers: a feedback and the run it points at, as JSON.

Each input is one GET /feedback entry and one POST /runs/query run shaped like the fake server's
(tests/fakes/langsmith_server.py) and the real API's: run inputs and outputs in every chat format the
source reads (OpenAI, LangChain type/lc/data forms, generations, content parts) and in junk forms,
scores of every JSON type, corrections as text or objects, odd metadata, extreme timestamps. They are
parsed by the SDK's own schemas, exactly as `Client.list_feedback`/`list_runs` do, then turned into a
feedback item by `LangSmithSource._item`.

Property: the item is either built, and then holds what the store and the dataset builder need, or
skipped with a reason counted in `last_skipped`; nothing raises.
"""

from __future__ import annotations

import uuid

from fuzzkit import ANY_POOL, FUZZ, JUNK_POOL, TEXT_POOL, Tally, check_item, combo, frozen_heap, finish
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.slow  # thousands of generated inputs: about a minute each on a busy machine

PROJECT = str(uuid.UUID(int=1))
RUN = str(uuid.UUID(int=2))
OTHER = str(uuid.UUID(int=3))
STAMPS = (["2026-11-24T10:00:00+00:00"] * 4 + [
    "2026-11-24T10:00:00Z", "2026-11-24T10:00:00", "2026-11-24T10:00:00.5+05:30", "2026-11-24T10:00:00-14:00",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59.999999"])


def nested(n: int, key: str) -> dict:
    """{key: {key: ... "deep"}} n levels: JSON decodes up to ~990 levels, parsers that recurse may not."""
    out: object = "deep"
    for _ in range(n):
        out = {key: out} if key else [out]
    return out if isinstance(out, dict) else {"messages": out}


DEEP = [nested(n, k) for n in (300, 600, 990) for k in ("output", "messages", "message", "")]

# Messages in every format the source reads (OpenAI, LangChain type/data/serialized forms, content parts) and
# broken variants; inputs and outputs are drawn from pools built from them: one draw each.
CONTENT_POOL = ["hi", "", " ", "\x00", "\ud800", "é" * 10_000, None, 3, [], ["a", "b"], {"text": "x"},
                [{"type": "text", "text": "part "}, {"type": "text", "text": "two"}], [{"type": "image_url"}],
                [{"text": 5}, "s"]]
ROLE_POOL = ["user", "assistant", "system", "tool", "developer", "function", "human", "ai", "", "critic", "User",
             None, 1, ["user"]]
LC_TYPES = ["human", "ai", "system", "tool", "function", "chat", "AIMessageChunk", "generic", "", 3, None]
MESSAGE_POOL = (
    [{"role": r, "content": c} for r in ROLE_POOL for c in CONTENT_POOL]
    + [{"type": t, "content": c} for t in LC_TYPES for c in CONTENT_POOL[:8]]
    + [{"type": t, "data": {"content": c}} for t in LC_TYPES for c in CONTENT_POOL[:8]]
    + [{"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", cls],
        "kwargs": {"content": c, "type": t, "role": "critic"}}
       for cls in ("HumanMessage", "AIMessage", "ChatMessage", "X") for t in ("human", "ai", None)
       for c in ("k", "", 1)]
    + [{"lc": 1, "id": [], "kwargs": {}}, {"lc": 1, "id": [1], "kwargs": {"type": 2}}, {"lc": None, "kwargs": "x"},
       {"role": "user"}, {"content": "no role"}, {"data": "x"}, {}, None, "a string", 7, [], [{"role": "user"}]]
)
GOOD = {"role": "user", "content": "question"}
MESSAGES_POOL = ([[m] for m in MESSAGE_POOL] + [[GOOD, m] for m in MESSAGE_POOL[::3]]
                 + [[[m, GOOD]] for m in MESSAGE_POOL[::5]]  # batched: [[msg, ...]]
                 + [["llm prompt"], ["a", "b"], [], [[]], "plain", "", None, 5, {"role": "user", "content": "one"}])
INPUT_KEYS = ["messages", "input", "question", "prompt", "query", "prompts", "text", "context", "x"]
INPUT_POOL = ([{k: v} for k in INPUT_KEYS for v in MESSAGES_POOL]
              + [{}, {"a": 1, "b": [2]}, {"question": "why?", "context": "docs"}, {"input": None, "y": 2},
                 {"messages": [], "input": "fallback"}, {"a": "x" * 140_000}, {"k\ud800": "v"}, *DEEP])
# the generated part: free text in the places the source reads, in each input format
FREE_TEXT = st.text(max_size=12)
FREE_INPUTS = st.builds(lambda t, shape: shape(t), FREE_TEXT, st.sampled_from([
    lambda t: {"input": t}, lambda t: {"question": t, "context": "docs"}, lambda t: {"prompts": [t]},
    lambda t: {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": t}]},
    lambda t: {"messages": [{"type": "human", "content": t}]},
    lambda t: {"messages": [[{"type": "human", "content": t}]]},
    lambda t: {"messages": [{"role": "user", "content": [{"type": "text", "text": t}]}]},
    lambda t: {"messages": [{"type": "human", "data": {"content": t}}]}, lambda t: {"anything": t}]))
INPUTS = st.one_of(st.sampled_from(INPUT_POOL + [None]), FREE_INPUTS)
OUTPUT_KEYS = ["output", "answer", "response", "content", "text", "result", "completion", "message", "messages",
               "generations", "choices", "role", "type", "x"]
OUTPUT_VALUES = (TEXT_POOL[:12] + MESSAGE_POOL[::4] + MESSAGES_POOL[::6] + JUNK_POOL
                 + [[[{"text": t, "message": m}]] for t in ("", "gen", None) for m in MESSAGE_POOL[::20]]
                 + [[{"message": m}] for m in MESSAGE_POOL[::10]] + [[{"text": "legacy"}], [None], [[]], [{}]])
OUTPUT_POOL = ([{k: v} for k in OUTPUT_KEYS for v in OUTPUT_VALUES]
               + [{"choices": c} for c in ([], [None], "x", [{"text": ""}], [{"message": {"role": "assistant"}}])]
               + [{"text": "", "message": {"type": "ai", "content": "gm"}}, {"answer": "a", "sources": []},
                  {"output": "x" * 140_000}, {"output": "\udc80"}, *DEEP])
FREE_OUTPUTS = st.builds(lambda t, shape: shape(t), FREE_TEXT, st.sampled_from([
    lambda t: {"output": t}, lambda t: {"answer": t, "sources": []}, lambda t: {"output": {"type": "ai", "content": t}},
    lambda t: {"choices": [{"message": {"role": "assistant", "content": t}}]},
    lambda t: {"generations": [[{"text": t}]]},
    lambda t: {"generations": [[{"text": "", "message": {"type": "ai", "content": t}}]]},
    lambda t: {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": t}]},
    lambda t: {"role": "assistant", "content": t}, lambda t: {"x": t}]))
OUTPUTS = st.one_of(st.sampled_from(OUTPUT_POOL + [None]), FREE_OUTPUTS)
EXTRAS = ([None, {}, {"metadata": None}, {"metadata": "x"}, {"user_id": 5}, {"user": [1]}]
          + [{"metadata": {"user_id": u, "tenant": t}} for u in ANY_POOL[::3] for t in ANY_POOL[::4]])
SCORES = ([None, True, False, 0, 1, 5, 3, 0.0, 0.7, 0.69, 1.0, 2.5, 5.0, 5.0001, -1, 6, 10**18,
          float("nan"), float("inf"), float("-inf"), 1e308, -0.0, 5e-324, 0.123, 0.999999, 1.000001, 4.5, -1e-300])
VALUES = ([None, True, 0, 1.5, float("nan"), "", "good", "\ud800", {}, {"a": [1, {"b": None}]},
          {"x": "\ud800"}, {"deep": nested(300, "v")}])
CORRECTIONS = ([None, "", " ", "\ud800", {}, {"outputs": {"output": "fixed"}}, {"output": ""},
                {"choices": [{"message": {"role": "assistant", "content": "c"}}]}, {"x": 1},
                {"messages": [{"role": "user", "content": "u"}]}] + TEXT_POOL + OUTPUT_POOL[::97])

# fields the source only copies are drawn as one preset each: every draw costs time, and 10,000 inputs must fit
RUN_MISC = [
    {"name": "chat", "run_type": "chain", "session_id": PROJECT},
    {"name": "", "run_type": "llm", "session_id": None, "error": "boom"},
    {"name": "\ud800", "run_type": "tool", "session_id": PROJECT, "end_time": None},
    {"name": "é" * 10_000, "run_type": "chain", "session_id": PROJECT, "tags": ["a"]},
]
FEEDBACK_MISC = [
    {"key": "user_score", "comment": None, "feedback_source": {"type": "api", "metadata": {}, "user_id": None}},
    {"key": "", "comment": "great", "feedback_source": None, "session_id": None},
    {"key": "\ud800", "comment": "\udc80", "feedback_source": {"type": "\ud800"}, "session_id": PROJECT},
    {"key": "k", "comment": "", "feedback_source": {"type": "model", "metadata": {"x": [1]}}, "trace_id": None},
]


def _run(inputs, outputs, meta) -> dict:
    extra, start, misc = meta
    return {"id": RUN, "trace_id": RUN, "start_time": start, "inputs": inputs, "outputs": outputs, "extra": extra,
            "parent_run_id": None, **misc}


def _feedback(meta) -> dict:
    n, created, run_id, score, value, correction, misc = meta
    return {"id": str(uuid.UUID(int=1000 + n)), "created_at": created, "modified_at": created, "run_id": run_id,
            "trace_id": RUN, "score": score, "value": value, "correction": correction, "session_id": PROJECT, **misc}


# the fields around the conversation: every combination reachable, one draw for all (see fuzzkit.combo)
RUN_JSON = st.builds(_run, INPUTS, OUTPUTS, combo(EXTRAS, STAMPS, RUN_MISC))
FEEDBACK_JSON = st.builds(_feedback, combo(range(4), STAMPS, [RUN] * 6 + [None, OTHER], SCORES, VALUES, CORRECTIONS,
                                           FEEDBACK_MISC))


def test_langsmith_payloads_never_crash(fuzz_report):
    from langsmith import schemas
    from tuneloop.feedback import watermark as wm
    from tuneloop.feedback.langsmith import LangSmithSource

    tally = Tally("langsmith payloads (SDK schemas + LangSmithSource._item)")
    source = LangSmithSource("prod-chat", api_url="http://127.0.0.1:9", tenant="t0")  # never called

    @FUZZ
    @given(RUN_JSON, FEEDBACK_JSON)
    def run(run_json, feedback_json):
        tally.inputs += 1
        tally.records += 1
        run = schemas.Run(**run_json)  # what Client.list_runs yields
        feedback = schemas.Feedback(**feedback_json)  # what Client.list_feedback yields
        # the watermark moves past every fetched entry, skipped or not, whatever its timestamp
        mark = wm.advance(None, None, set(), [(str(feedback.id), feedback.created_at)], 120.0)
        since, seen, window = wm.start(mark, 120.0)
        assert str(feedback.id) in seen and window <= since
        source.last_skipped = {}
        item = source._item(feedback, {str(run.id): run})
        if item is None:
            ((reason, count),) = source.last_skipped.items()
            assert count == 1 and reason.strip()
            tally.reject(reason)
        else:
            assert source.last_skipped == {}
            check_item(item)
            assert item.id == f"langsmith:{run.id}:{feedback.id}"
            tally.accepted += 1

    with frozen_heap():
        run()
    finish(tally, fuzz_report)
