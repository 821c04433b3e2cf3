"""Back-pressure: at most `max_concurrency` generations run and `max_queue` wait; the rest are refused at once
(HTTP 429 with Retry-After) instead of piling up until every client times out.

Used from the event loop only (the counters change between awaits, never across threads). A waiter is woken
by handing it the slot of the request that finished, so the order is first come, first served.
"""

from __future__ import annotations

import math
from collections import deque
from contextlib import asynccontextmanager

import anyio

from tuneloop.errors import TransientError, UserError

DEFAULT_MAX_CONCURRENCY = 32  # generations decode together (serving.decode): as many as a batch holds
DEFAULT_MAX_QUEUE = 64


class Overloaded(TransientError):
    """Every generation slot is busy and the queue is full: the server answers 429 with Retry-After."""

    def __init__(self, retry_after_s: int, running: int, waiting: int):
        self.retry_after_s, self.running, self.waiting = retry_after_s, running, waiting
        super().__init__(f"server at capacity ({running} running, {waiting} waiting)")


class Admission:
    def __init__(self, max_concurrency: int = DEFAULT_MAX_CONCURRENCY, max_queue: int = DEFAULT_MAX_QUEUE):
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise UserError(f"max_concurrency={max_concurrency!r}", "at least one generation must be able to run",
                            "give --max-concurrency 1 or more")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise UserError(f"max_queue={max_queue!r}", "the queue length is 0 or more",
                            "give --max-queue 0 (refuse whatever cannot run at once) or more")
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        self.running = 0
        self.waiting: deque[anyio.Event] = deque()
        self.refused = 0
        self._mean_s = 0.0  # moving average of a generation's seconds, for Retry-After

    def retry_after_s(self) -> int:
        """Whole seconds until the queue has likely moved on by one full round (at least 1)."""
        rounds = (len(self.waiting) + self.max_concurrency) / self.max_concurrency
        return max(1, math.ceil(self._mean_s * rounds))

    @asynccontextmanager
    async def slot(self):
        """Hold a generation slot for the block; raises Overloaded when none is free and the queue is full."""
        if self.running < self.max_concurrency and not self.waiting:
            self.running += 1
        elif len(self.waiting) < self.max_queue:
            turn = anyio.Event()
            self.waiting.append(turn)
            try:
                await turn.wait()  # the finishing request hands its slot over: `running` already counts us
            except BaseException:
                if turn.is_set():
                    self._release()
                else:
                    self.waiting.remove(turn)
                raise
        else:
            self.refused += 1
            raise Overloaded(self.retry_after_s(), self.running, len(self.waiting))
        t0 = anyio.current_time()
        try:
            yield
        finally:
            dt = anyio.current_time() - t0
            self._mean_s = dt if not self._mean_s else self._mean_s + 0.1 * (dt - self._mean_s)
            self._release()

    def _release(self) -> None:
        if self.waiting:
            self.waiting.popleft().set()
        else:
            self.running -= 1
