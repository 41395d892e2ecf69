"""RequestBudget with a fake clock: the sliding window is never exceeded at the server, even under
concurrency and when requests arrive long after they were granted."""

from __future__ import annotations

import asyncio
import random

import pytest

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
