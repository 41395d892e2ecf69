"""RunObserver: one job list and one output listing per cycle serve every entry (fake cluster, injected clock)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers.listing_cluster import OUT, Clock, ListingCluster, status

from ci_runner.api import ApiError, JobStatus
from ci_runner.observer import RunObserver, SharedRequest


def test_followers_asking_together_share_one_request_of_each_kind() -> None:
    cluster, clock = ListingCluster(), Clock()
    observer = RunObserver(cluster, "ci-runner-run", OUT, clock)

    async def main() -> list[Any]:
        cluster.gate = asyncio.Event()
        asks = [asyncio.ensure_future(observer.job(job_id, clock.now)) for job_id in ("1", "2", "3")]
        asks += [asyncio.ensure_future(observer.size(f"{OUT}/{name}", clock.now)) for name in ("a.1.out", "b.2.out",
                                                                                                "c.3.out")]
        await asyncio.sleep(0)
        cluster.gate.set()
        return list(await asyncio.gather(*asks))

    answers = asyncio.run(main())
    assert [a.state if isinstance(a, JobStatus) else a for a in answers] == ["RUNNING", "RUNNING", None, 10, 0, None]
    assert cluster.calls == ["jobs", "ls"] and observer.requests == 2


def test_an_answer_older_than_asked_for_is_not_reused_a_newer_one_is() -> None:
    cluster, clock = ListingCluster(), Clock()
    observer = RunObserver(cluster, "ci-runner-run", OUT, clock)

    async def main() -> None:
        first = await observer.size(f"{OUT}/a.1.out", clock.now)  # sent at 100
        clock.now = 101.0  # the follower got its answer at 101
        cluster.files["a.1.out"] = 25
        assert await observer.size(f"{OUT}/a.1.out", 99.0) == first == 10  # another, older need: cached
        assert await observer.size(f"{OUT}/a.1.out", 101.0) == 25  # needs something sent since 101

    asyncio.run(main())
    assert cluster.calls == ["ls", "ls"]


def test_a_request_already_on_its_way_before_the_need_is_not_enough() -> None:
    cluster, clock = ListingCluster(), Clock()
    observer = RunObserver(cluster, "ci-runner-run", OUT, clock)

    async def main() -> tuple[Any, Any]:
        cluster.gate = asyncio.Event()
        early = asyncio.ensure_future(observer.job("1", clock.now))  # sent at 100
        await asyncio.sleep(0)
        clock.now = 105.0
        cluster.jobs = [status("1", "COMPLETED")]
        late = asyncio.ensure_future(observer.job("1", clock.now))  # must see a list sent at or after 105
        await asyncio.sleep(0)
        cluster.gate.set()
        return await early, await late

    early, late = asyncio.run(main())
    assert early.state == "COMPLETED" and late.state == "COMPLETED"  # the fake answers at release time
    assert cluster.calls == ["jobs", "jobs"]  # the late follower did not take the early list as new


def test_a_failed_request_fails_its_waiters_and_the_next_need_sends_again() -> None:
    cluster, clock = ListingCluster(), Clock()
    observer = RunObserver(cluster, "ci-runner-run", OUT, clock)

    async def main() -> JobStatus | None:
        cluster.fail_next = True
        with pytest.raises(ApiError):
            await observer.job("1", clock.now)
        return await observer.job("1", clock.now)

    assert asyncio.run(main()) == status("1")
    assert cluster.calls == ["jobs", "jobs"]


def test_a_cancelled_follower_does_not_cancel_the_others_request() -> None:
    cluster, clock = ListingCluster(), Clock()
    observer = RunObserver(cluster, "ci-runner-run", OUT, clock)

    async def main() -> JobStatus | None:
        cluster.gate = asyncio.Event()
        leaving = asyncio.ensure_future(observer.job("1", clock.now))
        staying = asyncio.ensure_future(observer.job("2", clock.now))
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.sleep(0)
        cluster.gate.set()
        return await staying

    assert asyncio.run(main()) == status("2")
    assert cluster.calls == ["jobs"]


def test_sizes_only_for_the_run_s_output_directory() -> None:
    observer = RunObserver(ListingCluster(), "ci-runner-run", OUT, Clock())
    with pytest.raises(ValueError, match="output directory"):
        asyncio.run(observer.size("/elsewhere/a.1.out", 0.0))


def test_shared_request_counts_each_request_once() -> None:
    clock = Clock()
    sent: list[float] = []

    async def fetch() -> float:
        sent.append(clock.now)
        return clock.now

    shared = SharedRequest(fetch, clock)

    async def main() -> list[float]:
        got = [await shared.get(0.0), await shared.get(100.0)]
        clock.now = 130.0
        got.append(await shared.get(120.0))
        return got

    assert asyncio.run(main()) == [100.0, 100.0, 130.0]
    assert shared.requests == 2 == len(sent)
