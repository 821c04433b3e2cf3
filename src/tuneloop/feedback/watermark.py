"""The time watermark shared by the hosted sources (LangSmith, Langfuse).

    {"since": ISO time of the newest item seen,
     "seen_at_since": ids seen at or after since - lookback_s}

A fetch asks for items from `since - lookback_s` and drops the ids in
`seen_at_since`, so a rerun returns nothing new while an item that becomes
readable late (within the lookback) is still collected once.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable


def aware(ts: datetime) -> datetime:
    """Naive datetimes from an SDK are UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def minus(ts: datetime, seconds: float) -> datetime:
    """`ts` less `seconds`, or the earliest time `ts`'s zone can write when that is earlier (a server may
    send year 1: 0001-01-01T00:00:00+01:00 less a minute has no datetime)."""
    try:
        return ts - timedelta(seconds=seconds)
    except OverflowError:
        return datetime.min.replace(tzinfo=ts.tzinfo)


def parse_ts(s: str) -> datetime:
    return aware(datetime.fromisoformat(s.replace("Z", "+00:00")))


def start(watermark: dict | None, lookback_s: float) -> tuple[datetime | None, set[str], datetime | None]:
    """(since, ids already seen, the time to query from)."""
    since = parse_ts(watermark["since"]) if watermark and watermark.get("since") else None
    seen = set(watermark.get("seen_at_since", ())) if watermark else set()
    return since, seen, (minus(since, lookback_s) if since else None)


def advance(watermark: dict | None, since: datetime | None, seen: set[str],
            stamps: Iterable[tuple[str, datetime]], lookback_s: float) -> dict:
    """The next watermark after a fetch that returned items with these (id, time) stamps."""
    stamps = [(i, aware(t)) for i, t in stamps]
    newest = max((t for _, t in stamps), default=since)
    if since is not None and newest < since:
        newest = since
    if newest is None:
        return dict(watermark or {})
    window = minus(newest, lookback_s)
    new_seen = {i for i, t in stamps if t >= window}
    if since is not None and since >= window:
        new_seen |= seen  # ids at `since` the server no longer lists (deleted) stay harmlessly
    return {"since": newest.isoformat(), "seen_at_since": sorted(new_seen)}
