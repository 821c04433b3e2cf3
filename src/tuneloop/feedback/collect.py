"""Collect from one source into the store: fetch after the watermark, add what is new, move the watermark."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneloop.feedback.items import FeedbackItem, FeedbackPolicy, FeedbackSource
from tuneloop.feedback.store import FeedbackStore


@dataclass
class CollectResult:
    source: str
    fetched: int
    new: list[FeedbackItem]
    errors: list[str] = field(default_factory=list)

    def negatives(self, policy: FeedbackPolicy = FeedbackPolicy()) -> list[tuple[FeedbackItem, str]]:
        out = []
        for it in self.new:
            label, reason = it.label(policy)
            if label == "negative":
                out.append((it, reason))
        return out

    def summary(self, policy: FeedbackPolicy = FeedbackPolicy()) -> dict:
        return {"source": self.source, "fetched": self.fetched, "new": len(self.new),
                "duplicates": self.fetched - len(self.new), "negatives": len(self.negatives(policy)),
                "errors": len(self.errors)}


def collect(source: FeedbackSource, store: FeedbackStore) -> CollectResult:
    items, mark = source.fetch(store.watermark(source.name))
    new = store.add(items)
    store.set_watermark(source.name, mark)
    return CollectResult(source.name, len(items), new, list(getattr(source, "last_errors", [])))
