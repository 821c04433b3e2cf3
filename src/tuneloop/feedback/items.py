"""One feedback item, whatever its source, and the rule that makes it positive or negative."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Protocol


@dataclass(frozen=True)
class FeedbackPolicy:
    """When an item is a positive training example or a negative.

    score (0-1) at or above `min_score` is positive, below is negative; a
    rating (1-5) below `min_rating` is negative. An item with neither is
    neutral: kept for lineage, not trained on.
    """

    min_score: float = 0.7
    min_rating: float = 3.0


@dataclass(frozen=True)
class FeedbackItem:
    id: str  # unique across sources, e.g. "langsmith:<run id>:<feedback key>"
    source: str  # the source's name, e.g. "file:feedback.jsonl", "langsmith:prod-chat"
    messages: tuple  # the conversation before the response: ({"role": ..., "content": ...}, ...)
    response: str
    timestamp: str  # ISO 8601, UTC
    score: float | None = None
    rating: float | None = None
    correction: str | None = None
    rejected: str | None = None  # an A/B choice: the answer shown beside `response` that the user did not pick
    comment: str | None = None
    user: str | None = None
    tenant: str = "default"
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt(self) -> str:
        """The last user message: what drift detection and reports look at."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""

    def label(self, policy: FeedbackPolicy = FeedbackPolicy()) -> tuple[str, str]:
        """("positive" | "negative" | "neutral", reason)."""
        if self.rating is not None and self.rating < policy.min_rating:
            return "negative", f"rating {self.rating:g} < {policy.min_rating:g}"
        if self.score is not None:
            if self.score < policy.min_score:
                return "negative", f"score {self.score:g} < {policy.min_score:g}"
            return "positive", f"score {self.score:g} >= {policy.min_score:g}"
        if self.rating is not None:
            return "positive", f"rating {self.rating:g} >= {policy.min_rating:g}"
        return "neutral", "no score or rating"

    def to_json(self) -> dict:
        d = asdict(self)
        d["messages"] = [dict(m) for m in self.messages]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "FeedbackItem":
        d = dict(d)
        d["messages"] = tuple(dict(m) for m in d.get("messages", ()))
        return cls(**d)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(value):
    """`value` with every lone surrogate (half of a UTF-16 pair, which JSON can escape but UTF-8 cannot
    encode) replaced by U+FFFD, so the store can write it. Text from hosted APIs is cleaned this way:
    one broken emoji must not stop a collection."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(storable(v) for v in value)
    return value


def storable_item(item: "FeedbackItem") -> "FeedbackItem":
    """The item with its text made storable (see `storable`); the same object when nothing needed it."""
    try:  # the fields as they are (no deep copy): most items need nothing
        json.dumps([getattr(item, f.name) for f in fields(item)], ensure_ascii=False, default=str).encode("utf-8")
        return item
    except UnicodeEncodeError:
        return FeedbackItem.from_json(storable(item.to_json()))


def content_id(*parts: object) -> str:
    """A stable id for items whose source gives none."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def utc_iso(ts: datetime | str | None) -> str:
    """Normalize a timestamp to ISO 8601 UTC (naive datetimes are taken as UTC).

    Raises ValueError for a string that is not ISO 8601 and OverflowError for a time whose UTC
    equivalent falls outside the years 1-9999 (0001-01-01T00:00:00+01:00)."""
    if ts is None:
        return datetime.now(timezone.utc).isoformat()
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat()


class FeedbackSource(Protocol):
    """Anything that yields feedback incrementally.

    `fetch(watermark)` returns the items after `watermark` (None: from the
    start) and the new watermark, a small JSON-able dict the collector stores
    only after the items are safely written. Sources may return an item again
    (at-least-once); the store drops items whose id it has seen.
    """

    name: str

    def fetch(self, watermark: dict | None) -> tuple[list[FeedbackItem], dict]: ...
