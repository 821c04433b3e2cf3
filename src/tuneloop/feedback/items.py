"""One feedback item, whatever its source, and the rule that makes it positive or negative."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
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


def content_id(*parts: object) -> str:
    """A stable id for items whose source gives none."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def utc_iso(ts: datetime | str | None) -> str:
    """Normalize a timestamp to ISO 8601 UTC (naive datetimes are taken as UTC)."""
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
