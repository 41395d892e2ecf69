"""A request budget shared by every FirecREST call of one run: at most N requests in any 60 s window.

Sliding window over the actual grant times (not a token bucket): a request is granted only when the
N-th previous grant is at least `window + margin` seconds old, so no window of `window` seconds ever
holds more than N grants, even when a request leaves a little after its grant. Waiters are served
first come, first served. After a 429 `backoff_until(t)` pauses everyone until `t`.
The clock and sleep are injectable so the logic is testable without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable

DEFAULT_REQUESTS_PER_MINUTE = 10  # the smallest site quota we know of


class RequestBudget:
    """`await budget.acquire()` before every HTTP request to FirecREST."""

    def __init__(
        self,
        requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        *,
        window: float = 60.0,
        margin: float = 0.25,
    ) -> None:
        if requests_per_minute < 1:
            raise ValueError("requests_per_minute must be at least 1")
        self.requests_per_minute = requests_per_minute
        self.window = window
        self.margin = margin
        self._clock = clock
        self._sleep = sleep
        self._recent: deque[float] = deque()  # grants inside the last window + margin
        self._sent: list[float] = []  # every grant, for max_in_any_window()
        self._paused_until = float("-inf")
        self._lock: asyncio.Lock | None = None
        self._waiting = 0

    @property
    def sent(self) -> tuple[float, ...]:
        """Clock times of every grant so far."""
        return tuple(self._sent)

    @property
    def waiting(self) -> int:
        """Number of callers currently blocked in `acquire()`."""
        return self._waiting

    def _prune(self, now: float) -> None:
        horizon = now - self.window - self.margin
        while self._recent and self._recent[0] <= horizon:
            self._recent.popleft()

    def next_slot(self, now: float | None = None) -> float:
        """Clock time from which one more request may be granted (== now when one may be sent right away)."""
        now = self._clock() if now is None else now
        self._prune(now)
        slot = max(now, self._paused_until)
        if len(self._recent) >= self.requests_per_minute:
            slot = max(slot, self._recent[-self.requests_per_minute] + self.window + self.margin)
        return slot

    def available(self) -> int:
        """How many requests could be granted right now without waiting (ignoring queued waiters)."""
        now = self._clock()
        if now < self._paused_until:
            return 0
        self._prune(now)
        return max(0, self.requests_per_minute - len(self._recent))

    def backoff_until(self, when: float) -> None:
        """Grant nothing before clock time `when` (after a 429 with Retry-After). Never shortens a pause."""
        self._paused_until = max(self._paused_until, when)

    async def acquire(self) -> None:
        """Wait until a request may be sent without exceeding the budget, then record it as sent now."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        self._waiting += 1
        try:
            async with self._lock:  # FIFO: asyncio.Lock wakes waiters in order
                while True:
                    now = self._clock()
                    slot = self.next_slot(now)
                    if slot <= now:
                        self._recent.append(now)
                        self._sent.append(now)
                        return
                    await self._sleep(slot - now)
        finally:
            self._waiting -= 1

    def max_in_any_window(self, window: float | None = None) -> int:
        """Largest number of grants inside any half-open interval [t, t + window)."""
        width = self.window if window is None else window
        best = 0
        start = 0
        for end, t in enumerate(self._sent):
            while t - self._sent[start] >= width:
                start += 1
            best = max(best, end - start + 1)
        return best
