"""A request budget shared by every FirecREST call of one run: at most N requests in any 60 s window.

A site's quota counts requests when they *arrive*; we only know when we let one go and when its answer
came back, and the two can be far apart on a loaded machine (a request waits for the event loop, a
connection, the network). So a request occupies its place in the window from its grant until its answer
(`release`), and it ages out `window + margin` seconds after the answer. A new request is granted only
when, counting the requests still in flight, fewer than N were answered in that span: its arrival at
the server is after its grant, every earlier request arrived before its answer, so no window of
`window` seconds at the server ever holds more than N arrivals, however slow the requests are.
Waiters are served first come, first served. After a 429 `backoff_until(t)` pauses everyone until `t`.
The clock and sleep are injectable so the logic is testable without waiting.

The quota belongs to the application (client id), so runs that do not know each other (fan-out legs,
parallel pipelines) share it, each believing it owns `limit` requests a minute. A 429 therefore also
calls `throttled()`, which lowers the budget's own rate, and the rate creeps back up while no 429
comes: additive increase, multiplicative decrease (AIMD, as TCP shares a link), so that budgets that
never talk to each other converge to a fair share with few 429s. The numbers:

- decrease ×0.5 (`DECREASE`): the classic AIMD factor. Two runs at a full quota each are cut to
  exactly half of it each by the first 429 of each, and one cut is the least that surely ends an
  overload of up to twice the quota.
- at most one decrease per episode: 429s within `window + margin` of the last decrease are ignored.
  The server's window still holds a window's worth of arrivals from before the cut, and requests
  granted before it (in flight, or retrying after the same pause) meet 429s too; they say nothing
  about the new rate. Without this one burst collapses the rate to the floor.
- never below 1 request/min (`FLOOR`): the sliding window needs one place to make progress.
- additive increase of `limit / 10` requests/min per minute (at least 1; +1 at the smallest quota of
  10), starting a window after the last decrease (the cut first has to show at the server): from half
  back to `limit` in about 5 minutes at any quota. It is the same for every run with the same limit,
  which is what makes AIMD converge to equal shares; each probe overshoots a shared quota by about
  one request per run per minute, so a few 429s every few minutes while several runs share a quota.
  The increase is computed from the clock, so an idle budget recovers too.
- never above `limit` (the configured `requests_per_minute`).

`requests_per_minute` is the current rate (whole requests; what the window admits and what callers
sizing poll intervals should use); `limit` is the configured one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Awaitable, Callable

from ci_runner.config_defaults import DEFAULT_REQUESTS_PER_MINUTE

DECREASE = 0.5  # after a 429 the rate is multiplied by this (at most once per window)
FLOOR = 1.0  # requests per minute: the rate never goes below
RECOVERY_MINUTES = 10.0  # the rate grows by limit / RECOVERY_MINUTES per minute (at least 1): half → full in 5
IN_FLIGHT_POLL = 0.25  # seconds between two looks while the window is full of requests in flight (`until_free`)


class RequestBudget:
    """`async with budget.request():` around every HTTP request to FirecREST (or `acquire`/`release`)."""

    def __init__(
        self,
        requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        *,
        window: float = 60.0,
        margin: float = 0.25,
        decrease: float = DECREASE,
        increase_per_minute: float | None = None,
        floor: float = FLOOR,
    ) -> None:
        if requests_per_minute < 1:
            raise ValueError("requests_per_minute must be at least 1")
        if not 0 < decrease <= 1 or not 1 <= floor <= requests_per_minute:
            raise ValueError("need 0 < decrease <= 1 and 1 <= floor <= requests_per_minute")
        self.limit = requests_per_minute
        self.decrease = decrease
        self.increase_per_minute = (max(1.0, requests_per_minute / RECOVERY_MINUTES)
                                    if increase_per_minute is None else increase_per_minute)
        self.floor = floor
        self._cut_rate = float(requests_per_minute)  # the rate set by the last decrease
        self._cut_at = float("-inf")  # clock time of the last decrease
        self._decreases: list[float] = []  # clock times of the decreases
        self.window = window
        self.margin = margin
        self._clock = clock
        self._sleep = sleep
        self._answered: deque[float] = deque()  # answer times inside the last window + margin, in order
        self._in_flight = 0
        self._sent: list[float] = []  # every grant, for max_in_any_window()
        self._paused_until = float("-inf")
        self._lock: asyncio.Lock | None = None
        self._released: asyncio.Event | None = None
        self._waiting = 0

    def rate(self, now: float | None = None) -> float:
        """The current rate in requests per minute (floor ≤ rate ≤ limit): the rate of the last decrease
        plus the additive increase since a window after it."""
        now = self._clock() if now is None else now
        growing = max(0.0, now - self._cut_at - self.window - self.margin)
        return min(float(self.limit), self._cut_rate + self.increase_per_minute * growing / 60.0)

    @property
    def requests_per_minute(self) -> int:
        """Requests the window admits now: the current rate in whole requests (at least 1, at most
        `limit`). Size poll intervals with this, not with `limit`."""
        return self._allowed(self._clock())

    def throttled(self, now: float | None = None) -> bool:
        """A request met a 429: multiply the rate by `decrease` (not below `floor`), unless the last
        decrease was less than a window ago (the same overload). True when the rate was lowered."""
        now = self._clock() if now is None else now
        if now - self._cut_at < self.window + self.margin:
            return False
        self._cut_rate = max(self.floor, self.rate(now) * self.decrease)
        self._cut_at = now
        self._decreases.append(now)
        return True

    @property
    def decreases(self) -> tuple[float, ...]:
        """Clock times at which `throttled()` lowered the rate."""
        return tuple(self._decreases)

    @property
    def sent(self) -> tuple[float, ...]:
        """Clock times of every grant so far."""
        return tuple(self._sent)

    @property
    def waiting(self) -> int:
        """Number of callers currently blocked in `acquire()`."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Requests granted and not released yet."""
        return self._in_flight

    def _allowed(self, now: float) -> int:
        return max(1, int(self.rate(now) + 1e-9))  # 1e-9: 0.5 × 0.5 × ... × 2 is a whole number again

    def _prune(self, now: float) -> None:
        while self._answered and self._ages_out(self._answered[0]) <= now:
            self._answered.popleft()

    def next_slot(self, now: float | None = None) -> float | None:
        """Clock time from which one more request may be granted (== now when one may be sent right away);
        None when N requests are in flight: the next slot depends on when the first of them is answered."""
        now = self._clock() if now is None else now
        self._prune(now)
        slot = max(now, self._paused_until)
        allowed = self._allowed(now)
        if len(self._answered) + self._in_flight < allowed:
            return slot
        older = allowed - self._in_flight  # the in-flight requests are the newest
        if older <= 0:
            return None
        return max(slot, self._ages_out(self._answered[-older]))

    def refill_in(self) -> float:
        """Seconds until the oldest answered request in the window ages out of it (0 when none is there)."""
        now = self._clock()
        self._prune(now)
        return max(0.0, self._ages_out(self._answered[0]) - now) if self._answered else 0.0

    def _ages_out(self, answered: float) -> float:
        """Clock time at which a request answered at `answered` no longer counts in the window."""
        return answered + self.window + self.margin

    def available(self) -> int:
        """How many requests could be granted right now without waiting (ignoring queued waiters)."""
        now = self._clock()
        if now < self._paused_until:
            return 0
        self._prune(now)
        return max(0, self._allowed(now) - len(self._answered) - self._in_flight)

    def backoff_until(self, when: float) -> None:
        """Grant nothing before clock time `when` (after a 429 with Retry-After). Never shortens a pause."""
        self._paused_until = max(self._paused_until, when)

    async def until_free(self) -> float:
        """Wait, without taking it, until a request could be granted at once (a place in the window and
        no pause); the seconds waited. A caller that waited long decides again what to ask: what it
        knew when it started waiting may be old (observer.py, STALL_REFRESH)."""
        start = self._clock()
        while True:
            now = self._clock()
            slot = self.next_slot(now)
            if slot is not None and slot <= now:
                return now - start
            await self._sleep(slot - now if slot is not None else IN_FLIGHT_POLL)

    async def acquire(self) -> None:
        """Wait until a request may be sent without exceeding the budget; it counts as in flight until
        `release()`."""
        if self._lock is None:
            self._lock = asyncio.Lock()
            self._released = asyncio.Event()
        assert self._released is not None
        self._waiting += 1
        try:
            async with self._lock:  # FIFO: asyncio.Lock wakes waiters in order
                while True:
                    now = self._clock()
                    slot = self.next_slot(now)
                    if slot is None:
                        self._released.clear()
                        await self._released.wait()
                    elif slot <= now:
                        self._in_flight += 1
                        self._sent.append(now)
                        return
                    else:
                        await self._sleep(slot - now)
        finally:
            self._waiting -= 1

    def release(self) -> None:
        """The request granted by `acquire()` was answered (or failed): it ages out a window from now."""
        if self._in_flight < 1:
            raise RuntimeError("release() without a matching acquire()")
        self._in_flight -= 1
        self._answered.append(self._clock())
        if self._released is not None:
            self._released.set()

    @asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """`acquire()` on entry, `release()` on exit (also on errors and cancellation)."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def max_in_any_window(self, window: float | None = None) -> int:
        """Largest number of grants inside any half-open interval [t, t + window)."""
        return max_in_window(self._sent, self.window if window is None else window)


def max_in_window(times: Iterable[float], window: float = 60.0) -> int:
    """Largest number of `times` (any order) inside any half-open interval [t, t + window): what a
    sliding-window quota of `window` seconds sees."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
