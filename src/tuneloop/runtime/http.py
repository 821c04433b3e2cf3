"""Small helpers shared by tuneloop's HTTP clients."""

from __future__ import annotations

import httpx


def retry_delay(attempt: int, backoff: float, cap: float, response: httpx.Response | None = None) -> float:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After when it gives seconds,
    else exponential backoff; never negative, never above `cap`."""
    delay = backoff * (2 ** attempt)
    if response is not None:
        try:
            delay = float(response.headers.get("retry-after", "x"))
        except ValueError:
            pass
    return max(0.0, min(delay, cap))
