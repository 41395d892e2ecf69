"""RequestBudget with a fake clock: the sliding window is never exceeded at the server, even under
concurrency and when requests arrive long after they were granted; after 429s the rate halves (once
per overload) and recovers slowly, so budgets sharing one quota converge to a fair share."""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque

import pytest

from helpers.virtual_time import VirtualTimeLoop

from ci_runner.budget import RequestBudget, max_in_window


class FakeTime:
    """A clock whose sleep advances it (only the budget's lock holder sleeps, so time stays consistent)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def send(budget: RequestBudget) -> None:
    """One request answered at once."""
    async with budget.request():
        pass


def test_first_n_requests_are_immediate_then_wait_a_window() -> None:
    t = FakeTime()
    budget = RequestBudget(5, t.clock, t.sleep, margin=0.0)

    async def main() -> None:
        for _ in range(5):
            await send(budget)
        assert t.sleeps == []
        assert budget.available() == 0
        assert budget.next_slot() == pytest.approx(1060.0)
        await send(budget)

    asyncio.run(main())
    assert t.now == pytest.approx(1060.0)
    assert budget.max_in_any_window() == 5


def test_refill_in_is_the_time_until_the_oldest_answered_request_leaves_the_window() -> None:
    t = FakeTime()
    budget = RequestBudget(5, t.clock, t.sleep, margin=0.5)
    assert budget.refill_in() == 0.0  # nothing sent: nothing to wait for

    async def main() -> None:
        await send(budget)
        t.now += 10.0
        await send(budget)
        t.now += 5.0

    asyncio.run(main())
    assert budget.refill_in() == pytest.approx(60.5 - 15.0)  # the first one, answered at 1000, ages out at 1060.5
    t.now += 50.0
    assert budget.refill_in() == pytest.approx(60.5 - 55.0)  # now the second one's
    t.now += 10.0
    assert budget.refill_in() == 0.0


def test_concurrent_acquirers_never_exceed_the_window() -> None:
    t = FakeTime()
    rng = random.Random(7)
    budget = RequestBudget(10, t.clock, t.sleep)

    arrivals: list[float] = []

    async def worker(n: int) -> None:
        for _ in range(n):
            async with budget.request():
                await asyncio.sleep(0)
                t.now += rng.uniform(0, 3)  # the request waits for the loop, a connection, the network
                arrivals.append(t.now)  # ... reaches the server
                await asyncio.sleep(0)
                t.now += rng.uniform(0, 3)  # ... and its answer takes a while

    async def main() -> None:
        await asyncio.gather(*(worker(rng.randint(1, 8)) for _ in range(64)))

    asyncio.run(main())
    assert len(arrivals) > 100
    assert max_in_window(arrivals, 60.0) == 10
    # the margin keeps even a slightly wider window within budget
    assert max_in_window(arrivals, 60.2) <= 10
    assert budget.max_in_any_window() <= 10
    assert list(budget.sent) == sorted(budget.sent)
    assert budget.in_flight == 0


def test_a_request_that_arrives_late_still_counts_in_its_window() -> None:
    """Granted at 1000, it reaches the server only at 1010 (a loaded machine): the request that would
    be the 4th in the server's window [1010, 1070) waits until a window after its answer."""
    t = FakeTime()
    budget = RequestBudget(3, t.clock, t.sleep, margin=0.0)
    arrivals: list[float] = []

    async def main() -> None:
        async with budget.request():
            t.now += 10
            arrivals.append(t.now)
        for _ in range(3):
            async with budget.request():
                arrivals.append(t.now)

    asyncio.run(main())
    assert arrivals == [1010.0, 1010.0, 1010.0, 1070.0]
    assert max_in_window(arrivals, 60.0) == 3


def test_requests_in_flight_hold_their_place_until_answered() -> None:
    """N requests in flight: the next one waits for an answer, then a full window after it."""
    t = FakeTime()
    budget = RequestBudget(2, t.clock, t.sleep, margin=0.0)

    async def main() -> None:
        await budget.acquire()
        await budget.acquire()
        assert budget.next_slot() is None and budget.available() == 0
        third = asyncio.ensure_future(budget.acquire())
        await asyncio.sleep(0)
        assert not third.done()  # nothing answered yet: no time is known at which it may go
        t.now += 5
        budget.release()
        await third
        assert t.now == pytest.approx(1065.0)

    asyncio.run(main())
    assert budget.sent == (1000.0, 1000.0, 1065.0)
    assert budget.in_flight == 2


def test_release_without_acquire_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        RequestBudget(3).release()


def test_backoff_pauses_everyone() -> None:
    t = FakeTime()
    budget = RequestBudget(100, t.clock, t.sleep)

    async def main() -> None:
        await send(budget)
        budget.backoff_until(t.now + 30)
        budget.backoff_until(t.now + 5)  # never shortens
        assert budget.available() == 0
        await asyncio.gather(send(budget), send(budget))

    asyncio.run(main())
    assert budget.sent[1] >= 1030.0 and budget.sent[2] >= 1030.0
    assert budget.available() == 97


def test_max_in_any_window_counts_half_open_windows() -> None:
    t = FakeTime()
    budget = RequestBudget(3, t.clock, t.sleep, margin=0.0)

    async def main() -> None:
        for _ in range(7):
            await send(budget)

    asyncio.run(main())
    # grants at 1000 ×3, 1060 ×3, 1120: a request exactly 60 s later is in the next window
    assert budget.sent == (1000.0, 1000.0, 1000.0, 1060.0, 1060.0, 1060.0, 1120.0)
    assert budget.max_in_any_window() == 3
    assert budget.max_in_any_window(60.0001) == 6


def test_rejects_zero_rate() -> None:
    with pytest.raises(ValueError):
        RequestBudget(0)


def test_real_clock_grants_at_once_while_available() -> None:
    """With the real monotonic clock (time moves between reads) a free slot is granted without waiting."""
    budget = RequestBudget(3)

    async def main() -> None:
        for _ in range(3):
            await asyncio.wait_for(send(budget), timeout=5)
        assert budget.available() == 0
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(send(budget), timeout=0.2)

    asyncio.run(main())
    assert len(budget.sent) == 3


# -- AIMD: the rate after 429s ---------------------------------------------------------------------

def test_a_429_halves_the_rate_and_the_window_admits_only_that() -> None:
    t = FakeTime()
    budget = RequestBudget(10, t.clock, t.sleep, margin=0.0)

    async def main() -> None:
        for _ in range(4):
            await send(budget)
        assert budget.throttled() is True
        assert budget.rate() == 5.0 and budget.requests_per_minute == 5 and budget.limit == 10
        assert budget.available() == 1
        await send(budget)
        assert budget.next_slot() == pytest.approx(1060.0)  # the 6th waits for the 1st to age out

    asyncio.run(main())
    assert budget.decreases == (1000.0,)


def test_one_burst_of_429s_decreases_once() -> None:
    """The 429s of one overload (in flight, retried after the same pause) arrive within a window: one cut."""
    t = FakeTime()
    budget = RequestBudget(10, t.clock, t.sleep)
    assert budget.throttled() is True
    for _ in range(20):
        t.now += 3.0  # 429s for a whole window after the cut
        assert budget.throttled() is False
    assert budget.rate() == pytest.approx(5.0)
    t.now = 1060.25  # window + margin after the cut
    assert budget.throttled() is True  # a 429 more than a window after the cut: the new rate is still too high
    assert budget.rate() == pytest.approx(2.5) and budget.requests_per_minute == 2
    assert len(budget.decreases) == 2


def test_the_rate_recovers_to_the_limit_and_never_above() -> None:
    """+1 request/min per minute at the 10/min quota, from a window after the cut: half → full in 5 min."""
    t = FakeTime()
    budget = RequestBudget(10, t.clock, t.sleep, margin=0.0)
    budget.throttled()
    assert budget.rate(1060.0) == pytest.approx(5.0)  # no increase for a window after the cut
    assert budget.rate(1090.0) == pytest.approx(5.5)
    assert budget.rate(1120.0) == pytest.approx(6.0)
    assert budget.rate(1360.0) == pytest.approx(10.0)
    for minutes in (6, 10, 60, 600):
        assert budget.rate(1000.0 + 60 * minutes) == 10.0
    t.now = 1120.0
    assert budget.requests_per_minute == 6
    t.now = 5000.0
    assert budget.requests_per_minute == 10 and budget.available() == 10


def test_the_increase_scales_with_the_limit() -> None:
    """At a 50/min quota the rate grows by 5/min per minute: half back to full in 5 minutes there too."""
    t = FakeTime()
    budget = RequestBudget(50, t.clock, t.sleep, margin=0.0)
    assert budget.increase_per_minute == 5.0
    budget.throttled()
    assert budget.rate(1120.0) == pytest.approx(30.0)
    assert budget.rate(1360.0) == pytest.approx(50.0)
    assert RequestBudget(3).increase_per_minute == 1.0  # at least one request/min per minute


def test_the_rate_never_falls_below_the_floor() -> None:
    t = FakeTime()
    budget = RequestBudget(10, t.clock, t.sleep, margin=0.0)
    rates = []
    for _ in range(8):
        assert budget.throttled() is True
        rates.append(budget.rate())
        t.now += 60.0
    assert rates == [5.0, 2.5, 1.25, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert budget.requests_per_minute == 1

    async def main() -> None:
        await send(budget)
        await send(budget)  # one request per window still goes

    start = t.now
    asyncio.run(main())
    assert budget.sent[-1] - budget.sent[-2] == pytest.approx(60.0) and t.now - start == pytest.approx(60.0)


def test_rejects_bad_aimd_parameters() -> None:
    for kwargs in ({"decrease": 0.0}, {"decrease": 1.5}, {"floor": 0.5}, {"floor": 11.0}):
        with pytest.raises(ValueError):
            RequestBudget(10, **kwargs)


# -- two budgets sharing one quota ---------------------------------------------------------------

def share_one_quota(aimd: bool, minutes: float = 30.0, clients: int = 2, quota: int = 10,
                    workers: int = 2) -> list[tuple[float, int, int]]:
    """`clients` runs, each with its own 10/min budget and `workers` greedy requesters, against a server
    that counts accepted arrivals per 60 s and answers 429 beyond `quota` with Retry-After until the
    oldest ages out (as the sandbox does). A 429 pauses the budget (as cluster.py does) and, with
    `aimd`, also calls `throttled()`. Every request: arrives 0.1 s after its grant, answered 0.1 s later.
    Returns (arrival time, client, status) of every request."""
    loop = VirtualTimeLoop()
    accepted: deque[float] = deque()
    log: list[tuple[float, int, int]] = []

    def serve(client: int) -> int | None:
        """The server's verdict now: None (200) or the Retry-After of a 429."""
        now = loop.time()
        while accepted and accepted[0] <= now - 60.0:
            accepted.popleft()
        if len(accepted) >= quota:
            log.append((now, client, 429))
            return max(1, math.ceil(accepted[0] + 60.0 - now))
        accepted.append(now)
        log.append((now, client, 200))
        return None

    async def worker(client: int, budget: RequestBudget, end: float) -> None:
        while loop.time() < end:
            async with budget.request():
                await asyncio.sleep(0.1)
                retry_after = serve(client)
                await asyncio.sleep(0.1)
            if retry_after is not None:
                budget.backoff_until(loop.time() + retry_after)
                if aimd:
                    budget.throttled()
                await asyncio.sleep(retry_after)

    async def main() -> None:
        end = loop.time() + 60.0 * minutes
        budgets = [RequestBudget(10, loop.time, asyncio.sleep) for _ in range(clients)]
        await asyncio.gather(*(worker(c, b, end) for c, b in enumerate(budgets) for _ in range(workers)))

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return log


def _after(log: list[tuple[float, int, int]], minutes: float) -> list[tuple[float, int, int]]:
    start = log[0][0] + 60.0 * minutes
    return [r for r in log if r[0] >= start]


def test_two_budgets_sharing_one_quota_converge_with_few_429s() -> None:
    """Two runs at 10/min each against one 10/min quota. Measured over minutes 10-30: about 14 429s with
    AIMD and about 80 without it (the pause after each 429 alone keeps hitting the quota), with the
    quota used alike (each run gets about 5/min either way)."""
    with_aimd = _after(share_one_quota(aimd=True), 10.0)
    without = _after(share_one_quota(aimd=False), 10.0)
    throttled_with = sum(status == 429 for _, _, status in with_aimd)
    throttled_without = sum(status == 429 for _, _, status in without)
    assert throttled_with <= 20, throttled_with
    assert throttled_without >= 60, throttled_without
    assert throttled_without >= 4 * throttled_with
    served = [sum(status == 200 and c == client for _, c, status in with_aimd) for client in (0, 1)]
    assert sum(served) >= 0.85 * 20 * 10  # 20 minutes of a 10/min quota: little is left unused
    assert min(served) >= 0.4 * sum(served), served  # a fair share each


def test_the_simulated_server_never_accepts_more_than_its_quota() -> None:
    """The simulation itself: at most 10 accepted arrivals in any 60 s, so its 429 count is meaningful."""
    log = share_one_quota(aimd=True, minutes=10.0)
    assert max_in_window([t for t, _, status in log if status == 200], 60.0) == 10


def test_until_free_waits_for_a_place_in_the_window_without_taking_it() -> None:
    t = FakeTime()
    budget = RequestBudget(2, t.clock, t.sleep)

    async def main() -> tuple[float, float, int]:
        free_at_once = await budget.until_free()
        await send(budget)
        t.now += 10.0
        await send(budget)
        waited = await budget.until_free()  # the first request ages out a window and margin after its answer
        return free_at_once, waited, budget.available()

    free_at_once, waited, available = asyncio.run(main())
    assert free_at_once == 0.0
    assert waited == pytest.approx(50.25)
    assert available == 1  # the place it waited for is still there
    assert len(budget.sent) == 2
