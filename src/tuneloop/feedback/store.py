"""The feedback store: an append-only ledger of items plus one watermark per source.

Idempotent by item id: an item already in the ledger is never added again,
so re-running a collection (or a source that returns an item twice) adds
nothing. Items are written and fsynced before the source's watermark moves,
so a crash between the two only means re-fetching items the ledger drops.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tuneloop.feedback.items import FeedbackItem
from tuneloop.fsutil import atomic_write_text, locked


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120]


class FeedbackStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.ledger = self.root / "items.jsonl"
        self._ids: set[str] | None = None

    def _lock(self):
        return locked(self.root)

    def items(self) -> list[FeedbackItem]:
        """Every stored item, oldest write first. A torn last line (crash mid-append) is ignored."""
        if not self.ledger.exists():
            return []
        out = []
        with self.ledger.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break
                out.append(FeedbackItem.from_json(json.loads(line)))
        return out

    def ids(self) -> set[str]:
        return {i.id for i in self.items()}

    def add(self, items: list[FeedbackItem]) -> list[FeedbackItem]:
        """Append the items not seen before; returns exactly those."""
        with self._lock():
            seen = self.ids()
            new, batch = [], set()
            for it in items:
                if it.id in seen or it.id in batch:
                    continue
                batch.add(it.id)
                new.append(it)
            if new:
                self._truncate_torn_tail()
                with self.ledger.open("a", encoding="utf-8") as fh:
                    fh.write("".join(json.dumps(i.to_json(), ensure_ascii=False) + "\n" for i in new))
                    fh.flush()
                    os.fsync(fh.fileno())
            return new

    def _truncate_torn_tail(self) -> None:
        if not self.ledger.exists():
            return
        data = self.ledger.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.ledger.open("r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    # -- watermarks ------------------------------------------------------------
    def watermark(self, source: str) -> dict | None:
        path = self.root / "watermarks" / f"{_safe(source)}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def set_watermark(self, source: str, mark: dict) -> None:
        atomic_write_text(self.root / "watermarks" / f"{_safe(source)}.json", json.dumps(mark, indent=2))
