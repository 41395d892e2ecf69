"""A simulated cluster for the runner's and the poller's tests: jobs whose states and output follow a
script in simulated time (tests/helpers/virtual_time.py), behind the part of `cluster.Cluster` the runner
uses, with the real `RequestBudget` and a request log.

Every request waits for the budget, then `latency` seconds (the server samples the job or the file
at that moment), then answers. The files follow the real server's semantics where the reader depends
on them: `tail` from a 0-based offset with 413 at the output cap, `view` as the server's `dd` (the
2·size window from block offset//size, decoded, sliced by characters), 404 for a missing file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ci_runner.budget import RequestBudget
from ci_runner.api import JobStatus, OutputTooLarge, RemoteFileMissing

FILE_REQUESTS = ("tail", "view", "stat", "ls")


@dataclass(frozen=True)
class Request:
    sent: float    # when the budget let it go
    kind: str      # jobs, job, ls, tail, view, stat, cancel, submit, mkdir
    detail: str
    waited: float  # seconds it waited for the budget


@dataclass
class FakeJob:
    """One job: its states from a clock time on, what its output file holds when, and when Slurm lists it."""

    job_id: str
    path: str                                   # its output file
    states: list[tuple[float, str]] = field(default_factory=list)   # (from, state), in time order
    writes: list[tuple[float, bytes]] = field(default_factory=list)  # (at, bytes appended), in time order
    truncations: list[float] = field(default_factory=list)  # the file is emptied at these times
    listed_from: float = float("-inf")
    listed_until: float = float("inf")          # purged from Slurm's job list after this
    exit_code: int | None = 0
    reason: str = "Priority"                    # the pending reason

    def state(self, now: float) -> str:
        """The state of the latest change at or before `now` (PENDING before the first)."""
        return max(((since, i, state) for i, (since, state) in enumerate(self.states) if since <= now),
                   default=(0.0, 0, "PENDING"))[2]

    def started(self) -> float | None:
        """When it left PENDING (clock time), if it did."""
        return min((since for since, state in self.states if state != "PENDING"), default=None)

    def data(self, now: float) -> bytes | None:
        """The file's bytes at `now` (the writes since the last truncation); None while the job is
        pending and has written nothing (Slurm has not created the file yet)."""
        if not any(at <= now for at, _ in self.writes) and self.state(now) == "PENDING":
            return None
        start = max((t for t in self.truncations if t <= now), default=float("-inf"))
        return b"".join(data for at, data in self.writes if start <= at <= now)

    def write_lines(self, start: float, lines: list[bytes], every: float) -> None:
        for i, line in enumerate(lines):
            self.writes.append((start + i * every, line))
        self.writes.sort(key=lambda w: w[0])


class FakeCluster:
    """The simulated cluster. `clock` is the simulated loop's time; `wall(t)` maps it to epoch seconds."""

    def __init__(self, clock: Callable[[], float], *, requests_per_minute: int = 600, latency: float = 0.1,
                 output_cap: int = 5 * 1024 * 1024, wall: Callable[[float], float] = lambda t: t) -> None:
        self.clock = clock
        self.wall = wall
        self.budget = RequestBudget(requests_per_minute, clock, asyncio.sleep)
        self.latency = latency
        self.output_cap = output_cap
        self.jobs: dict[str, FakeJob] = {}
        self.log: list[Request] = []
        self.credentials = None
        self.system = "local"
        self.on_secret = None
        self.plans: dict[str, Callable[[str, float], FakeJob]] = {}  # entry → (job id, submit time) → its job
        self._next_id = 100

    # -- scripting -------------------------------------------------------------------------------

    def add(self, job: FakeJob) -> FakeJob:
        self.jobs[job.job_id] = job
        return job

    def requests(self, *kinds: str, since: float = float("-inf"), until: float = float("inf")) -> list[Request]:
        """The requests sent in [since, until), of the given kinds (default: all)."""
        return [r for r in self.log if since <= r.sent < until and (not kinds or r.kind in kinds)]

    # -- the Cluster API -------------------------------------------------------------------------

    async def _request(self, kind: str, detail: str = "") -> float:
        """Wait for the budget, log the request, wait `latency`; the time the server answers it."""
        asked = self.clock()
        async with self.budget.request():
            self.log.append(Request(self.clock(), kind, detail, self.clock() - asked))
            await asyncio.sleep(self.latency)
            return self.clock()

    def _status(self, job: FakeJob, now: float) -> JobStatus:
        state = job.state(now)
        final = state not in ("PENDING", "RUNNING", "COMPLETING")
        started = job.started()
        start = self.wall(started) if state != "PENDING" and started is not None else None
        return JobStatus(job.job_id, state, job.reason if state == "PENDING" else None,
                         job.exit_code if final else None, None, start, None, None, name="ci-runner-run")

    async def jobs_named(self, name: str, what: str = "") -> list[JobStatus]:
        now = await self._request("jobs")
        return [self._status(job, now) for job in self.jobs.values() if job.listed_from <= now <= job.listed_until]

    async def job(self, job_id: str) -> JobStatus | None:
        now = await self._request("job", job_id)
        job = self.jobs.get(job_id)
        return self._status(job, now) if job is not None and job.listed_from <= now <= job.listed_until else None

    async def list_files(self, path: str, *, recursive: bool = False) -> list[dict[str, Any]]:
        now = await self._request("ls", path)
        found = []
        for job in self.jobs.values():
            data = job.data(now)
            directory, _, name = job.path.rpartition("/")
            if data is not None and directory == path.rstrip("/"):
                found.append({"name": name, "type": "-", "size": str(len(data))})
        return found

    def _file(self, path: str, now: float) -> bytes:
        for job in self.jobs.values():
            if job.path == path:
                data = job.data(now)
                if data is not None:
                    return data
        raise RemoteFileMissing(f"{path}: not found", 404)

    async def tail_from(self, path: str, offset: int) -> str:
        now = await self._request("tail", path)
        rest = self._file(path, now)[offset:]
        if len(rest) >= self.output_cap:
            raise OutputTooLarge(f"{path}: output over the cap", 413)
        return rest.decode("utf-8", "replace")

    async def view(self, path: str, offset: int, size: int) -> str:
        now = await self._request("view", path)
        data = self._file(path, now)
        block = offset // size
        window = data[block * size:block * size + 2 * size].decode("utf-8", "replace")
        return window[offset % size:offset % size + size]

    async def stat_size(self, path: str) -> int | None:
        now = await self._request("stat", path)
        try:
            return len(self._file(path, now))
        except RemoteFileMissing:
            return None

    async def cancel(self, job_id: str) -> bool:
        now = await self._request("cancel", job_id)
        job = self.jobs.get(job_id)
        if job is None or job.state(now) not in ("PENDING", "RUNNING"):
            return False
        job.states.append((now, "CANCELLED by 1000"))
        return True

    async def submit(self, script: str, working_dir: str, env: Mapping[str, str], *, output_prefix: str,
                     exclude: Collection[str] = ()) -> str:
        now = await self._request("submit", output_prefix)
        entry = output_prefix.rstrip(".").rsplit("/", 1)[-1]
        self._next_id += 1
        job = self.plans[entry](str(self._next_id), now)
        if job.listed_from == float("-inf"):
            job.listed_from = now
        self.add(job)
        return job.job_id

    async def find_job(self, name: str, output_prefix: str | None = None, exclude: Collection[str] = (),
                       job_of: Callable[[str, str], str] | None = None) -> str | None:
        await self._request("jobs")
        for job in self.jobs.values():
            if output_prefix is None or job.path.startswith(output_prefix):
                return job_of(job.job_id, job.path) if job_of is not None else job.job_id
        return None

    async def mkdir(self, path: str) -> None:
        await self._request("mkdir", path)

    async def close(self) -> None:
        return None
