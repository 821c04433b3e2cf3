"""What drift detection compares: recent prompts from the store, reference prompts from training data."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.feedback.items import FeedbackItem


def split_window(items: list[FeedbackItem], tenant: str, days: float, now: datetime | None = None):
    """(window items, earlier items) of one tenant; the window is the last `days` days."""
    now = now or datetime.now(timezone.utc)
    start = now - timedelta(days=days)
    mine = [i for i in items if i.tenant == tenant]
    window = [i for i in mine if start <= datetime.fromisoformat(i.timestamp) <= now]
    before = [i for i in mine if datetime.fromisoformat(i.timestamp) < start]
    return window, before


def scores(items: list[FeedbackItem]) -> list[tuple[str, float]]:
    """(timestamp, score in 0-1) pairs; ratings map 1-5 onto 0-1."""
    out = []
    for i in items:
        if i.score is not None:
            out.append((i.timestamp, i.score))
        elif i.rating is not None:
            out.append((i.timestamp, (i.rating - 1) / 4))
    return out


def prompts_from_jsonl(path: str | Path) -> list[str]:
    """The last user message of every row of a chat / prompt-completion JSONL file."""
    path = Path(path)
    if not path.exists():
        raise UserError(str(path), "does not exist", "point drift's reference at a JSONL file of training rows")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "messages" in row:
            users = [m["content"] for m in row["messages"] if m.get("role") == "user"]
            if users:
                out.append(users[-1])
        elif "prompt" in row:
            out.append(row["prompt"] if isinstance(row["prompt"], str) else json.dumps(row["prompt"]))
    return out
