"""LLM-as-judge: tolerant parsing, the HTTP client against a fake endpoint, reports, groundedness, gates."""

from __future__ import annotations

import json
import socket
import time

import pytest
from fakes.openai_server import Hang, Raw, Status, fake_openai
from pydantic import ValidationError

from tuneloop.errors import UserError
from tuneloop.evals.judge import (
    DEFAULT_RUBRICS, GROUNDEDNESS, PEDAGOGY, SAFETY, JudgeClient, JudgeReport, Rubric, RubricGate, RubricResult,
    build_messages, check_rubrics, groundedness, hallucination_rate, judge, normalize_score, parse_judgement,
)

KEY = "sk-test-123"
MODEL = "judge-model-x"


@pytest.fixture
def ai():
    with fake_openai(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def client(ai):
    with JudgeClient(ai.url, MODEL, api_key=KEY, timeout=2, max_retries=2, backoff=0.01) as c:
        yield c


def item(id: str, marker: str = "", **kw) -> dict:
    return {"id": id, "prompt": f"Explain photosynthesis {marker}".strip(), "answer": "Plants make sugar from light.",
            **kw}


# --------------------------------------------------------------------------- parsing

PARSE_TABLE = [
    # (reply, expected score, substring of the reason)
    ('{"score": 4, "reason": "clear and safe"}', 4, "clear and safe"),
    ('Here is my verdict:\n```json\n{"score": 5, "reason": "great"}\n```\nThanks.', 5, "great"),
    ('```\n{"score": 2, "reason": "weak"}\n```', 2, "weak"),
    ('{"score": 3, "reason": "ok",}', 3, "ok"),                       # trailing comma
    ("{'score': 2, 'reason': 'meh'}", 2, "meh"),                      # single quotes
    ('{score: 4, reason: "bare keys"}', 4, "bare keys"),
    ('The answer is fine. {"reason": "fine", "score": "4"}', 4, "fine"),  # string score, JSON after prose
    ('{"score": "4/5", "reason": "fraction string"}', 4, "fraction string"),
    ('{"result": {"Score": 1, "Explanation": "unsafe"}}', 1, "unsafe"),  # nested, other key case/name
    ('{"score": 4.5, "reason": "half"}', 4.5, "half"),
    ("Score: 4/5", 4, "Score: 4/5"),
    ("The answer is mostly correct. I'd give it 4 out of 5.", 4, "mostly correct"),
    ("Rating: 4", 4, "Rating: 4"),
    ("**Score:** 3\nReason: partially helpful", 3, "partially helpful"),
    ("Some reasoning first. The score is 2.", 2, "reasoning"),
    ("Final score = 1", 1, "Final"),
    ('{"score": 7, "reason": "too high"}', None, "score 7 is outside 1-5"),
    ("Score: 0", None, "score 0 is outside 1-5"),
    ('{"score": -2}', None, "score -2 is outside 1-5"),
    ("score: 8/10", None, "score 8/10 is on a 1-10 scale, expected 1-5"),
    ('{"score": "excellent", "reason": "words"}', None, "score 'excellent' is not a number"),
    ('{"score": true}', None, "score True is not a number"),
    ('{"score": null}', None, "score None is not a number"),
    ('{"verdict": "good"}', None, "JSON object has no 'score' field (keys: verdict)"),
    ("", None, "reply is empty"),
    ("   \n\t ", None, "reply is empty"),
    (None, None, "reply is empty (None)"),
    ("None", None, "no score found in reply: 'None'"),
    ("null", None, "no score found in reply: 'null'"),
    ("I cannot evaluate this.", None, "no score found in reply: 'I cannot evaluate this.'"),
    ("1/2 of the steps are right", None, "no score found"),           # a fraction that is not on the scale
    ("{{{{ not json", None, "no score found"),
    ('{"score": 4', None, "no score found"),                          # truncated JSON
    ("[4, 5]", None, "no score found"),
    ("blah " * 50_000, None, "no score found in reply: 'blah blah"),   # huge text
    ("{" * 100_000, None, "no score found"),
    ("x" * 200 + " Score: 5/5", 5, "xxx"),
]


@pytest.mark.parametrize("reply,score,reason", PARSE_TABLE, ids=[f"r{i}" for i in range(len(PARSE_TABLE))])
def test_parse_judgement_table(reply, score, reason):
    got_score, got_reason = parse_judgement(reply, 5)
    assert got_score == score
    assert reason in got_reason


def test_no_score_reason_shows_only_the_first_80_chars():
    _, reason = parse_judgement("word " * 1000, 5)
    assert reason.startswith("no score found in reply: '")
    assert len(reason) < 130 and reason.endswith("...'")


def test_parse_uses_the_rubric_scale():
    assert parse_judgement('{"score": 9}', 10) == (9, "")
    assert parse_judgement("Score: 8/10", 10)[0] == 8
    assert parse_judgement('{"score": 4}', 3) == (None, "score 4 is outside 1-3")


@pytest.mark.parametrize("reply", [b"\x00\xff", 12345, ["a"], {"score": 4}, "\x00" * 10, "🙂" * 100,
                                   '{"score": ' + "[" * 5000 + "]" * 5000 + "}", "'" * 1000 + "{", '{"a": "\\'])
def test_parse_never_raises(reply):
    score, reason = parse_judgement(reply, 5)
    assert score is None or 1 <= score <= 5
    assert isinstance(reason, str)


def test_parse_of_a_huge_reply_is_fast():
    t = time.perf_counter()
    parse_judgement("{ 'a': " * 50_000 + "Score: 3", 5)
    parse_judgement(("x " * 200_000) + '{"score": 2}', 5)
    assert time.perf_counter() - t < 3


def test_normalize_and_rubric_validation():
    assert normalize_score(1, 5) == 0 and normalize_score(5, 5) == 1 and normalize_score(4, 5) == 0.75
    assert set(DEFAULT_RUBRICS) == {"safety", "pedagogy", "helpfulness", "groundedness"}
    assert GROUNDEDNESS.needs_passages and not SAFETY.needs_passages
    with pytest.raises(UserError, match="scale_max"):
        Rubric("x", "d", scale_max=1)
    with pytest.raises(UserError, match="rubric name"):
        Rubric("has space", "d")


def test_prompt_carries_rubric_item_reference_and_passages():
    msgs = build_messages(item("a", reference="Light to sugar.", passages=["P one.", "P two."]), PEDAGOGY)
    user = msgs[-1]["content"]
    assert "Rubric: pedagogy" in user and PEDAGOGY.description in user
    assert "<answer>\nPlants make sugar from light.\n</answer>" in user
    assert "<reference>\nLight to sugar.\n</reference>" in user and "[1] P one.\n[2] P two." in user
    assert '{"score": <integer 1-5>' in user and "JSON" in msgs[0]["content"]


# --------------------------------------------------------------------------- judging against the fake

@pytest.mark.server
def test_judge_end_to_end_mixes_good_malformed_and_failing(ai, client):
    ai.script("[[good]]", '{"score": 5, "reason": "safe and clear"}')
    ai.script(("[[fenced]]", "Rubric: safety"), '```json\n{"score": 4, "reason": "fine",}\n```')
    ai.script(("[[fenced]]", "Rubric: pedagogy"), "Explains well. Score: 3/5")
    ai.script("[[garbage]]", "I am unable to grade this.")
    ai.script("[[range]]", '{"score": 9, "reason": "off scale"}')
    ai.script("[[down]]", Status(503))
    ai.script("[[nonjson]]", Raw("<html>Bad gateway</html>", content_type="text/html"))
    ai.script("[[shape]]", Raw('{"choices": []}'))
    ai.script("[[empty]]", Raw(json.dumps({"choices": [{"message": {"content": None}, "finish_reason": "length"}]})))
    ai.script("[[flaky]]", Status(500), Status(502), '{"score": 2, "reason": "vague"}')
    items = [item(i, f"[[{i}]]") for i in ("good", "fenced", "garbage", "range", "down", "nonjson", "shape", "empty")]
    items.append(item("flaky", "[[flaky]]"))

    report = judge(client, items, [SAFETY, "pedagogy"], concurrency=4)

    safety, pedagogy = report["safety"], report["pedagogy"]
    # safety: good=1.0, fenced=0.75; flaky (500, 502, then 2) -> 0.25 for whichever rubric got it first
    assert safety.per_item["good"] == 1.0 and safety.per_item["fenced"] == 0.75
    assert pedagogy.per_item["good"] == 1.0 and pedagogy.per_item["fenced"] == 0.5
    assert sorted([safety.per_item["flaky"], pedagogy.per_item["flaky"]]) == [0.25, 0.25]
    assert safety.n_scored == pedagogy.n_scored == 3
    assert safety.n_failed == pedagogy.n_failed == 6
    assert safety.mean == pytest.approx((1 + 0.75 + 0.25) / 3)
    assert pedagogy.mean == pytest.approx((1 + 0.5 + 0.25) / 3)
    assert safety.failure_rate == pytest.approx(6 / 9)
    reasons = {f["id"]: f["reason"] for f in safety.failures}
    assert set(reasons) == {"garbage", "range", "down", "nonjson", "shape", "empty"}
    assert all(f["rubric"] == "safety" for f in safety.failures)
    assert reasons["garbage"] == "malformed judge reply: no score found in reply: 'I am unable to grade this.'"
    assert reasons["range"] == "malformed judge reply: score 9 is outside 1-5"
    assert reasons["down"].startswith("HTTP 503") and "gave up after 3 attempts" in reasons["down"]
    assert "non-JSON" in reasons["nonjson"] and "Bad gateway" in reasons["nonjson"]
    assert "no choices[0].message.content" in reasons["shape"]
    assert "empty" in reasons["empty"] and "length" in reasons["empty"]
    assert safety.reasons["good"] == "safe and clear"
    assert len(ai.calls("[[down]]")) == 2 * 3          # 2 rubrics x (1 try + 2 retries)
    assert len(ai.calls("[[garbage]]")) == 2           # a malformed reply is not retried
    assert len(report.failures) == 12
    data = json.loads(json.dumps(report.to_json()))
    assert data["model"] == MODEL and data["rubrics"]["safety"]["n_failed"] == 6
    assert list(data["rubrics"]["safety"]["per_item"]) == [i["id"] for i in items]  # input order kept


@pytest.mark.server
def test_500_then_ok_is_retried_and_scored(ai, client):
    ai.script("[[flaky]]", Status(500), Status(500), '{"score": 4, "reason": "ok"}')
    report = judge(client, [item("a", "[[flaky]]")], [SAFETY])
    assert report["safety"].per_item == {"a": 0.75} and report["safety"].n_failed == 0
    assert len(ai.calls("[[flaky]]")) == 3


@pytest.mark.server
def test_429_is_retried_honouring_retry_after(ai, client):
    ai.script("[[busy]]", Status(429, "Rate limit reached", retry_after="0"), '{"score": 5, "reason": "ok"}')
    t = time.perf_counter()
    report = judge(client, [item("a", "[[busy]]")], [SAFETY])
    assert report["safety"].per_item == {"a": 1.0}
    assert len(ai.calls("[[busy]]")) == 2 and time.perf_counter() - t < 1


@pytest.mark.server
def test_retries_spent_is_a_failure_not_a_crash(ai):
    ai.script("[[busy]]", Status(429, "Rate limit reached"))
    with JudgeClient(ai.url, MODEL, api_key=KEY, max_retries=1, backoff=0.01) as c:
        report = judge(c, [item("a", "[[busy]]"), item("b")], [SAFETY])
    assert report["safety"].per_item == {"a": None, "b": 0.5}
    assert report["safety"].failures[0]["reason"].startswith("HTTP 429 Too Many Requests")
    assert "gave up after 2 attempts" in report["safety"].failures[0]["reason"]


@pytest.mark.server
def test_other_4xx_fails_the_item_without_retry(ai, client):
    ai.script("[[long]]", Status(400, "maximum context length exceeded"))
    report = judge(client, [item("a", "[[long]]"), item("b")], [SAFETY])
    assert report["safety"].per_item == {"a": None, "b": 0.5}
    assert "HTTP 400" in report["safety"].failures[0]["reason"]
    assert "maximum context length" in report["safety"].failures[0]["reason"]
    assert len(ai.calls("[[long]]")) == 1


@pytest.mark.server
def test_timeout_is_a_failure_not_a_crash(ai):
    ai.script("[[slow]]", Hang(5))
    t = time.perf_counter()
    with JudgeClient(ai.url, MODEL, api_key=KEY, timeout=0.3, max_retries=1, backoff=0.01) as c:
        report = judge(c, [item("slow", "[[slow]]"), item("fast")], [SAFETY], concurrency=2)
    assert time.perf_counter() - t < 3
    assert report["safety"].per_item == {"slow": None, "fast": 0.5}
    reason = report["safety"].failures[0]["reason"]
    assert "timed out" in reason and "gave up after 2 attempts" in reason


def test_unreachable_endpoint_fails_items_after_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with JudgeClient(f"http://127.0.0.1:{port}/v1", MODEL, max_retries=1, backoff=0.01) as c:
        report = judge(c, [item("a"), item("b")], [SAFETY])
    assert report["safety"].n_failed == 2 and report["safety"].mean is None
    assert "ConnectError" in report["safety"].failures[0]["reason"]


@pytest.mark.parametrize("key", [None, "sk-wrong"])
@pytest.mark.server
def test_401_raises_user_error_naming_url_and_key(ai, key):
    with JudgeClient(ai.url, MODEL, api_key=key, backoff=0.01) as c:
        with pytest.raises(UserError) as e:
            judge(c, [item(str(i)) for i in range(20)], [SAFETY], concurrency=1)
    msg = str(e.value)
    assert f"{ai.url}/chat/completions" in msg and "401" in msg and "API key" in msg and "api_key" in e.value.fix
    assert len(ai.requests) < 20  # aborted instead of failing every item
    if key:
        assert key not in msg


@pytest.mark.server
def test_403_raises_user_error(ai, client):
    ai.script("[[forbidden]]", Status(403, "model not allowed for this key"))
    with pytest.raises(UserError, match="403.*model not allowed"):
        judge(client, [item("a", "[[forbidden]]")], [SAFETY])


@pytest.mark.server
def test_wrong_base_url_raises_user_error(ai):
    base = ai.url.removesuffix("/v1")
    with JudgeClient(base, MODEL, api_key=KEY) as c, pytest.raises(UserError, match="404") as e:
        judge(c, [item("a")], [SAFETY])
    assert "/v1" in e.value.fix


@pytest.mark.server
def test_request_carries_model_rubric_and_bearer_key(ai, client):
    ai.script("[[check]]", '{"score": 4, "reason": "ok"}')
    judge(client, [item("a", "[[check]]", passages=["Chlorophyll absorbs light."])], [PEDAGOGY])
    (req,) = ai.calls("[[check]]")
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == MODEL and body["temperature"] == 0.0
    assert "response_format" not in body  # JSON mode is not assumed
    user = body["messages"][-1]["content"]
    assert "Rubric: pedagogy" in user and PEDAGOGY.description in user and "Chlorophyll absorbs light." in user


@pytest.mark.server
def test_no_key_sends_no_authorization_header():
    with fake_openai() as ai, JudgeClient(ai.url, MODEL) as c:
        judge(c, [item("a")], [SAFETY])
        assert "authorization" not in ai.requests[0]["headers"]
    assert KEY not in repr(JudgeClient("http://x/v1", MODEL, api_key=KEY))


@pytest.mark.server
def test_rubrics_needing_passages_skip_items_without_them(ai, client):
    items = [item("with", passages=["Plants make sugar from light."]), item("without")]
    report = judge(client, items, [SAFETY, GROUNDEDNESS])
    g = report["groundedness"]
    assert g.per_item == {"with": 0.5} and g.n_skipped == 1 and g.n_scored == 1
    assert report["safety"].n_scored == 2 and report["safety"].n_skipped == 0


@pytest.mark.parametrize("items,rubrics,match", [
    ([item("a"), item("a")], [SAFETY], "id repeats"),
    ([{"id": "a", "prompt": "p"}], [SAFETY], "'answer' is missing"),
    ([item("a", passages="one string")], [SAFETY], "passages"),
    ([item("a")], ["kindness"], "not a shipped rubric"),
    ([item("a")], [], "no rubric"),
    ([item("a")], [SAFETY, "safety"], "repeat"),
])
@pytest.mark.server
def test_bad_items_or_rubrics_are_user_errors_before_any_call(ai, client, items, rubrics, match):
    with pytest.raises(UserError, match=match):
        judge(client, items, rubrics)
    assert ai.requests == []


def test_client_rejects_a_non_url():
    with pytest.raises(UserError, match="http"):
        JudgeClient("localhost:8000/v1", MODEL)


@pytest.mark.server
def test_the_fake_speaks_what_the_openai_sdk_expects(ai):
    openai = pytest.importorskip("openai")
    ai.script("[[sdk]]", '{"score": 5, "reason": "sdk"}')
    sdk = openai.OpenAI(base_url=ai.url, api_key=KEY, max_retries=0)
    r = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "[[sdk]]"}])
    assert r.choices[0].message.content == '{"score": 5, "reason": "sdk"}' and r.model == MODEL
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=ai.url, api_key="bad", max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}])


# --------------------------------------------------------------------------- offline groundedness

PASSAGES = [
    "The Eiffel Tower was built between 1887 and 1889 for the World's Fair in Paris.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Paris has a population of about 2,100,000 people and is the capital of France.",
]

GROUNDED_TABLE = [
    # (answer, score, unsupported)
    ("The Eiffel Tower was built for the World's Fair in 1889.", 1.0, []),
    ("Photosynthesis converts light into chemical energy. It stores the energy in glucose.", 1.0, []),
    ("Plants converting light energy into glucose.", 1.0, []),                       # stemming: converting/convert
    ("Paris, the capital of France, has 2100000 people.", 1.0, []),                 # 2,100,000 == 2100000
    ("The Eiffel Tower was built in 1925 for the World's Fair.", 0.0,              # numbers mismatch
     ["The Eiffel Tower was built in 1925 for the World's Fair."]),
    ("The Eiffel Tower is painted bronze every seven years by climbers.", 0.0,      # not in any passage
     ["The Eiffel Tower is painted bronze every seven years by climbers."]),
    ("Photosynthesis converts light energy into glucose. Mitochondria burn glucose to release heat.", 0.5,
     ["Mitochondria burn glucose to release heat."]),
    ("- Paris is the capital of France.\n- The tower was built in 1887.\n- Tokyo hosts the summit.", 2 / 3,
     ["Tokyo hosts the summit."]),
    ("Paris has 2,100,000 people and photosynthesis stores energy in glucose.", 0.0,  # spread over 2 passages
     ["Paris has 2,100,000 people and photosynthesis stores energy in glucose."]),
    ("", 1.0, []),                                                                  # no claims: nothing ungrounded
    ("Sure! Thanks.", 1.0, []),                                                     # filler only
]


@pytest.mark.parametrize("answer,score,unsupported", GROUNDED_TABLE, ids=[f"g{i}" for i in range(len(GROUNDED_TABLE))])
def test_groundedness_table(answer, score, unsupported):
    got, missing = groundedness(answer, PASSAGES)
    assert got == pytest.approx(score)
    assert missing == unsupported
    assert hallucination_rate(answer, PASSAGES) == pytest.approx(1 - score)


def test_groundedness_without_passages_and_coverage_threshold():
    assert groundedness("Paris is the capital of France.", []) == (0.0, ["Paris is the capital of France."])
    claim = "Paris is the capital city of France with museums."   # 3 of 5 content words covered
    assert groundedness(claim, PASSAGES)[0] == 1.0
    assert groundedness(claim, PASSAGES, min_coverage=0.8)[0] == 0.0


def test_groundedness_keeps_abbreviations_and_decimals_in_one_claim():
    passages = ["Light (e.g. sunlight) drives photosynthesis at 3.5 percent efficiency."]
    assert groundedness("Light, e.g. sunlight, drives photosynthesis at 3.50 percent efficiency.", passages) == (1.0, [])


# --------------------------------------------------------------------------- gates

def _result(name: str, scores: list[float | None]) -> RubricResult:
    per_item = {str(i): s for i, s in enumerate(scores)}
    scored = [s for s in scores if s is not None]
    failures = [{"id": k, "rubric": name, "reason": "x"} for k, s in per_item.items() if s is None]
    return RubricResult(name, 5, sum(scored) / len(scored) if scored else None, len(scored), len(failures), 0,
                        per_item, {}, failures)


def _report(**rubrics: list[float | None]) -> JudgeReport:
    return JudgeReport("m", {n: _result(n, s) for n, s in rubrics.items()})


GOOD = [1.0] * 10
GATE_TABLE = [
    # (report, failing checks)
    (_report(safety=GOOD, pedagogy=[0.75, 1.0] * 5), []),
    (_report(safety=[1.0] * 9 + [None], pedagogy=GOOD), []),                 # 10% failures is allowed
    (_report(safety=[0.75] * 10, pedagogy=GOOD), ["safety minimum"]),
    (_report(safety=GOOD, pedagogy=[0.5] * 10), ["pedagogy minimum"]),
    (_report(safety=[1.0] * 7 + [None] * 3, pedagogy=GOOD), ["safety judge failure rate"]),  # 30% unscored
    (_report(safety=[None] * 10, pedagogy=GOOD), ["safety minimum", "safety judge failure rate"]),
    (_report(safety=GOOD), ["pedagogy minimum"]),                              # not judged at all
    (_report(safety=[], pedagogy=GOOD), ["safety minimum", "safety judge failure rate"]),  # all skipped
]


@pytest.mark.parametrize("report,failing", GATE_TABLE, ids=[f"gate{i}" for i in range(len(GATE_TABLE))])
def test_rubric_gate_table(report, failing):
    checks = check_rubrics(report, RubricGate())
    assert all(set(c) >= {"check", "value", "need", "ok"} for c in checks)
    assert [c["check"] for c in checks if not c["ok"]] == failing
    assert all(c.get("reason") for c in checks if not c["ok"])


def test_gate_reason_says_an_unscoring_judge_is_not_evidence():
    checks = check_rubrics(_report(safety=[1.0] * 7 + [None] * 3, pedagogy=GOOD), RubricGate())
    rate = next(c for c in checks if c["check"] == "safety judge failure rate")
    assert rate["value"] == 0.3 and rate["need"] == "<= 0.1"
    assert "could not score 3 of 10 items (30%)" in rate["reason"] and "not evidence of safety" in rate["reason"]
    minimum = next(c for c in checks if c["check"] == "safety minimum")
    assert minimum["ok"] and minimum["value"] == 1.0 and minimum["need"] == ">= 0.9"


def test_rubric_gate_spec():
    gate = RubricGate()
    assert gate.min_scores == {"safety": 0.9, "pedagogy": 0.8} and gate.max_failure_rate == 0.1
    assert RubricGate(min_scores={"helpfulness": 0.5}, max_failure_rate=0.3).min_scores == {"helpfulness": 0.5}
    for bad in ({"min_scores": {"safety": 1.5}}, {"max_failure_rate": -0.1}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            RubricGate(**bad)
