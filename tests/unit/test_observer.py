"""RunObserver: one job list and one output listing per cycle serve every entry (fake cluster, injected clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from helpers.listing_cluster import OUT, Clock, ListingCluster, status

from ci_runner.api import ApiError, JobStatus
from ci_runner.observer import STALL_REFRESH, RunObserver, SharedRequest


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


def test_a_request_counts_as_sent_when_it_leaves_the_budget_s_gate() -> None:
    """A need that comes while the request waits for the budget is met by it: it goes out later."""
    clock = Clock()
    gate = asyncio.Event()
    fetched: list[float] = []

    async def fetch() -> float:
        fetched.append(clock.now)
        return clock.now

    shared = SharedRequest(fetch, clock, gate.wait)

    async def main() -> list[float]:
        early = asyncio.ensure_future(shared.get(100.0))
        await asyncio.sleep(0)
        clock.now = 130.0  # the window opens half a minute later
        late = asyncio.ensure_future(shared.get(120.0))  # needs one sent at or after 120
        await asyncio.sleep(0)
        gate.set()
        return [await early, await late]

    assert asyncio.run(main()) == [130.0, 130.0]
    assert fetched == [130.0] and shared.latest_sent == 130.0


class Stall:
    """The budget's `until_free`: each call first calls `before`, then waits the next of `waits`
    (moving the clock; none once they are used up) and returns it."""

    def __init__(self, clock: Clock, waits: Sequence[float] = (), before: Callable[[], None] = lambda: None) -> None:
        self.clock, self.waits, self.before = clock, list(waits), before

    async def __call__(self) -> float:
        self.before()
        seconds = self.waits.pop(0) if self.waits else 0.0
        self.clock.now += seconds
        return seconds


@pytest.mark.parametrize(("waited", "calls"), [(30.0, ["jobs", "ls"]), (STALL_REFRESH - 1.0, ["ls", "jobs"])])
def test_a_listing_that_waited_long_for_the_budget_is_sent_after_a_job_list(waited: float, calls: list[str]) -> None:
    """After a stall, one job list before the listing: every follower that waited learns its job's
    state from it, and the listing gives the final size of every job that ended meanwhile."""
    cluster, clock = ListingCluster(), Clock()
    observer = RunObserver(cluster, "ci-runner-run", OUT, clock, Stall(clock, [waited]))  # the listing's wait

    async def main() -> None:
        began = clock.now
        await observer.size(f"{OUT}/a.1.out", began)
        await observer.job("1", began)  # the followers that waited: no job list of their own

    asyncio.run(main())
    assert cluster.calls == calls  # after a short wait the listing goes alone, the followers ask later


def test_a_job_list_sent_since_the_listing_began_to_wait_is_not_asked_again() -> None:
    cluster, clock = ListingCluster(), Clock()
    observer = RunObserver(cluster, "ci-runner-run", OUT, clock, Stall(clock, [30.0, 30.0]))

    async def main() -> None:
        listing = asyncio.ensure_future(observer.size(f"{OUT}/a.1.out", clock.now))
        states = asyncio.ensure_future(observer.job("1", clock.now))  # a follower's own need, in the same wait
        await asyncio.gather(listing, states)

    asyncio.run(main())
    assert sorted(cluster.calls) == ["jobs", "ls"] and cluster.calls[-1] == "ls"


def test_an_array_task_resolved_after_a_stall_gets_the_newest_job_list_s_state() -> None:
    """A task not known to have started waits for a listing (its id file); that listing, after a
    stall, came after a newer job list: the state is that list's, not the one from before the stall."""
    clock = Clock()

    class Answering(ListingCluster):
        async def jobs_named(self, name: str) -> list[JobStatus]:
            found = await super().jobs_named(name)
            clock.now += 0.5  # the answer comes a moment after the request
            return found

    cluster = Answering()
    cluster.jobs, cluster.files = [status("5", "PENDING")], {}  # array 5: the task 5_1 not started

    def the_task_ran() -> None:  # during the listing's wait: it started (its own id 7) and ended
        if cluster.calls == ["jobs"]:
            cluster.jobs = [status("7", "COMPLETED")]
            cluster.files = {"array+0.5_1.7.id": 0, "e.5_1.out": 12}

    stall = Stall(clock, [0.0, 30.0], the_task_ran)  # the first job list, the listing's stall (the job list after it: none)
    observer = RunObserver(cluster, "ci-runner-run", OUT, clock, stall)
    found = asyncio.run(observer.job("5_1", clock.now))
    assert found is not None and found.state == "COMPLETED"
    assert cluster.calls == ["jobs", "jobs", "ls"]
