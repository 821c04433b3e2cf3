"""Feedback from JSONL and CSV files, read incrementally.

Columns / keys: prompt (or messages), response (or completion), rating (1-5)
or score (0-1), and optional correction, comment, user, tenant, timestamp, id.
The watermark is the byte offset after the last complete line plus a hash
of the bytes before it: an appended file is read from there on; a file that
was rewritten is read from the start (the store drops items it already has).
Rows that cannot be read are skipped and listed in `last_errors` with their line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from tuneloop.feedback.items import FeedbackItem, content_id, utc_iso

_HEAD = 4096


def _head_hash(data: bytes, offset: int) -> str:
    return hashlib.sha256(data[: min(offset, _HEAD)]).hexdigest()


def _num(value, field: str):
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field} {value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field} {value!r} is not a number") from None


class FileSource:
    def __init__(self, path: str | Path, tenant: str = "default", name: str | None = None):
        self.path = Path(path)
        self.tenant = tenant
        self.name = name or f"file:{self.path.name}"
        self.last_errors: list[str] = []

    def _row_to_item(self, row: dict, line: int) -> FeedbackItem:
        if row.get("messages"):
            msgs = row["messages"]
            if isinstance(msgs, str):
                msgs = json.loads(msgs)
            if msgs and msgs[-1].get("role") == "assistant" and not row.get("response"):
                row = row | {"response": msgs[-1]["content"]}
                msgs = msgs[:-1]
            messages = tuple({"role": m["role"], "content": m["content"]} for m in msgs)
        elif row.get("prompt"):
            messages = ({"role": "user", "content": str(row["prompt"])},)
        else:
            raise ValueError("no prompt or messages")
        response = row.get("response", row.get("completion"))
        if not isinstance(response, str) or not response.strip():
            raise ValueError("no response")
        score, rating = _num(row.get("score"), "score"), _num(row.get("rating"), "rating")
        if score is not None and not 0 <= score <= 1:
            raise ValueError(f"score {score} is outside 0-1")
        if rating is not None and not 1 <= rating <= 5:
            raise ValueError(f"rating {rating} is outside 1-5")
        timestamp = utc_iso(row.get("timestamp")) if row.get("timestamp") else None
        ident = row.get("id") or content_id([dict(m) for m in messages], response, row.get("user"), timestamp,
                                             score, rating)
        return FeedbackItem(
            id=f"{self.name}:{ident}", source=self.name, messages=messages, response=response,
            timestamp=timestamp or utc_iso(None), score=score, rating=rating,
            correction=row.get("correction") or None, comment=row.get("comment") or None,
            user=str(row["user"]) if row.get("user") not in (None, "") else None,
            tenant=row.get("tenant") or self.tenant, metadata={"line": line},
        )

    def fetch(self, watermark: dict | None) -> tuple[list[FeedbackItem], dict]:
        self.last_errors = []
        if not self.path.exists():
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
        chunk = data[offset:end].decode("utf-8")
        items = []
        if self.path.suffix.lower() == ".csv":
            header = data[: data.find(b"\n") + 1].decode("utf-8")
            body = chunk if offset else chunk[len(header):]
            start = first_line if offset else 2
            rows = list(csv.DictReader(io.StringIO(header + body)))
            numbered = [(start + i, r) for i, r in enumerate(rows)]
        else:
            numbered = []
            for i, text in enumerate(chunk.splitlines()):
                if not text.strip():
                    continue
                try:
                    numbered.append((first_line + i, json.loads(text)))
                except json.JSONDecodeError as e:
                    self.last_errors.append(f"line {first_line + i}: not valid JSON ({e.msg})")
        for line, row in numbered:
            try:
                if not isinstance(row, dict):
                    raise ValueError("the row is not an object")
                items.append(self._row_to_item(row, line))
            except (ValueError, KeyError, TypeError) as e:
                self.last_errors.append(f"line {line}: {e}")
        return items, {"offset": end, "head": _head_hash(data, end)}
