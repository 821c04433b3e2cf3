"""Feedback from JSONL and CSV files, read incrementally.

Columns / keys: prompt (or messages), response (or completion), rating (1-5)
or score (0-1), and optional correction, rejected (an A/B choice: the answer shown beside the response that
the user did not pick; rating and score are then optional), comment, user, tenant, timestamp, id.
The watermark is the byte offset after the last complete line plus a hash
of the bytes before it: an appended file is read from there on; a file that
was rewritten is read from the start (the store drops items it already has).
Rows that cannot be read are skipped and listed in `last_errors` as
"line N: <problem>. Fix: <how>" (N is the line the row starts on); the rest
of the file is still read. Bytes that are not UTF-8 and lone surrogate
escapes (which no store line can hold) are such problems of their row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import fields
from pathlib import Path

from tuneloop.data.validate import FIXES, ROLES, parse_line
from tuneloop.errors import UserError
from tuneloop.feedback.items import FeedbackItem, content_id, utc_iso

_HEAD = 4096
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as surrogateescape decodes them
_SHAPE = 'one object per row, e.g. {"prompt": "...", "response": "...", "score": 0.9}'


class RowError(UserError, ValueError):
    """One row that cannot become a feedback item: what is wrong with it and how to fix it. Reported as
    "line N: <problem>. Fix: <fix>" and skipped; the rest of the file is still read."""

    def __init__(self, problem: str, fix: str):
        super().__init__("the row", problem, fix)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.problem}. Fix: {self.fix}"


def _head_hash(data: bytes, offset: int) -> str:
    return hashlib.sha256(data[: min(offset, _HEAD)]).hexdigest()


def _num(value, field: str):
    if value in (None, ""):
        return None
    fix = "ratings are numbers from 1 to 5, scores numbers from 0 to 1"
    if isinstance(value, bool):
        raise RowError(f"{field} {value!r} is not a number", fix)
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise RowError(f"{field} {_short(value)} is not a number", fix) from None


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _text(row: dict, key: str, fix: str) -> str | None:
    """An optional text field: None when absent or empty; otherwise it must be a string."""
    value = row.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RowError(f"{key} is a {type(value).__name__}, not text", fix)
    return value


def _messages(raw) -> list[dict]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise RowError("messages is not valid JSON",
                           'write messages as a JSON list: [{"role": "user", "content": "..."}, ...]') from None
    if not isinstance(raw, list):
        raise RowError(f"messages is a {type(raw).__name__}, not a list of messages",
                       'write messages as a list: [{"role": "user", "content": "..."}, ...]')
    out = []
    for n, m in enumerate(raw, 1):
        if not isinstance(m, dict):
            raise RowError(f"message {n} is a {type(m).__name__}, not an object",
                           'write each message as {"role": "...", "content": "..."}')
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise RowError(f"message {n} has role {_short(role)}", FIXES["role"])
        if not isinstance(content, str) or not content.strip():
            raise RowError(f"message {n} ({role}) has no text content", FIXES["empty_content"])
        out.append({"role": role, "content": content})
    return out


class FileSource:
    def __init__(self, path: str | Path, tenant: str = "default", name: str | None = None,
                 missing_ok: bool = False):
        self.path = Path(path)
        self.tenant, self.missing_ok = tenant, missing_ok
        self.name = name or f"file:{self.path.name}"
        self.last_errors: list[str] = []

    def _row_to_item(self, row, line: int) -> FeedbackItem:
        if not isinstance(row, dict):
            raise RowError(f"the row is a JSON {type(row).__name__}, not an object", f"write {_SHAPE}")
        response = next((row[k] for k in ("response", "completion") if row.get(k) not in (None, "")), None)
        if row.get("messages"):
            msgs = _messages(row["messages"])
            if msgs and msgs[-1]["role"] == "assistant" and response is None:
                response = msgs[-1]["content"]
                msgs = msgs[:-1]
            if not msgs:
                raise RowError("the conversation has no message before the response",
                               "start messages with the user's message the response answers")
            messages = tuple(msgs)
        elif row.get("prompt"):
            prompt = row["prompt"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise RowError(f"prompt {_short(prompt)} is not text", "write the prompt as a non-empty string")
            messages = ({"role": "user", "content": prompt},)
        else:
            raise RowError("no prompt or messages", f"write {_SHAPE}, or a messages list instead of prompt")
        if not isinstance(response, str) or not response.strip():
            raise RowError("no response", "give the model's answer as a non-empty response (or completion) string, "
                                          "or end messages with the assistant's message")
        score, rating = _num(row.get("score"), "score"), _num(row.get("rating"), "rating")
        if score is not None and not 0 <= score <= 1:
            raise RowError(f"score {score} is outside 0-1", FIXES["range"])
        if rating is not None and not 1 <= rating <= 5:
            raise RowError(f"rating {rating} is outside 1-5", FIXES["range"])
        timestamp = None
        if row.get("timestamp") not in (None, ""):
            ts = row["timestamp"]
            try:
                if not isinstance(ts, str):
                    raise TypeError
                timestamp = utc_iso(ts)
            except (TypeError, ValueError, OverflowError):
                raise RowError(f"timestamp {_short(ts)} is not an ISO 8601 time between the years 1 and 9999",
                               "write times like 2026-11-01T10:00:00Z (no zone means UTC), or leave timestamp "
                               "out") from None
        correction = _text(row, "correction", "write the corrected answer as a string")
        if correction is not None and not correction.strip():
            correction = None
        rejected = _text(row, "rejected", "write the answer the user did not pick as a string")
        if rejected is not None and not rejected.strip():
            rejected = None
        if rejected is not None and rejected == response:
            raise RowError("rejected is the same text as the response", "an A/B choice needs two different "
                                                                         "answers; drop rejected, or fix it")
        comment = _text(row, "comment", "write the comment as a string")
        tenant = row.get("tenant") or self.tenant
        if not isinstance(tenant, str) or not tenant.strip():
            raise RowError(f"tenant {_short(tenant)} is not a name", "write the tenant as a non-empty string")
        ident = row.get("id") or content_id([dict(m) for m in messages], response, row.get("user"), timestamp,
                                             score, rating, *([rejected] if rejected else []))
        item = FeedbackItem(
            id=f"{self.name}:{ident}", source=self.name, messages=messages, response=response,
            timestamp=timestamp or utc_iso(None), score=score, rating=rating,
            correction=correction, rejected=rejected, comment=comment,
            user=str(row["user"]) if row.get("user") not in (None, "") else None,
            tenant=tenant, metadata={"line": line},
        )
        try:  # the store appends the item as one UTF-8 line
            json.dumps([getattr(item, f.name) for f in fields(item)], ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError as e:
            raise RowError(f"text holds a lone surrogate escape (\\u{ord(e.object[e.start]):04x}), which UTF-8 "
                           "cannot store", FIXES["encoding"]) from None
        return item

    def _jsonl_rows(self, chunk: str, first_line: int):
        # split on "\n" only: str.splitlines() would also split on U+2028, \x85 and others, which JSON strings
        # may hold raw
        for i, text in enumerate(chunk.split("\n")[:-1]):  # the chunk ends with a newline
            if not text.strip():
                continue
            obj, problem = parse_line(text, first_line + i)
            yield first_line + i, (RowError(problem.message, problem.fix) if problem else obj)

    def _csv_rows(self, header: str, body: str, first_line: int):
        reader = csv.DictReader(io.StringIO(header + body))  # lines end at "\n" only, as line numbers count them
        try:
            reader.fieldnames
        except csv.Error as e:
            raise UserError(str(self.path), f"its CSV header line cannot be read ({e})",
                            "write a first line of column names, e.g. prompt,response,score") from None
        header_lines = reader.line_num
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield first_line + start - header_lines - 1, RowError(
                    f"the CSV record cannot be read ({e})",
                    "quote fields that hold commas, quotes or newlines, and keep each field under 131,072 "
                    "characters")
                continue
            line = first_line + start - header_lines - 1
            bad = next((v for v in row.values() if isinstance(v, str) and _UNDECODABLE.search(v)), None)
            if bad is not None:
                byte = ord(_UNDECODABLE.search(bad).group()) - 0xDC00
                yield line, RowError(f"byte 0x{byte:02x} is not UTF-8", FIXES["encoding"])
                continue
            yield line, row

    def fetch(self, watermark: dict | None) -> tuple[list[FeedbackItem], dict]:
        self.last_errors = []
        if not self.path.exists():
            if self.missing_ok:  # a drop file nobody has written yet: nothing new
                return [], watermark or {"offset": 0, "head": _head_hash(b"", 0)}
            raise FileNotFoundError(f"feedback file {self.path} does not exist")
        data = self.path.read_bytes()
        offset = 0
        if watermark and watermark.get("offset", 0) <= len(data) and \
                _head_hash(data, watermark["offset"]) == watermark.get("head"):
            offset = watermark["offset"]
        end = data.rfind(b"\n") + 1  # only complete lines; a line being written is read next time
        if end <= offset:
            return [], {"offset": offset, "head": _head_hash(data, offset)}
        first_line = data[:offset].count(b"\n") + 1
        chunk = data[offset:end].decode("utf-8", "surrogateescape")  # a bad byte is its row's problem
        if not offset:
            chunk = chunk.removeprefix("\ufeff")  # the byte order mark spreadsheet programs write
        if self.path.suffix.lower() == ".csv":
            header = data[: data.find(b"\n") + 1].decode("utf-8", "surrogateescape").removeprefix("\ufeff")
            body = chunk if offset else chunk[len(header):]
            numbered = self._csv_rows(header, body, first_line if offset else 2)
        else:
            numbered = self._jsonl_rows(chunk, first_line)
        items = []
        for line, row in numbered:
            try:
                if isinstance(row, RowError):
                    raise row
                items.append(self._row_to_item(row, line))
            except RowError as e:
                self.last_errors.append(f"line {line}: {e}")
        return items, {"offset": end, "head": _head_hash(data, end)}
