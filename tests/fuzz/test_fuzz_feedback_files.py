"""Fuzz the file feedback source (`FileSource`) on JSONL and CSV files.

Inputs are feedback files: rows that are structured but wrong (missing prompt or response, wrong
types, scores out of range, bad timestamps, corrections that are not text, unicode, NUL bytes,
lone surrogates, 140,000-character cells), mixed with lines that are not JSON or CSV at all.

Property: `fetch` never raises; each record becomes an item or one error naming its line, the
problem and the fix (items + errors = records); every item holds what the store and the dataset
builder need; fetching again from the new watermark gives nothing; and (JSONL) reading the file
in two appends gives exactly the items of reading it at once.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter

from fuzzkit import (FUZZ, JUNK_POOL, finish, MESSAGE_POOL, NONEMPTY, NUMBER_POOL, RAW_BYTES_POOL,
                     RAW_LINE_BYTES_FREE, RAW_LINE_TEXT_FREE, RAW_TEXT_POOL, TEXT_POOL, TIMESTAMP_POOL, Tally,
                     check_item, combo, frozen_heap, overwrite, write_lines)
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.slow  # thousands of generated inputs: about a minute each on a busy machine

ERROR = re.compile(r"line (\d+): (.+)\. Fix: (.+)", re.DOTALL)
CSV_COLUMNS = ["prompt", "response", "completion", "messages", "score", "rating", "correction", "comment", "user",
               "tenant", "timestamp", "id"]

GOOD_EXTRAS = [{}, {"score": 0.2}, {"score": 1.0, "user": "u1"}, {"rating": 5, "tenant": "acme"},
               {"rating": 1, "correction": "the right answer"}, {"timestamp": "2026-11-01T10:00:00Z"},
               {"comment": "meh", "user": 7, "id": "row-1"}, {"score": 0.7, "timestamp": "2026-11-02"}]
GOOD_ROWS = [{"prompt": "question", "response": "answer"}, {"prompt": "q", "completion": "c", "score": 0.9},
             {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "hello"}], "rating": 4}]
FIELDS = ["prompt", "response", "completion", "messages", "score", "rating", "correction", "comment", "user", "tenant",
          "timestamp", "id"]
BAD_FIELDS = ([{k: v} for k in FIELDS for v in TEXT_POOL[:24] + JUNK_POOL + NUMBER_POOL]
              + [{"timestamp": t} for t in TIMESTAMP_POOL] + [{"messages": [m]} for m in MESSAGE_POOL[::5]])


def _rows() -> list:
    """Rows that are structured but wrong (and some right), built from the pools: every bad field value on a good
    row and alone, every message variant in a conversation, rows that are not objects."""
    rows = [g | x for g in GOOD_ROWS for x in GOOD_EXTRAS]
    for n, bad in enumerate(BAD_FIELDS):
        rows += [GOOD_ROWS[n % 3] | bad, bad | BAD_FIELDS[(n * 7) % len(BAD_FIELDS)]]
    rows += [{"messages": [m, {"role": "assistant", "content": "answer"}], "score": 0.9} for m in MESSAGE_POOL[::2]]
    rows += [{"messages": [m]} for m in MESSAGE_POOL[1::6]] + JUNK_POOL
    return rows


ROW_CORPUS = _rows()
# Lines and rows come mostly from the corpus (one draw each: hypothesis spends ~40 us a draw, ~100 us a list
# element, and 10,000 files must fit the time budget); one line or row per file is generated, with free text.
LINE_CORPUS = ([json.dumps(r, ensure_ascii=n % 2 == 0).encode("utf-8", "surrogatepass")
                for n, r in enumerate(ROW_CORPUS)]
               + [t.encode("utf-8") for t in RAW_TEXT_POOL] + RAW_BYTES_POOL + [b"", b"  "])
FREE_ROW = st.builds(lambda p, r, x: {"prompt": p, "response": r, **x}, NONEMPTY, NONEMPTY,
                     st.sampled_from(GOOD_EXTRAS))
FREE_LINE = st.one_of(FREE_ROW.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8")), RAW_LINE_TEXT_FREE,
                      RAW_LINE_BYTES_FREE)


def _some(n: int, free, free_last: bool, a, b, c) -> list:
    """n items: n - 1 from the corpus and one generated, first or last (none for n = 0)."""
    if n == 0:
        return []
    head = [a, b, c][: n - 1]
    return head + [free] if free_last else [free] + head


# corpus picks, counts and options in one draw each (fuzzkit.combo), the generated line or row besides
JSONL = st.builds(lambda meta, free: ("jsonl", _some(meta[0], free, *meta[1:5]), meta[5]),
                  combo(range(1, 5), [True, False], LINE_CORPUS, LINE_CORPUS, LINE_CORPUS, [True, False]), FREE_LINE)


def _cell(v) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return "" if v is None else str(v)


def _csv_text(header: list[str], rows: list) -> tuple:
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(header)
    for r in rows:
        w.writerow([_cell(r.get(c)) if isinstance(r, dict) else _cell(r) for c in header])
    return "csv", out.getvalue().encode("utf-8", "surrogatepass"), True


CSV_HEADERS = [
    ["prompt", "response", "score", "rating", "user", "timestamp"], FIELDS, ["messages", "rating"],
    ["prompt", "completion", "score", "tenant", "correction"], ["prompt"], ["response", "prompt", "prompt"],
    ["", "prompt", "response"], ["extra", "prompt", "response", "comment", "id"], ["Prompt", "Response"]]
CSV_FILE = st.builds(lambda meta, free: _csv_text(meta[0], _some(meta[1], free, *meta[2:])),
                     combo(CSV_HEADERS, range(5), [True, False], ROW_CORPUS, ROW_CORPUS, ROW_CORPUS),
                     st.one_of(FREE_ROW, st.sampled_from(ROW_CORPUS)))
CSV_LINES = [b'"unclosed,quote', b"a,b,c,d,e,f,g,h", b'x,"a""b",c', b"\x00,\x00", b'"x' + b"y" * 140_000 + b'",1',
             b"q,a,0.5", b"q,a,7", b'"multi\nline",a,1', b"\xff,\xfe", b",,"] + LINE_CORPUS[::50]
CSV_RAW = st.builds(lambda ab, free: ("csv", b"\n".join([b"prompt,response,score", ab[0], free, ab[1]]) + b"\n", True),
                    combo(CSV_LINES, CSV_LINES), st.one_of(RAW_LINE_TEXT_FREE, RAW_LINE_BYTES_FREE))
INPUT = st.one_of(JSONL, CSV_FILE, CSV_RAW)


def _csv_records(data: bytes) -> int:
    """Records after the header, as the csv module reads them: a malformed one counts as one."""
    reader = csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")))
    n, started = 0, False
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return n
        except csv.Error:
            row = ["malformed"]
        if not started:
            started = True
            continue
        if row:
            n += 1


def _fetch_and_check(source, watermark):
    items, mark = source.fetch(watermark)
    for item in items:
        check_item(item)
    lines = []
    for error in source.last_errors:
        m = ERROR.fullmatch(error)
        assert m and m.group(2).strip() and m.group(3).strip(), error
        lines.append(int(m.group(1)))
    return items, mark, lines


def test_file_source_never_crashes_and_rejects_clearly(tmp_path, fuzz_report):
    from tuneloop.feedback.files import FileSource

    tally = Tally("feedback files (FileSource.fetch, JSONL + CSV)")
    jsonl, csv_path = tmp_path / "feedback.jsonl", tmp_path / "feedback.csv"

    @FUZZ
    @given(INPUT, st.integers(0, 4))
    def run(spec, split):
        kind, body, trailing = spec
        tally.inputs += 1
        if kind == "jsonl":
            path, data = jsonl, write_lines(body, trailing)
            complete = data[: data.rfind(b"\n") + 1]  # a last line without its newline waits for the next fetch
            text = complete.decode("utf-8", "surrogateescape").removeprefix("\ufeff")  # a BOM is not text
            records = sum(1 for line in text.split("\n") if line.strip())
        else:
            path, data = csv_path, body
            records = _csv_records(data)
        overwrite(path, data)
        source = FileSource(path)
        items, mark, error_lines = _fetch_and_check(source, None)
        assert len(items) + len(error_lines) == records, (len(items), source.last_errors, records)
        assert all(1 <= n <= data.count(b"\n") + 1 for n in error_lines)
        tally.records += records
        tally.accepted += len(items)
        for e in source.last_errors:  # the reason without its numbers and values, to count alike ones together
            problem = ERROR.fullmatch(e).group(2).split(" (")[0]
            tally.reject(re.sub(r"0x[0-9a-f]+|(?<![A-Z-])\d+|'.*'", "_", problem)[:50])

        again, mark2, errors2 = _fetch_and_check(source, mark)
        assert again == [] and errors2 == [] and mark2 == mark

        if kind == "jsonl" and split in (1, 2):  # the same file written in two appends
            cut = len(b"\n".join(body[: min(split, len(body))])) + 1
            overwrite(path, data[:cut])
            first, mark_a, errors_a = _fetch_and_check(FileSource(path), None)
            overwrite(path, data)
            second, _, errors_b = _fetch_and_check(FileSource(path), mark_a)
            assert Counter(i.id for i in first + second) == Counter(i.id for i in items)
            assert sorted(errors_a + errors_b) == sorted(error_lines)

    with frozen_heap():
        run()
    finish(tally, fuzz_report)
