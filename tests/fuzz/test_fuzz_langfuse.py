"""Fuzz what the Langfuse source does with API answers: a score and its trace's observations, as JSON.

Each input is one GET /api/public/v3/scores entry and the GET /api/public/v2/observations entries of
its trace, shaped like the fake server's (tests/fakes/langfuse_server.py) and the real API's: every
score data type and value, subjects of every kind, observation input/output as the raw JSON strings
the v2 API returns (OpenAI messages, content parts, choices, plain text, text that is not JSON, JSON
nested deeper than the parsers recurse), odd metadata, extreme timestamps. They are parsed by the
SDK's own response models, exactly as `api.scores.get_many`/`api.observations.get_many` do, then
turned into a feedback item by `LangfuseSource._item`.

Property: the item is either built, and then holds what the store and the dataset builder need, or
skipped with a reason counted in `last_skipped`; nothing raises.
"""

from __future__ import annotations

import json

from fuzzkit import FUZZ, JUNK_POOL, NONEMPTY, NUMBER_POOL, TEXT_POOL, Tally, check_item, combo, frozen_heap, finish
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.slow  # thousands of generated inputs: about a minute each on a busy machine

TRACE = "t1"
STAMPS = (["2025-01-01T00:00:03.000Z"] * 4 + [
    "2025-01-01T00:00:03", "2025-01-01T00:00:03.5+05:30", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999"])


def _deep(n: int, key: str) -> str:
    return ('{"%s":' % key) * n + '"deep"' + "}" * n if key else "[" * n + '"deep"' + "]" * n


# Inputs and outputs in every shape the source reads (OpenAI messages, content parts, choices, plain text) and
# broken ones, as pools of the raw strings the v2 API sends: one draw each.
CONTENT_POOL = ["hi", "é 👍", "", " ", "\x00", "\ud800", "x" * 10_000, None, 3, [], {"text": "x"},
                [{"type": "text", "text": "part "}, {"type": "text", "text": "two"}], [{"type": "image_url"}],
                [{"text": 5}, "s"]]
ROLE_POOL = ["user", "assistant", "system", "tool", "developer", "", "critic", None, 1]
MESSAGE_POOL = [{"role": r, "content": c} for r in ROLE_POOL for c in CONTENT_POOL] + [None, "s", {}, {"role": "user"}]
GOOD = {"role": "user", "content": "question"}
INPUT_POOL = ([[m] for m in MESSAGE_POOL] + [[GOOD, m] for m in MESSAGE_POOL[::2]] + MESSAGE_POOL[::3]
              + [{k: v} for k in ("messages", "input", "prompt", "question", "x") for v in
                 ([GOOD], [m for m in MESSAGE_POOL[::9]], "text", "", None, 5, {"messages": [GOOD]})]
              + TEXT_POOL[:20] + JUNK_POOL)
OUTPUT_POOL = (TEXT_POOL[:20] + JUNK_POOL + MESSAGE_POOL[::2] + [[GOOD, m] for m in MESSAGE_POOL[::4]]
               + [{k: v} for k in ("content", "output", "answer", "text", "x") for v in CONTENT_POOL]
               + [{"output": {"content": c}} for c in CONTENT_POOL]
               + [{"choices": c} for c in ([], [None], "x", [{"text": ""}], [{"text": "legacy"}],
                                           [{"message": {"role": "assistant"}}],
                                           [{"message": m} for m in MESSAGE_POOL[::7]])])
RAW_POOL = ([None, "{", "NaN", "1" * 5000, "not json", ""] + [json.dumps(v) for v in INPUT_POOL]
            + [_deep(n, k) for n in (300, 600, 990, 3000) for k in ("content", "messages", "")])
RAW_OUT_POOL = [None, "{", "not json", ""] + [json.dumps(v) for v in OUTPUT_POOL] + [_deep(990, "content")]
# the v2 observations API sends input/output as raw strings: JSON text, or text that is not JSON
GOOD_IN = st.builds(lambda t, shape: json.dumps(shape(t)), NONEMPTY,
                    st.sampled_from([lambda t: t, lambda t: [{"role": "user", "content": t}],
                                     lambda t: {"messages": [{"role": "system", "content": "be brief"},
                                                             {"role": "user", "content": t}]}]))
GOOD_OUT = st.builds(lambda t, shape: json.dumps(shape(t)), NONEMPTY,
                     st.sampled_from([lambda t: t, lambda t: {"role": "assistant", "content": t},
                                      lambda t: {"choices": [{"message": {"role": "assistant", "content": t}}]}]))
RAW = st.one_of(GOOD_IN, st.sampled_from(RAW_POOL))
RAW_OUT = st.one_of(GOOD_OUT, st.sampled_from(RAW_OUT_POOL))

OBS_MISC = [
    {"type": "GENERATION", "parent_observation_id": "o0", "is_root_observation": False, "user_id": "u1"},
    {"type": "SPAN", "parent_observation_id": None, "is_root_observation": True, "user_id": None},
    {"type": "GENERATION", "parent_observation_id": None, "is_root_observation": None},
    {"type": "EVENT", "parent_observation_id": "o0", "user_id": "\ud800"},
    {"type": "weird", "is_root_observation": False, "user_id": ""},
]


def _obs(n, start, inp, out, misc) -> dict:
    return {"id": f"o{n}", "trace_id": TRACE, "start_time": start, "project_id": "p", "input": inp, "output": out,
            **misc}


OBSERVATION = st.builds(lambda meta, inp, out: _obs(meta[0], meta[1], inp, out, meta[2]),
                        combo(range(4), STAMPS, OBS_MISC), RAW, RAW_OUT)
# the trace's other observations come prebuilt: the generated one is where the conversation varies
OTHERS = [_obs(n, "2025-01-01T00:00:0%d.000Z" % n, raw_in, raw_out, misc) for n, (raw_in, raw_out, misc) in enumerate([
    (None, None, {"type": "SPAN", "parent_observation_id": None}),
    ('"q"', '"a"', {"type": "GENERATION"}),
    ('[{"role": "user", "content": "q2"}]', '"a2"', {"type": "GENERATION"}),
    ('"root q"', '"root a"', {"type": "SPAN", "is_root_observation": True}),
    ("{", None, {"type": "EVENT"}),
])]
TRACE_OBSERVATIONS = st.builds(lambda main, others: None if others is None else [main, *others], OBSERVATION,
                               st.sampled_from([[], [], [OTHERS[0]], [OTHERS[1]], [OTHERS[0], OTHERS[2]], [OTHERS[3]],
                                                [OTHERS[4], OTHERS[1]], None]))  # None: a trace without any
VALUES = (
    [("NUMERIC", v) for v in (0.0, 0.2, 0.7, 0.9, 1.0, 2.0, 4.0, 5.0) * 6]  # in range, often: items get built
    + [("BOOLEAN", True), ("BOOLEAN", False)] * 5
    + [("NUMERIC", v) for v in NUMBER_POOL if not isinstance(v, bool)]
    + [(k, v) for k in ("CATEGORICAL", "TEXT", "CORRECTION") for v in TEXT_POOL[:8]])
SUBJECTS = [
    {"kind": "trace", "id": TRACE}, {"kind": "trace", "id": TRACE}, {"kind": "trace", "id": TRACE},
    {"kind": "observation", "id": "o1", "trace_id": TRACE}, {"kind": "observation", "id": "o1", "trace_id": TRACE},
    {"kind": "observation", "id": "o9", "trace_id": TRACE}, {"kind": "observation", "id": "o1"},
    {"kind": "session", "id": "s1"}, {"kind": "experiment", "id": "e1"}, None,
]
METADATA = (
    [None, {}] + [{"user_id": u, "tenant": t} for u in ("meta-user", "", 5, ["u"], None, "\ud800")
                  for t in ("acme", "", {"a": 1}, None, " ", "\udc80")]
    + [{"userId": "u2"}, {"user": 0}] + [{"correction": c} for c in TEXT_POOL[:12] + OUTPUT_POOL[::7] + JUNK_POOL])
SCORE_MISC = [
    {"name": "user-feedback", "source": "API", "comment": None},
    {"name": "", "source": "ANNOTATION", "comment": "great"},
    {"name": "\ud800", "source": "EVAL", "comment": "\udc80 broken"},
    {"name": "fb", "source": "API", "comment": ""},
]


def _score(meta) -> dict:
    n, (kind, value), stamp, subject, metadata, misc = meta
    d = {"id": f"s{n}", "project_id": "p", "data_type": kind, "value": value, "timestamp": stamp,
         "environment": "default", "created_at": "2025-01-01T00:00:03.000Z", "updated_at": "2025-01-01T00:00:03.000Z",
         "metadata": metadata, **misc}
    if subject is not None:
        d["subject"] = subject
    return d


# every combination of the score's fields reachable, one draw for all (see fuzzkit.combo)
SCORE = combo(range(4), VALUES, STAMPS, SUBJECTS, METADATA, SCORE_MISC).map(_score)


def test_langfuse_payloads_never_crash(fuzz_report):
    from langfuse.api.observations.types.observations_v2response import ObservationsV2Response
    from langfuse.api.scores.types.get_scores_v3response import GetScoresV3Response
    from pydantic import TypeAdapter
    from tuneloop.feedback import watermark as wm
    from tuneloop.feedback.langfuse import LangfuseSource

    # The SDK's `parse_obj_as` first renames camelCase keys by walking the type hints (~12 ms a page);
    # inputs here are drawn with the field names and validated by the same models directly.
    scores_page, observations_page = TypeAdapter(GetScoresV3Response), TypeAdapter(ObservationsV2Response)
    tally = Tally("langfuse payloads (SDK models + LangfuseSource._item)")
    source = LangfuseSource("http://127.0.0.1:9", "pk-lf-test", "sk-lf-test", tenant="t0")  # never called

    @FUZZ
    @given(SCORE, TRACE_OBSERVATIONS)
    def run(score_json, observations_json):
        tally.inputs += 1
        tally.records += 1
        # the SDK's response models, as for an answer off the wire (the pools hold JSON values only)
        (score,) = scores_page.validate_python({"data": [score_json], "meta": {"limit": 100}}).data
        observations = observations_page.validate_python({"data": observations_json or [], "meta": {}}).data
        # the watermark moves past every fetched entry, skipped or not, whatever its timestamp
        mark = wm.advance(None, None, set(), [(score.id, score.timestamp)], 120.0)
        since, seen, window = wm.start(mark, 120.0)
        assert score.id in seen and window <= since
        source.last_skipped = {}
        item = source._item(score, {TRACE: list(observations)})
        if item is None:
            ((reason, count),) = source.last_skipped.items()
            assert count == 1 and reason.strip()
            tally.reject(reason)
        else:
            assert source.last_skipped == {}
            check_item(item)
            assert item.id == f"langfuse:{score.id}" and item.metadata["trace_id"] == TRACE
            tally.accepted += 1

    with frozen_heap():
        run()
    finish(tally, fuzz_report)
