"""The feedback store: an append-only ledger of items plus one watermark per source.

Idempotent by item id: an item already in the ledger is never added again,
so re-running a collection (or a source that returns an item twice) adds
nothing. Items are written and fsynced before the source's watermark moves,
so a crash between the two only means re-fetching items the ledger drops.

With a shared state (`TUNELOOP_STATE_STORE`, tuneloop.runtime.shared) every batch of new items is also an
object of its own under `feedback/items/`, named by the digest of its bytes, written before the ledger: a
machine that never received an item (a GPU worker building its tenant's dataset) reads every machine's
items, and a write retried after a fault writes the same object again. Items are then read in one order on
every machine (timestamp, then id), so every machine builds the same dataset from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from tuneloop.feedback.items import FeedbackItem
from tuneloop.runtime.fsutil import atomic_write_text, locked


def _without_secrets(item: FeedbackItem) -> FeedbackItem:
    """The item with API keys and tokens (provider-shaped, or the value of a secret environment variable)
    replaced by [API_KEY] in every text field: a key a user pasted is never stored. Other personal data is
    redacted, and counted, when a dataset is built (feedback/build.py)."""
    from dataclasses import replace

    from tuneloop.runtime.safety import scrub

    def clean(v):
        if isinstance(v, str):
            return scrub(v, placeholder="[API_KEY]")
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(clean(x) for x in v)
        return v

    return replace(item, messages=clean(item.messages), response=clean(item.response),
                   correction=clean(item.correction), rejected=clean(item.rejected), comment=clean(item.comment), metadata=clean(item.metadata))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120]


class FeedbackStore:
    SHARED = "feedback/items/"

    def __init__(self, root: str | Path, shared=None):
        """`shared`: a tuneloop.runtime.shared.SharedState whose items this store reads and adds to."""
        self.root = Path(root)
        self.ledger = self.root / "items.jsonl"
        self.shared = shared
        self._ids: set[str] | None = None

    def _lock(self):
        return locked(self.root)

    def items(self) -> list[FeedbackItem]:
        """Every stored item, oldest write first (with a shared state: every machine's, by timestamp then
        id). A torn last line (crash mid-append) is ignored."""
        out = self._read(self.ledger)
        if self.shared is None:
            return out
        seen = {i.id for i in out}
        for path in self._shared_segments():
            for item in self._read(path):
                if item.id not in seen:
                    seen.add(item.id)
                    out.append(item)
        return sorted(out, key=lambda i: (i.timestamp, i.id))

    @staticmethod
    def _read(path: Path) -> list[FeedbackItem]:
        if not path.exists():
            return []
        out = []
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break
                out.append(FeedbackItem.from_json(json.loads(line)))
        return out

    def _shared_segments(self) -> list[Path]:
        """The shared state's item objects, each downloaded once (they never change) into `shared/`."""
        cache = self.root / "shared"
        paths = []
        for key in self.shared.store.list(self.SHARED):
            path = cache / key[len(self.SHARED):]
            if not path.exists():
                self.shared.store.get_file(key, path)
            paths.append(path)
        return paths

    def ids(self) -> set[str]:
        return {i.id for i in self.items()}

    def add(self, items: list[FeedbackItem]) -> list[FeedbackItem]:
        """Append the items not seen before, secrets scrubbed (`_without_secrets`); returns exactly those."""
        with self._lock():
            seen = self.ids()
            new, batch = [], set()
            for it in items:
                if it.id in seen or it.id in batch:
                    continue
                batch.add(it.id)
                new.append(_without_secrets(it))
            if new:
                text = "".join(json.dumps(i.to_json(), ensure_ascii=False) + "\n" for i in new)
                if self.shared is not None:  # first: a fault here leaves nothing written, and the retry adds it
                    name = hashlib.sha256(text.encode()).hexdigest()[:32]
                    self.shared.store.put(f"{self.SHARED}{name}.jsonl", text.encode())
                self._truncate_torn_tail()
                with self.ledger.open("a", encoding="utf-8") as fh:
                    fh.write(text)
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
