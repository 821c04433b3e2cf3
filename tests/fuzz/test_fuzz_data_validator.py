"""Fuzz the training-data validator (`validate_file`) and what stands on it (`prepare_dataset`).

Inputs are JSONL files of 1-4 lines: rows that are structured but wrong (missing roles, wrong types,
empty content, huge strings, unicode, NUL bytes, lone surrogates, nested junk) mixed with lines that
are not JSON at all (random text, random bytes, nesting past the recursion limit, 5000-digit numbers).

Property: the validator never raises; every non-blank line becomes a valid row or at least one issue
naming its line, rule and fix (rows + rejected lines = lines); every accepted row has what training
needs; `prepare_dataset` returns a dataset or raises a `UserError` with a rule and a fix.
"""

from __future__ import annotations

import json

from fuzzkit import (ANY_POOL, FUZZ, JUNK_POOL, finish, MESSAGE_POOL, NONEMPTY, NUMBER_POOL, RAW_BYTES_POOL,
                     RAW_LINE_BYTES_FREE, RAW_LINE_TEXT_FREE, RAW_TEXT_POOL, ROLES, Tally, check_user_error, combo,
                     frozen_heap, overwrite, utf8, write_lines)
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.slow  # thousands of generated inputs: about a minute each on a busy machine

GOOD_EXTRAS = [{}, {"rating": 1}, {"rating": 5, "tenant": "acme"}, {"score": 0.7}, {"score": 0},
               {"score": 1.0, "rating": 2.5}, {"tenant": "t é"}, {"metadata": {"a": [1]}}]
BAD_EXTRAS = [*({k: v} for k in ("rating", "score", "tenant") for v in NUMBER_POOL + JUNK_POOL),
              {"rating": 3, "score": 2}, {"tenant": ""}, {"tenant": "\ud800"}, {"id": 1, "user": None}]
OK_CHAT = [{"role": "user", "content": "question"}, {"role": "assistant", "content": "answer"}]


def _rows() -> list:
    """Rows that are structured but wrong (and some right), built from the pools: every message variant in a
    conversation, every bad field value on a good row, every value of any type in every field."""
    rows: list = []
    for m in MESSAGE_POOL:
        rows += [{"messages": [m, OK_CHAT[1]]}, {"messages": [m]}]
    for x in BAD_EXTRAS + GOOD_EXTRAS:
        rows += [{"messages": OK_CHAT, **x}, {"prompt": "p", "completion": "c", **x}]
    for v in ANY_POOL:
        rows += [{"messages": v}, {"prompt": v, "completion": "c"}, {"prompt": "p", "completion": v}, {"prompt": v}, v]
    return rows


# Lines come mostly from a corpus (one draw each: hypothesis spends ~40 us a draw and 10,000 files must fit
# the time budget); generated lines add free text: valid rows, random text, random bytes.
LINE_CORPUS = ([json.dumps(r, ensure_ascii=n % 2 == 0).encode("utf-8", "surrogatepass") for n, r in enumerate(_rows())]
               + [t.encode("utf-8") for t in RAW_TEXT_POOL] + RAW_BYTES_POOL + [b"", b"   ", b"\t"])
VALID_LINE = st.builds(lambda u, a, x: json.dumps({"messages": [{"role": "user", "content": u},
                                                               {"role": "assistant", "content": a}], **x},
                                                  ensure_ascii=False).encode("utf-8"),
                       NONEMPTY, NONEMPTY, st.sampled_from(GOOD_EXTRAS))
FREE_LINE = st.one_of(VALID_LINE, RAW_LINE_TEXT_FREE, RAW_LINE_BYTES_FREE)


def _file(meta: tuple, free: bytes):
    """n lines: n - 1 from the corpus and one generated, first or last; with or without a final newline."""
    n, free_last, a, b, c, trailing, max_tokens = meta
    lines = [a, b, c][: n - 1]
    return (lines + [free] if free_last else [free] + lines), trailing, max_tokens


# the corpus lines, their number and the options in one draw (fuzzkit.combo), the generated line in a few
FILE = st.builds(_file, combo(range(1, 5), [True, False], LINE_CORPUS, LINE_CORPUS, LINE_CORPUS, [True, False],
                              [None, None, 40]), FREE_LINE)


def _count_tokens(messages: list[dict]) -> int:
    return sum(len(m["content"]) for m in messages)


def test_validator_never_crashes_and_rejects_clearly(tmp_path, fuzz_report):
    from tuneloop.data import prepare_dataset, validate_file
    from tuneloop.data.validate import FIXES
    from tuneloop.errors import UserError
    from tuneloop.specs import DataSpec

    tally = Tally("data validator (validate_file + prepare_dataset)")
    path = tmp_path / "data.jsonl"
    spec = DataSpec(min_examples=1)

    @FUZZ
    @given(FILE)
    def run(file):
        lines, trailing, max_tokens = file
        data = write_lines(lines, trailing)
        overwrite(path, data)
        tally.inputs += 1
        report = validate_file(path, min_examples=1, max_tokens=max_tokens,
                               count_tokens=_count_tokens if max_tokens else None)

        # a byte order mark opening the file is not part of line 1
        text = [raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff" if n == 1 else "")
                for n, raw in enumerate(lines, 1)]
        non_blank = {n for n, t in enumerate(text, 1) if t.strip()}
        assert report.lines_read == data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        accepted = {r.line for r in report.rows}
        rejected = {i.line for i in report.issues if i.line}
        assert not accepted & rejected and len(accepted) == len(report.rows)
        assert accepted | rejected == non_blank, (accepted, rejected, non_blank)
        tally.records += len(non_blank)
        tally.accepted += len(accepted)
        for issue in report.issues:
            assert issue.rule in FIXES and issue.fix and issue.message.strip(), issue
            assert 0 <= issue.line <= len(lines)
            assert str(issue).endswith(issue.fix)
        for n in rejected:
            tally.reject(next(i.rule for i in report.issues if i.line == n))
        for row in report.rows:
            assert row.messages and any(m["role"] == "assistant" for m in row.messages)
            for m in row.messages:
                assert m["role"] in ROLES and isinstance(m["content"], str) and utf8(m["content"]), m
            assert row.rating is None or 1 <= row.rating <= 5
            assert row.score is None or 0 <= row.score <= 1
            assert isinstance(row.tenant, str) and row.tenant and utf8(row.tenant)
            assert isinstance(row.answer, str) and row.key and row.prompt_key
            json.dumps(row.to_json(), ensure_ascii=False).encode("utf-8")  # what PreparedDataset.save writes
            if max_tokens:
                assert row.n_tokens is not None and row.n_tokens <= max_tokens
        json.dumps(report.to_dict())  # what `tuneloop data validate --report` writes

        if not report.ok and tally.inputs % 10:
            return  # prepare_dataset re-reads the file and raises on these errors: checked on every 10th input
        try:
            ds = prepare_dataset(path, spec, count_tokens=_count_tokens if max_tokens else None,
                                 max_tokens=max_tokens)
        except UserError as e:
            check_user_error(e)
            assert not report.ok or "no training rows are left" in str(e), str(e)
        else:
            assert report.ok and ds.train and len(ds.version) == 64
            for split in (ds.train, ds.validation, ds.test, ds.eval_rows):
                for row in split:
                    json.dumps(row.to_json(), ensure_ascii=False).encode("utf-8")

    with frozen_heap():
        run()
    finish(tally, fuzz_report)
