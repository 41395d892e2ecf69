"""RequestBudget with a fake clock: the sliding window is never exceeded, even under concurrency."""

from __future__ import annotations

import asyncio
import random

import pytest

from ci_runner.budget import RequestBudget


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


def test_first_n_requests_are_immediate_then_wait_a_window() -> None:
    t = FakeTime()
    budget = RequestBudget(5, t.clock, t.sleep, margin=0.0)

    async def main() -> None:
        for _ in range(5):
            await budget.acquire()
        assert t.sleeps == []
        assert budget.available() == 0
        assert budget.next_slot() == pytest.approx(1060.0)
        await budget.acquire()

    asyncio.run(main())
    assert t.now == pytest.approx(1060.0)
    assert budget.max_in_any_window() == 5


def test_concurrent_acquirers_never_exceed_the_window() -> None:
    t = FakeTime()
    rng = random.Random(7)
    budget = RequestBudget(10, t.clock, t.sleep)

    async def worker(n: int) -> None:
        for _ in range(n):
            await budget.acquire()
            t.now += rng.uniform(0, 3)  # the request takes a while
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(worker(rng.randint(1, 8)) for _ in range(64)))

    asyncio.run(main())
    assert len(budget.sent) > 100
    assert budget.max_in_any_window() == 10
    # the margin keeps even a slightly wider window within budget
    assert budget.max_in_any_window(60.2) <= 10
    assert list(budget.sent) == sorted(budget.sent)


def test_backoff_pauses_everyone() -> None:
    t = FakeTime()
    budget = RequestBudget(100, t.clock, t.sleep)

    async def main() -> None:
        await budget.acquire()
        budget.backoff_until(t.now + 30)
        budget.backoff_until(t.now + 5)  # never shortens
        assert budget.available() == 0
        await asyncio.gather(budget.acquire(), budget.acquire())

    asyncio.run(main())
    assert budget.sent[1] >= 1030.0 and budget.sent[2] >= 1030.0
    assert budget.available() == 97


def test_max_in_any_window_counts_half_open_windows() -> None:
    t = FakeTime()
    budget = RequestBudget(3, t.clock, t.sleep, margin=0.0)

    async def main() -> None:
        for _ in range(7):
            await budget.acquire()

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
            await asyncio.wait_for(budget.acquire(), timeout=5)
        assert budget.available() == 0
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(budget.acquire(), timeout=0.2)

    asyncio.run(main())
    assert len(budget.sent) == 3
