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

Both requests wait for a place in the budget's window before they count as sent (`until_free`), so
that whoever needs an answer while one waits shares it. When the window was full for a while (many
entries at a small quota), what the followers knew is old: jobs ended and outputs grew meanwhile. A
listing that waited STALL_REFRESH or more is therefore sent after a job list: one job list tells
every waiting follower its job's state, and the listing after it the final size of every job that
ended, instead of reads first and a job list and a listing again for the drains (8 entries at 10/min:
these extra requests in the second minute pushed the last reads into the third).

Tasks of a job array are asked for by their task id `A_i` (layout.task_id). The job list names a
task either so (a Slurm with accounting: sacct's JobID) or by the task's own job id (a Slurm without
accounting, where the array's id A stands for its tasks still pending, and the last task to start
takes it over). Each task writes `array+<k>.<A>_<i>.<j>.id` into the output directory when it starts,
so the same directory listing maps `A_i` to its own job id j (`addressable`): a task is found under
`A_i`, else under j, else, while it has not started, it has the state of the array's pending record
(`A` pending, or sacct's `A_[2-7]`); never by guessing from the numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ci_runner import slurm_states
from ci_runner.api import JobStatus
from ci_runner.errors import CIRunnerError
from ci_runner.layout import array_of, split_task_id, task_job_ids

T = TypeVar("T")
TASK_UNSEEN_GRACE = 60.0  # seconds an array task may be in neither the job list nor the listing
STALL_REFRESH = 20.0  # seconds: a listing that waited this long for the budget goes after a job list sent since its wait began


class RunCluster(Protocol):
    """The part of `cluster.Cluster` the observer needs."""

    async def jobs_named(self, name: str) -> list[JobStatus]: ...

    async def list_files(self, path: str, *, recursive: bool = False) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class _Answer(Generic[T]):
    sent: float  # clock time the request was asked for (it may then wait for the budget): a lower bound
    value: T
    answered: float  # clock time the answer came


@dataclass
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    sent: float | None = None  # clock time the request left the gate (None while it waits there)


class SharedRequest(Generic[T]):
    """The latest answer of one request, fetched again on demand; concurrent demands share one request.
    `gate`: awaited before each request is sent (the budget's `until_free`): a request counts as sent
    when it leaves the gate, so whoever needs an answer newer than that moment shares it."""

    def __init__(self, fetch: Callable[[], Awaitable[T]], clock: Callable[[], float],
                 gate: Callable[[], Awaitable[object]] | None = None) -> None:
        self._fetch = fetch
        self._clock = clock
        self._gate = gate
        self._latest: _Answer[T] | None = None
        self._flight: _Flight[T] | None = None
        self.requests = 0

    @property
    def latest_answer(self) -> _Answer[T] | None:
        """The latest answer with its times, without asking again (None before the first)."""
        return self._latest

    @property
    def latest(self) -> T | None:
        """The latest answer's value (None before the first)."""
        return None if self._latest is None else self._latest.value

    @property
    def latest_sent(self) -> float | None:
        """When the request of the latest answer was sent (None before the first)."""
        return None if self._latest is None else self._latest.sent

    async def get(self, newer_than: float) -> T:
        """An answer to a request sent at or after `newer_than`. Raises what that request raised."""
        return (await self.answer(newer_than)).value

    async def answer(self, newer_than: float) -> _Answer[T]:
        """`get`, with the clock time its request was sent."""
        while True:
            latest = self._latest
            if latest is not None and latest.sent >= newer_than:
                return latest
            if self._flight is None or self._flight.task.done():
                self._start()
            flight = self._flight
            assert flight is not None
            try:
                value = await asyncio.shield(flight.task)  # a waiter's cancellation must not cancel the others' request
            except CIRunnerError:
                if flight.sent is not None and flight.sent >= newer_than:
                    raise
                continue  # an older request failed: ours is still to be sent
            assert flight.sent is not None  # set before the fetch that answered
            if flight.sent >= newer_than:
                latest = self._latest
                return latest if latest is not None and latest.sent == flight.sent else (
                    _Answer(flight.sent, value, self._clock()))

    def _start(self) -> None:
        async def send() -> T:
            if self._gate is not None:
                await self._gate()
                flight.sent = self._clock()
            return await self._fetch()

        flight: _Flight[T] = _Flight(asyncio.get_running_loop().create_task(send()))
        if self._gate is None:
            flight.sent = self._clock()
        self.requests += 1

        def landed(done: asyncio.Task[T]) -> None:  # runs before any waiter resumes
            if self._flight is flight:
                self._flight = None
            if done.cancelled() or done.exception() is not None or flight.sent is None:
                return  # every waiter gets the error (and the task's exception counts as retrieved)
            if self._latest is None or flight.sent > self._latest.sent:
                self._latest = _Answer(flight.sent, done.result(), self._clock())

        flight.task.add_done_callback(landed)
        self._flight = flight


class RunObserver:
    """Job states and output sizes of one run, from one job list and one directory listing per cycle."""

    def __init__(self, cluster: RunCluster, job_name: str, output_dir: str,
                 clock: Callable[[], float] = time.monotonic,
                 until_free: Callable[[], Awaitable[float]] | None = None) -> None:
        self.job_name = job_name
        self.output_dir = output_dir.rstrip("/")
        self.clock = clock
        self._until_free = until_free
        self._jobs = SharedRequest(self._list_jobs, clock, until_free)
        self._outputs = SharedRequest(self._list_outputs, clock, self._listing_gate if until_free else None)
        self._cluster = cluster
        self._tasks_seen: dict[str, tuple[float, JobStatus]] = {}  # array task id -> (clock, last state)

    async def _listing_gate(self) -> None:
        """Before a listing: wait for a place in the budget's window; after a stall of STALL_REFRESH
        or more, a job list first (shared with whoever needs one), so that the listing gives the final
        size of every job that ended meanwhile and the followers that waited learn their jobs' states
        from one request, not each from one of its own after their stale reads."""
        assert self._until_free is not None
        began = self.clock()
        if await self._until_free() >= STALL_REFRESH:
            try:
                await self._jobs.get(began)  # one sent since the wait began is as new as what waited
            except CIRunnerError:
                pass  # the listing does not depend on it; whoever asks the states next meets the error

    @property
    def requests(self) -> int:
        """Job lists and directory listings sent so far."""
        return self._jobs.requests + self._outputs.requests

    async def job(self, job_id: str, newer_than: float) -> JobStatus | None:
        """The job's state from a job list sent at or after `newer_than`; None when Slurm does not
        list it (just submitted and not listed yet, or purged after it ended). `job_id` may be an
        array task's `A_i` (see the module docstring)."""
        return (await self.job_state(job_id, newer_than))[0]

    async def job_state(self, job_id: str, newer_than: float) -> tuple[JobStatus | None, float]:
        """`job`, and the clock time at which the job list that tells it was answered (what the state
        is known as of: followers time their next question from it, so they ask together; not from
        when it was asked for, which can be a budget's wait earlier)."""
        answer = await self._jobs.answer(newer_than)
        status = await self._resolve(job_id, answer.value, newer_than)
        newest = self._jobs.latest_answer
        if newest is not None and newest.sent > answer.sent:
            # resolving an array task waited for a listing, and a newer job list came meanwhile (the
            # listing's, after a stall): tell that one, not a state a stall old
            answer = newest
            status = await self._resolve(job_id, answer.value, newer_than)
        return status, answer.answered

    async def _resolve(self, job_id: str, listed: dict[str, JobStatus], newer_than: float) -> JobStatus | None:
        task = split_task_id(job_id)
        if task is None:
            return listed.get(job_id)
        if job_id not in self._task_job_ids() and job_id not in listed:
            # Not known to have started: a listing sent after the job list says whether it had (a task
            # writes its id file when it starts), so that the array's own record is not taken for it.
            await self._outputs.get(max(newer_than, self._jobs.latest_sent or newer_than))
        found = self._task_status(listed, job_id, task[0])
        now = self.clock()
        if found is not None:
            self._tasks_seen[job_id] = (now, found)
            return found
        # A task that started after the listing and before the job list (or the other way round) is
        # in neither for a cycle: it keeps its last known state that long, never another task's.
        seen = self._tasks_seen.get(job_id)
        return seen[1] if seen is not None and now - seen[0] < TASK_UNSEEN_GRACE else None

    def _task_status(self, listed: dict[str, JobStatus], job_id: str, array_id: str) -> JobStatus | None:
        ids = self._task_job_ids()
        found = listed.get(job_id) or (listed.get(ids[job_id]) if job_id in ids else None)
        if found is not None:
            return found
        # Not started when the job list was sent (its id file may be newer): the array's record for its
        # tasks still pending (sacct: A_[2-7]), or the array's own id unless a task that started took
        # it over (Slurm without accounting): pending, or final when the array was cancelled first.
        taken = set(ids.values())
        for status in listed.values():
            if status.job_id.startswith(f"{array_id}_[") or (status.job_id == array_id and array_id not in taken
                                                             and (slurm_states.is_pending(status.state)
                                                                  or slurm_states.is_terminal(status.state))):
                return status
        return None

    @property
    def states_sent(self) -> float | None:
        """When the latest job list was sent: a job it shows final had written all its output by then,
        so any directory listing sent since gives the output's final size (one listing for every
        entry that ended, not one per entry)."""
        return self._jobs.latest_sent

    def own_job_id(self, job_id: str) -> str | None:
        """The job's own id as FirecREST addresses it (its endpoints take a number): `job_id` itself,
        or for an array task `A_i` its own job id once its id file was listed (else None)."""
        return job_id if split_task_id(job_id) is None else self._task_job_ids().get(job_id)

    def addressable(self, job_id: str) -> str:
        """What to address for the job: its own id, or for an array task not known to have started the
        array's id (which stands for every task of it)."""
        return self.own_job_id(job_id) or array_of(job_id)

    def array_started(self, job_id: str) -> bool:
        """For a task `A_i` of a job array: whether any task of the array has started (written its id
        file), so that the others may be waiting for the resources their siblings use."""
        task = split_task_id(job_id)
        return task is not None and any(other.startswith(f"{task[0]}_") for other in self._task_job_ids())

    def _task_job_ids(self) -> dict[str, str]:
        latest = self._outputs.latest
        return latest.task_job_ids if latest is not None else {}

    async def size(self, path: str, newer_than: float) -> int | None:
        """The size of an output file of the run from a listing sent at or after `newer_than`; None
        when the file does not exist (yet). Paths outside the output directory are a usage error."""
        directory, _, name = path.rpartition("/")
        if directory != self.output_dir:
            raise ValueError(f"{path} is not in the run's output directory {self.output_dir}")
        return (await self._outputs.get(newer_than)).sizes.get(name)

    async def _list_jobs(self) -> dict[str, JobStatus]:
        return {status.job_id: status for status in await self._cluster.jobs_named(self.job_name)}

    async def _list_outputs(self) -> _Outputs:
        sizes: dict[str, int] = {}
        for item in await self._cluster.list_files(self.output_dir):
            if item.get("type") == "-":
                try:
                    sizes[str(item["name"]).rsplit("/", 1)[-1]] = int(item["size"])  # the server gives a string
                except (KeyError, TypeError, ValueError):
                    continue
        return _Outputs(sizes, task_job_ids(sizes))


@dataclass(frozen=True)
class _Outputs:
    """One listing of the output directory: file sizes by name, and the array tasks' own job ids
    from their id files (parsed once per listing, not per question)."""

    sizes: dict[str, int]
    task_job_ids: dict[str, str]
