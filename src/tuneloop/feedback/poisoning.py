"""Poisoning guard: stop one user, or one copied-and-pasted message, from steering training.

`apply_poisoning_guard(items)` applies two rules, in this order:

(a) Floods. Items are ordered by (timestamp, id) and grouped by near-identical
    content (the last user message, the response and any correction; see
    `tuneloop.feedback.dedup`, Jaccard ≥ `flood_threshold`). Each group of at
    least `flood_min_size` items is a flood: its earliest item is kept and the
    rest are dropped, whoever sent them ("flood: 37 near-identical items (kept 1)").
    Smaller groups are left alone (a few repeats are normal traffic).

(b) User share. No single user may hold more than `max_user_share` of the
    *final* kept set. The cap is a number of items C per user, the same for
    every user, and the kept set is then N(C) = (items with no user) +
    Σ_u min(n_u, C), where n_u is what user u has left after (a). C must satisfy
    min(n_u, C) ≤ share·N(C) for every user; the guard takes the largest such C,
    i.e. it keeps as many items as the rule allows. (The feasible C form an
    interval starting at 0: share·N(C) - max_u min(n_u, C) is concave for C in
    [0, max_u n_u] and non-negative at 0, so a binary search finds its end.) A capped user keeps their
    C earliest items by (timestamp, id) and the rest are dropped ("user u123 over
    its 10% share (kept 40 of 95)"). Items with no user are never capped, but
    they count towards N.

    The cap never falls below one item: with share s and fewer than 1/s users
    the rule cannot be met by any non-empty set, and a small tenant keeps one
    item per user rather than nothing. Pass max_user_share=None (or ≥ 1) to
    switch the cap off.

Everything is deterministic: ties are broken by item id, near-duplicates are
found exactly (prefix filtering; `seed` only matters to the MinHash method of
`dedup`, which the guard does not use by default). The kept items come back in
their input order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction

from tuneloop.feedback.dedup import assign_duplicates
from tuneloop.feedback.items import FeedbackItem


@dataclass
class GuardResult:
    kept: list[FeedbackItem]
    dropped: list[dict]  # {"id", "reason", "user"}
    floods: list[dict] = field(default_factory=list)  # {"size", "kept_id", "dropped_ids"}
    capped_users: dict[str, dict] = field(default_factory=dict)  # user -> {"kept", "of"}
    user_cap: int | None = None  # items per user, None when no user was capped
    max_user_share: float | None = None
    n_input: int = 0

    def report(self) -> dict:
        reasons = Counter("flood" if d["reason"].startswith("flood:") else "user_share" for d in self.dropped)
        return {
            "input": self.n_input,
            "kept": len(self.kept),
            "dropped": len(self.dropped),
            "reasons": {"flood": reasons["flood"], "user_share": reasons["user_share"]},
            "floods": [{"size": f["size"], "kept_id": f["kept_id"]} for f in self.floods],
            "capped_users": {u: dict(v) for u, v in sorted(self.capped_users.items())},
            "user_cap": self.user_cap,
            "max_user_share": self.max_user_share,
        }


def item_text(item: FeedbackItem) -> str:
    """What an item would teach: its last user message, response, correction and rejected answer.

    System prompts and earlier turns are left out: an app's long shared system prompt would
    otherwise make all its traffic look near-identical.
    """
    parts = [item.prompt, item.response or ""]
    if item.correction:
        parts.append(item.correction)
    if item.rejected:
        parts.append(item.rejected)
    return "\n".join(parts)


def _time_key(item: FeedbackItem) -> tuple:
    try:
        ts = datetime.fromisoformat(str(item.timestamp).replace("Z", "+00:00"))
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        return (0, ts.timestamp(), item.id)
    except (TypeError, ValueError):
        return (1, str(item.timestamp), item.id)  # unparseable timestamps sort last


def _share_text(share: Fraction) -> str:
    return f"{float(share) * 100:g}%"


def user_cap(counts: dict[str, int], anonymous: int, share: Fraction) -> int | None:
    """The largest per-user cap C with min(n_u, C) ≤ share·N(C) for all users; None if no one is capped."""
    if not counts:
        return None
    biggest = max(counts.values())

    def feasible(c: int) -> bool:
        n = anonymous + sum(min(v, c) for v in counts.values())
        return min(biggest, c) <= share * n

    if feasible(biggest):
        return None
    lo, hi = 0, biggest  # feasible(lo) holds (C=0 keeps only anonymous items); feasible(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return max(lo, 1)  # a small tenant keeps one item per user rather than nothing


def apply_poisoning_guard(
    items: list[FeedbackItem],
    max_user_share: float | None = 0.10,
    flood_threshold: float = 0.85,
    flood_min_size: int = 5,
    seed: int = 0,
) -> GuardResult:
    """Drop floods of near-identical items, then cap each user's share of what is left (module docstring)."""
    order = sorted(range(len(items)), key=lambda i: _time_key(items[i]))
    dropped: list[dict] = []
    floods: list[dict] = []
    alive = [True] * len(items)

    # (a) floods
    if flood_min_size and len(items) >= flood_min_size:
        parent = assign_duplicates([item_text(items[i]) for i in order], flood_threshold, seed=seed)
        groups: dict[int, list[int]] = {}
        for pos, p in enumerate(parent):
            groups.setdefault(p, []).append(pos)
        for head, members in sorted(groups.items()):
            if len(members) < max(flood_min_size, 2):
                continue
            reason = f"flood: {len(members)} near-identical items (kept 1)"
            first = items[order[head]]
            gone = []
            for pos in members:
                if pos == head:
                    continue
                it = items[order[pos]]
                alive[order[pos]] = False
                gone.append(it.id)
                dropped.append({"id": it.id, "reason": reason, "user": it.user})
            floods.append({"size": len(members), "kept_id": first.id, "dropped_ids": gone})

    # (b) user share
    share = None
    cap = None
    capped: dict[str, dict] = {}
    if max_user_share is not None and max_user_share < 1:
        share = Fraction(max_user_share).limit_denominator(10**6)
        survivors = [i for i in order if alive[i]]
        counts = Counter(items[i].user for i in survivors if items[i].user is not None)
        anonymous = sum(1 for i in survivors if items[i].user is None)
        cap = user_cap(counts, anonymous, share)
        if cap is not None:
            seen: Counter = Counter()
            over = {u for u, n in counts.items() if n > cap}
            for u in sorted(over):
                capped[u] = {"kept": cap, "of": counts[u]}
            for i in survivors:  # in time order: each user's earliest items are kept
                u = items[i].user
                if u not in over:
                    continue
                seen[u] += 1
                if seen[u] > cap:
                    alive[i] = False
                    reason = f"user {u} over its {_share_text(share)} share (kept {cap} of {counts[u]})"
                    dropped.append({"id": items[i].id, "reason": reason, "user": u})

    return GuardResult(
        kept=[it for i, it in enumerate(items) if alive[i]],
        dropped=dropped,
        floods=floods,
        capped_users=capped,
        user_cap=cap,
        max_user_share=None if share is None else float(share),
        n_input=len(items),
    )
