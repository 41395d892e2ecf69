"""What every entry of a run needs to know each cycle, for two requests whatever the number of entries.

The jobs of a run share one Slurm job name and one output directory (layout.py), so one
`GET /compute/{system}/jobs?name=<run's job name>` gives the state of every job, and one
`GET .../ops/ls?path=<run>/output` the size of every output file. Each entry's follower asks
`job(job_id, newer_than)` and `size(path, newer_than)`: the answer comes from the latest such request
if it was sent at or after `newer_than` (clock time), else from a new one, and followers that ask
while a request is on its way share it (single flight). A follower passes the time it received its
previous answer, so it always learns something new, and N followers polling at about the same pace
cost one request of each kind per cycle, not N.

Reads (`tail`/`view`) stay per entry: only an output that grew costs a request of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ci_runner.cluster import JobStatus
from ci_runner.errors import CIRunnerError

T = TypeVar("T")


class RunCluster(Protocol):
    """The part of `cluster.Cluster` the observer needs."""

    async def jobs_named(self, name: str) -> list[JobStatus]: ...

    async def list_files(self, path: str, *, recursive: bool = False) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class _Answer(Generic[T]):
    sent: float  # clock time the request was sent
    value: T


class SharedRequest(Generic[T]):
    """The latest answer of one request, fetched again on demand; concurrent demands share one request."""

    def __init__(self, fetch: Callable[[], Awaitable[T]], clock: Callable[[], float]) -> None:
        self._fetch = fetch
        self._clock = clock
        self._latest: _Answer[T] | None = None
        self._flight: tuple[float, asyncio.Task[T]] | None = None
        self.requests = 0

    async def get(self, newer_than: float) -> T:
        """An answer to a request sent at or after `newer_than`. Raises what that request raised."""
        return (await self.answer(newer_than)).value

    async def answer(self, newer_than: float) -> _Answer[T]:
        """`get`, with the clock time its request was sent."""
        while True:
            latest = self._latest
            if latest is not None and latest.sent >= newer_than:
                return latest
            if self._flight is None or self._flight[1].done():
                self._start()
            assert self._flight is not None
            sent, task = self._flight
            try:
                value = await asyncio.shield(task)  # a waiter's cancellation must not cancel the others' request
            except CIRunnerError:
                if sent >= newer_than:
                    raise
                continue  # an older request failed: ours is still to be sent
            if sent >= newer_than:
                return _Answer(sent, value)

    def _start(self) -> None:
        sent = self._clock()
        task = asyncio.get_running_loop().create_task(self._fetch())
        self.requests += 1

        def landed(done: asyncio.Task[T]) -> None:  # runs before any waiter resumes
            if self._flight is not None and self._flight[1] is done:
                self._flight = None
            if done.cancelled() or done.exception() is not None:
                return  # every waiter gets the error (and the task's exception counts as retrieved)
            if self._latest is None or sent > self._latest.sent:
                self._latest = _Answer(sent, done.result())

        task.add_done_callback(landed)
        self._flight = (sent, task)


class RunObserver:
    """Job states and output sizes of one run, from one job list and one directory listing per cycle."""

    def __init__(self, cluster: RunCluster, job_name: str, output_dir: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job_name = job_name
        self.output_dir = output_dir.rstrip("/")
        self.clock = clock
        self._jobs = SharedRequest(self._list_jobs, clock)
        self._sizes = SharedRequest(self._list_outputs, clock)
        self._cluster = cluster

    @property
    def requests(self) -> int:
        """Job lists and directory listings sent so far."""
        return self._jobs.requests + self._sizes.requests

    async def job(self, job_id: str, newer_than: float) -> JobStatus | None:
        """The job's state from a job list sent at or after `newer_than`; None when Slurm does not
        list it (just submitted and not listed yet, or purged after it ended)."""
        return (await self.job_state(job_id, newer_than))[0]

    async def job_state(self, job_id: str, newer_than: float) -> tuple[JobStatus | None, float]:
        """`job`, and the clock time at which the job list that tells it was sent (what the state
        is known as of: followers time their next question from it, so they ask together)."""
        answer = await self._jobs.answer(newer_than)
        return answer.value.get(job_id), answer.sent

    async def size(self, path: str, newer_than: float) -> int | None:
        """The size of an output file of the run from a listing sent at or after `newer_than`; None
        when the file does not exist (yet). Paths outside the output directory are a usage error."""
        directory, _, name = path.rpartition("/")
        if directory != self.output_dir:
            raise ValueError(f"{path} is not in the run's output directory {self.output_dir}")
        return (await self._sizes.get(newer_than)).get(name)

    async def _list_jobs(self) -> dict[str, JobStatus]:
        return {status.job_id: status for status in await self._cluster.jobs_named(self.job_name)}

    async def _list_outputs(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for item in await self._cluster.list_files(self.output_dir):
            if item.get("type") == "-":
                try:
                    sizes[str(item["name"]).rsplit("/", 1)[-1]] = int(item["size"])  # the server gives a string
                except (KeyError, TypeError, ValueError):
                    continue
        return sizes
