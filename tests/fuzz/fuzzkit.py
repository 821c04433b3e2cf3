"""What the fuzz tests share: settings, input strategies, the invariants an accepted item must hold, and a tally.

Every surface runs `EXAMPLES` generated inputs with a fixed derandomized seed and no example
database, so a CI run tries exactly the inputs a local run tries.
"""

from __future__ import annotations

import gc
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = 10_000  # the issue's acceptance: at least 10,000 generated inputs per surface

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # one input may hit a slow path (a 200 kB string): fine, the budget is the total
    derandomize=True,  # the same inputs on every run: CI is reproducible
    database=None,  # nothing remembered between runs, for the same reason
    print_blob=True,  # a failure prints the blob that replays it with @reproduce_failure
    # generated files/payloads are large by design (huge strings, deep nesting)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

ROLES = ("system", "user", "assistant", "tool")


@contextmanager
def frozen_heap():
    """Run with every object alive now (the input pools, hypothesis, the SDKs) out of the garbage collector's
    sight: full collections otherwise re-scan the pools' tens of thousands of objects (~10% of a run)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class Tally:
    """How many inputs a surface ran, and how many records it accepted and rejected."""

    surface: str
    inputs: int = 0
    records: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected += n
        self.reasons[reason] = self.reasons.get(reason, 0) + n

    def line(self) -> str:
        recs = f" ({self.records} records)" if self.records != self.inputs else ""
        took = time.perf_counter() - self.started
        return (f"{self.surface}: {self.inputs} inputs{recs}, {self.accepted} accepted, {self.rejected} rejected "
                f"[{took:.1f} s]")


def finish(tally: Tally, fuzz_report) -> None:
    """What every surface asserts once its inputs have run, then its line in the fuzz report."""
    assert tally.inputs >= EXAMPLES
    assert tally.records == tally.accepted + tally.rejected
    assert tally.accepted and tally.rejected  # both branches were exercised
    fuzz_report(tally)


# -- strategies ----------------------------------------------------------------
# Hypothesis spends ~35 us a draw (one_of ~70 us, a text ~50 us) and 40,000 inputs must fit in the
# time budget, so most leaves come from fixed pools of nasty values (one draw each, simplest first so
# a failure shrinks towards the top) and free text is drawn at a few chosen places.

_PRIME = 2**61 - 1


def combo(*pools: list) -> st.SearchStrategy[tuple]:
    """One value from each pool, chosen by a single integer draw: the product of the pools at the price of one
    draw. Hypothesis favours small integers, so the draw is scattered over the product by a multiplication
    modulo its size (a bijection: the prime is coprime to any smaller size) before being read as a mixed-radix
    number, digit k picking from pool k. 0 stays 0, the first of every pool: a failure shrinks towards it."""
    sizes = [len(p) for p in pools]
    total = 1
    for n in sizes:
        total *= n
    assert total < _PRIME

    def pick(i: int) -> tuple:
        i = i * _PRIME % total
        out = []
        for pool, n in zip(pools, sizes):
            i, k = divmod(i, n)
            out.append(pool[k])
        return tuple(out)

    return st.integers(0, total - 1).map(pick)


SURROGATE_TEXT = ["\ud800", "\udfff", "a\udc80b", "\udbff\u00e9"]  # lone: no UTF-8 file or store line can hold them
HUGE_TEXT = ["x" * 1_000, "é" * 10_000, "a b " * 35_000]  # the last is past csv's 131,072-character field limit
TEXT_POOL = ["", " ", "\t", "hello", "é", "👍", "\x00", "nul\x00byte", "\u2028", "line\u2029sep", "\ufeff", "\u202e",
             "\x1c", "\x85", "null", "[]", "{}", '"', "\\", "a,b", 'say "hi"', "multi\nline", "cr\rlf\r\n",
             "2026-11-01T10:00:00Z", "0.9", "5", "NaN", *SURROGATE_TEXT, *HUGE_TEXT]
TEXT = st.one_of(st.sampled_from(TEXT_POOL), st.text(max_size=12))
NONEMPTY = st.text(min_size=1, max_size=12).map(lambda s: s if s.strip() else s + "x")
NUMBER_POOL = [0, 1, 5, 3, 0.0, 1.0, 5.0, 0.7, 0.69, 2.5, -1, 6, 1.0000001, 4.9999, 10**30, 2**63, -0.0,
               float("nan"), float("inf"), float("-inf"), 1e308, 5e-324, 0.1 + 0.2, -7.5, True, False]
NUMBER = st.sampled_from(NUMBER_POOL)
JUNK_POOL = [None, True, False, 0, -1, 1.5, float("nan"), float("inf"), 10**30, "", "x", " ", [], {}, [1], ["a", "b"],
             {"a": 1}, [[]], [[["deep"]]], {"role": "user"}, {"content": "x"}, {"role": "assistant", "content": ""},
             [{"role": "user", "content": "x"}], [None], {"": None}, {"a": {"b": {"c": [1, {"d": None}]}}},
             {"text": "t"}, {"type": "human", "content": 3}, [{"type": "text", "text": "part"}], 2**64,
             "\ud800", ["\udc80"], {"k\ud800": 1}, "é" * 10_000, [0] * 500]
JUNK = st.sampled_from(JUNK_POOL)
ANY_POOL = TEXT_POOL + JUNK_POOL + NUMBER_POOL
ANY = st.sampled_from(ANY_POOL)  # a value of any JSON type, one draw
ROLE_POOL = [*ROLES, "", "User", "bot", "human", "ai", "function", "developer", None, 1, ["user"], {"role": "user"},
             "\ud800"]
ROLE = st.sampled_from(ROLE_POOL)
CONTENT_POOL = ["hi", "é 👍", "nul\x00byte", "\u2028 sep", "x" * 1_000, "", " ", "\t\n", None, 3, [], {"a": 1},
                [{"type": "text", "text": "part"}], "\ud800", "a\udc80b", True]
EXTRA_KEYS_POOL = [{}, {"name": "bob"}, {"tool_calls": [{"id": "1"}]}, {"weight": 0}, {"surprise": 1}]
MESSAGE_POOL = ([{"role": r, "content": c, **x} for r in ROLE_POOL for c in CONTENT_POOL for x in EXTRA_KEYS_POOL]
                + [{"content": c} for c in CONTENT_POOL] + [{"role": r} for r in ROLE_POOL]
                + [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}, {}, *JUNK_POOL])
MESSAGE = st.sampled_from(MESSAGE_POOL)  # a chat message, very often subtly wrong, one draw
GOOD_MESSAGE = st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(ROLES), NONEMPTY)
ANSWER = st.builds(lambda c: {"role": "assistant", "content": c}, NONEMPTY)


def conversation() -> st.SearchStrategy:
    """A messages value: pool messages, sometimes ending with a well-formed answer, or not a list at all."""
    return st.one_of(st.builds(lambda head, end: head + end, st.lists(MESSAGE, max_size=3),
                               st.one_of(st.just([]), ANSWER.map(lambda m: [m]))), JUNK)


TIMESTAMP_POOL = ["2026-11-01T10:00:00Z", "2026-11-01T10:00:00+00:00", "2026-11-01T10:00:00.123456+05:30",
                  "2026-11-01T10:00:00", "2026-11-01", "2026-11-01T10:00:00-14:00", "2026-11-01 10:00:00Z",
                  "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59-01:00",
                  "9999-12-31T23:59:59.999999", "not a date", "", "2026-13-45T99:00:00", "2026-11-01T10:00:00+25:00",
                  1767225600, 1.5, None, [], {"t": 1}, "\ud800", True]
TIMESTAMP = st.sampled_from(TIMESTAMP_POOL)


def deep(n: int, kind: str = "list") -> str:
    """JSON text nested n levels: past the interpreter's recursion limit for n in the thousands."""
    return ("[" * n + "]" * n) if kind == "list" else ('{"a":' * n + "1" + "}" * n)


RAW_TEXT_POOL = ["{", "}", "[1,2", '{"messages": [}', "NaN", "-Infinity", '"just a string"', "42", "null", '{"a": 1,}',
                 "{'single': 'quotes'}", "\ufeff{}", "\x00", "\u2028{}", " ", deep(50), deep(999), deep(1_200),
                 deep(5_000), deep(800, "dict"), deep(5_000, "dict"),
                 '{"rating": ' + "1" * 5_000 + "}",  # past int's 4300-digit limit
                 '{"prompt": "a", "completion": "b", "rating": ' + "9" * 4_400 + "}"]
RAW_BYTES_POOL = [b"\xff\xfe", b'{"prompt": "caf\xe9", "completion": "ok"}', b"\xc3", b"\xed\xa0\x80",
                  b'{"messages": [{"role": "user", "content": "\x80"}]}', b"\xef\xbb\xbf{}"]
RAW_LINE_TEXT_FREE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=30).map(
    lambda s: s.encode("utf-8"))
RAW_LINE_BYTES_FREE = st.binary(max_size=24).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
RAW_LINE_TEXT = st.one_of(RAW_LINE_TEXT_FREE, st.sampled_from([t.encode("utf-8") for t in RAW_TEXT_POOL]))
RAW_LINE_BYTES = st.one_of(RAW_LINE_BYTES_FREE, st.sampled_from(RAW_BYTES_POOL))


def overwrite(path, data: bytes) -> None:
    """Replace a file's bytes without truncating it to zero first (on a disk mounted with `discard`,
    O_TRUNC costs ~2 ms a call: 20 s over a fuzz run)."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def write_lines(lines: list[bytes], trailing_newline: bool) -> bytes:
    return b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")


# -- invariants ----------------------------------------------------------------


def utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_item(item) -> None:
    """An accepted FeedbackItem carries everything the store and the dataset builder need."""
    from tuneloop.data.validate import check_row
    from tuneloop.feedback.items import FeedbackItem

    assert isinstance(item, FeedbackItem)
    assert isinstance(item.id, str) and item.id and isinstance(item.source, str) and item.source
    assert isinstance(item.messages, tuple) and item.messages, item.messages
    for m in item.messages:
        assert set(m) == {"role", "content"}, m
        assert m["role"] in ROLES, m
        assert isinstance(m["content"], str) and m["content"].strip(), m
    assert isinstance(item.response, str) and item.response.strip(), item.response
    stamp = datetime.fromisoformat(item.timestamp)
    assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0), item.timestamp
    assert item.score is None or (isinstance(item.score, float) and 0.0 <= item.score <= 1.0), item.score
    assert item.rating is None or (isinstance(item.rating, float) and 1.0 <= item.rating <= 5.0), item.rating
    assert item.correction is None or (isinstance(item.correction, str) and item.correction.strip()), item.correction
    for name in ("comment", "user"):
        assert getattr(item, name) is None or isinstance(getattr(item, name), str), (name, getattr(item, name))
    assert isinstance(item.tenant, str) and item.tenant, item.tenant
    label, reason = item.label()
    assert label in ("positive", "negative", "neutral") and reason
    # the store appends exactly this line (UTF-8) and reads it back
    line = json.dumps(item.to_json(), ensure_ascii=False).encode("utf-8")
    assert FeedbackItem.from_json(json.loads(line)) == item
    # what the dataset builder writes to sft.jsonl must pass the training-data validator
    answers = [item.response] + ([item.correction] if item.correction else [])
    for answer in answers:
        row = {"messages": [dict(m) for m in item.messages] + [{"role": "assistant", "content": answer}],
               "tenant": item.tenant}
        accepted, issues = check_row(row, 1, item.tenant)  # the builder writes each tenant its own rows
        assert accepted is not None and not issues, [str(i) for i in issues]


def check_user_error(e) -> None:
    """A rejection by exception names the value, the rule and the fix."""
    from tuneloop.errors import UserError

    assert isinstance(e, UserError)
    assert str(e.value).strip() and str(e.rule).strip() and str(e.fix).strip(), (e.value, e.rule, e.fix)
    assert "Fix: " in str(e)
